"""Image preprocessing: plain resize to the model's size, or resize the shorter side then center-crop (what
ImageNet-style models expect); grayscale/RGB conversion; per-channel normalisation; and light augmentation
for fine-tuning only (random resized crop, horizontal flip) — never for calibration or evaluation. The flip
is kept only where it preserves the label: measured on the original model, not assumed (a flipped digit or
letter is another class, or none)."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from edgeopt.errors import DataError

AUGMENT_SCALE = (0.6, 1.0)  # a milder area range than ImageNet's 0.08: small images lose their object below it
CROP_RATIO = 0.875  # resize = crop / 0.875 when only --crop is given (224 -> 256, the usual pairing)
# % of calibration images whose top-1 the original model keeps when they are flipped, below which a flip is
# not label-preserving for this data. A model trained on flipped images keeps nearly all by construction;
# measured on digits at 96 px, trained ConvNeXt-atto kept 37.5 % and DeiT-tiny 22.7 %, and the pruned
# ConvNeXt scored 50 % on a slice of flipped training digits against 97 % unflipped.
FLIP_AGREEMENT = 90.0
FLIP_SAMPLES = 256


@dataclass(frozen=True)
class Preprocess:
    size: tuple[int, int]  # final H, W (what the model takes)
    resize: int | None  # shorter side before the center crop; None = plain resize to `size`
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool = True

    @property
    def mode(self) -> str:
        return "L" if self.channels == 1 else "RGB"

    def describe(self) -> str:
        """Everything that changes the pixels the model sees (part of the data's cache key)."""
        return f"{self.size}|{self.resize}|{self.channels}|{self.mean}|{self.std}"


def make_preprocess(sample_shape: tuple[int, ...], image_size=None, resize: int | None = None,
                    crop=None, mean=None, std=None, augment: bool = True) -> Preprocess:
    """Validate the preprocessing options against the model's input (C, H, W); one-line DataError otherwise."""
    channels = int(sample_shape[0])
    if channels not in (1, 3) or len(sample_shape) != 3:
        raise DataError(f"an image folder gives 1 (grayscale) or 3 (RGB) channels, the model takes input "
                        f"{tuple(sample_shape)}: use --data module:function for other inputs")
    model_hw = (int(sample_shape[1]), int(sample_shape[2]))
    final = _pair(crop if crop is not None else image_size) or model_hw
    if final != model_hw:
        what = "--crop" if crop is not None else "--image-size"
        raise DataError(f"{what} gives {final[0]}x{final[1]} images, the model takes {model_hw[0]}x{model_hw[1]}")
    if crop is not None and resize is None:
        resize = int(round(max(final) / CROP_RATIO))
    if resize is not None and resize < max(final):
        raise DataError(f"--resize {resize} is smaller than the crop {final[0]}x{final[1]}")
    mean = tuple(mean) if mean else (0.5,)
    std = tuple(std) if std else (0.5,)
    if len(mean) not in (1, channels) or len(std) not in (1, channels) or any(s <= 0 for s in std):
        raise DataError(f"--mean/--std need 1 or {channels} values (std > 0), got {len(mean)} and {len(std)}")
    return Preprocess(final, resize, channels, mean * (channels // len(mean)), std * (channels // len(std)),
                      augment)


def _pair(v) -> tuple[int, int] | None:
    if v is None:
        return None
    if isinstance(v, (int, float)):
        return int(v), int(v)
    v = tuple(int(t) for t in v)
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


class _Transform:
    """PIL image -> normalised float tensor (C, H, W). Written on PIL and numpy directly: importing
    torchvision's transforms costs seconds per run, for the same four operations."""

    def __init__(self, p: Preprocess, augment: bool):
        self.p, self.augment, self.flip = p, augment, augment

    def __call__(self, im):
        from PIL import Image

        h, w = self.p.size
        if self.augment:
            im = im.resize((w, h), Image.BILINEAR, box=self._random_box(im.width, im.height))
            if self.flip and float(torch.rand(())) < 0.5:
                im = im.transpose(Image.FLIP_LEFT_RIGHT)
        elif self.p.resize is not None:  # shorter side to `resize`, then the central h x w
            scale = self.p.resize / min(im.width, im.height)
            rw, rh = max(w, round(im.width * scale)), max(h, round(im.height * scale))
            im = im.resize((rw, rh), Image.BILINEAR)
            left, top = (rw - w) // 2, (rh - h) // 2
            im = im.crop((left, top, left + w, top + h))
        else:
            im = im.resize((w, h), Image.BILINEAR)
        a = np.asarray(im, dtype=np.float32).reshape(h, w, -1) / 255.0
        x = torch.from_numpy(a).permute(2, 0, 1)
        mean = torch.tensor(self.p.mean, dtype=torch.float32).reshape(-1, 1, 1)
        std = torch.tensor(self.p.std, dtype=torch.float32).reshape(-1, 1, 1)
        return ((x - mean) / std).contiguous()

    def _random_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """A random region of AUGMENT_SCALE of the area and aspect ratio 3/4..4/3 (torch's RNG, which
        DataLoader seeds per worker from the run's seed)."""
        area = width * height
        for _ in range(10):
            target = area * float(torch.empty(()).uniform_(*AUGMENT_SCALE))
            ratio = math.exp(float(torch.empty(()).uniform_(math.log(3 / 4), math.log(4 / 3))))
            cw, ch = math.sqrt(target * ratio), math.sqrt(target / ratio)
            if cw <= width and ch <= height:
                left = float(torch.rand(())) * (width - cw)
                top = float(torch.rand(())) * (height - ch)
                return left, top, left + cw, top + ch
        return 0.0, 0.0, float(width), float(height)


def eval_transform(p: Preprocess) -> Callable:
    """Deterministic: plain resize, or resize-then-center-crop."""
    return _Transform(p, augment=False)


def train_transform(p: Preprocess) -> Callable:
    """The evaluation transform, or with `augment` a random resized crop and a horizontal flip."""
    return _Transform(p, augment=p.augment)


@contextmanager
def unaugmented(data):
    """Read `data` (an image-folder training stream) as evaluation reads it while inside: a score on augmented
    images measures the crops as much as the model (the pruned ConvNeXt-atto scored 82 % on a cropped slice of
    training digits, 97 % on the same slice uncropped). Anything else is read as it is."""
    t = getattr(getattr(data, "dataset", None), "transform", None)
    if not isinstance(t, _Transform) or not t.augment:
        yield data
        return
    t.augment = False
    try:
        yield data
    finally:
        t.augment = True


def flip_agreement(model, batches, limit: int = FLIP_SAMPLES) -> float | None:
    """% of (at most `limit`) images of `batches` whose top-1 `model` keeps when they are flipped left-right;
    None when the model does not return one (N, classes) tensor (detectors, segmenters: their targets would
    have to flip too)."""
    from edgeopt.inputs.feeding import run_model

    kept = seen = 0
    model.eval()
    with torch.no_grad():
        for item in batches:
            x = item[0] if isinstance(item, (tuple, list)) else item
            if not isinstance(x, torch.Tensor) or x.dim() != 4:
                return None
            x = x[: limit - seen]
            a, b = run_model(model, x), run_model(model, x.flip(-1))
            if not isinstance(a, torch.Tensor) or a.dim() != 2:
                return None
            kept += int((a.argmax(1) == b.argmax(1)).sum())
            seen += len(x)
            if seen >= limit:
                break
    return 100.0 * kept / seen if seen else None


def keep_flip_if_label_preserving(model, train, calib) -> str | None:
    """Turn the horizontal flip of an augmented image-folder training stream off when `model` changes its
    top-1 on more than 100 - FLIP_AGREEMENT % of flipped calibration images. Returns the reason when the
    check ran (kept or dropped), None when there is no flip to decide."""
    import hashlib

    t = getattr(getattr(train, "dataset", None), "transform", None)
    if not isinstance(t, _Transform) or not t.flip or calib is None:
        return None
    agree = flip_agreement(model, calib)
    if agree is None:
        return None
    if agree >= FLIP_AGREEMENT:
        return (f"training images are flipped left-right at random: the original model keeps its top-1 on "
                f"{agree:.1f} % of flipped calibration images (>= {FLIP_AGREEMENT:g} %)")
    t.flip = False
    if getattr(train, "key", None):  # the fine-tuned models' cache key follows what the training data is
        train.key = hashlib.sha256(f"{train.key}|no-flip".encode()).hexdigest()
    return (f"training images are not flipped: the original model changes its top-1 on {100 - agree:.1f} % of "
            f"flipped calibration images, so a flip is not label-preserving for this data (random resized "
            f"crops are kept)")
