"""Image preprocessing: plain resize to the model's size, or resize the shorter side then center-crop (what
ImageNet-style models expect); grayscale/RGB conversion; per-channel normalisation; and light augmentation
for fine-tuning only (random resized crop, horizontal flip) — never for calibration or evaluation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edgeopt.errors import DataError

AUGMENT_SCALE = (0.6, 1.0)  # a milder area range than ImageNet's 0.08: small images lose their object below it
CROP_RATIO = 0.875  # resize = crop / 0.875 when only --crop is given (224 -> 256, the usual pairing)


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


def eval_transform(p: Preprocess) -> Callable:
    """PIL image -> normalised float tensor (C, H, W), deterministic."""
    from torchvision.transforms import v2

    geometry = ([v2.Resize(p.resize, antialias=True), v2.CenterCrop(p.size)] if p.resize is not None
                else [v2.Resize(p.size, antialias=True)])
    return v2.Compose([*geometry, *_to_tensor(p)])


def train_transform(p: Preprocess) -> Callable:
    """The evaluation transform, or with `augment` a random resized crop and a horizontal flip (torch's RNG,
    which DataLoader seeds per worker from the run's seed)."""
    if not p.augment:
        return eval_transform(p)
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomResizedCrop(p.size, scale=AUGMENT_SCALE, antialias=True),
                       v2.RandomHorizontalFlip(), *_to_tensor(p)])


def _to_tensor(p: Preprocess) -> list:
    import torch
    from torchvision.transforms import v2

    return [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(p.mean), list(p.std))]
