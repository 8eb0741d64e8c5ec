"""Data: the built-in digits dataset, and validation of user data (empty, shapes, NaN/Inf, labels).

A dataset here is a list of (input batch tensor, label tensor or None) pairs, already batched."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from edgeopt.errors import DataError

DIGITS_SIZE = 32  # the 8x8 digits are upsampled so that the demo CNN has real work per image
DIGITS_VAL_FRACTION = 0.2


@dataclass
class Batches:
    """Batched inputs with optional labels. `labelled` tells whether accuracy can be top-1."""

    items: list[tuple[torch.Tensor, torch.Tensor | None]]

    @property
    def labelled(self) -> bool:
        return bool(self.items) and all(y is not None for _, y in self.items)

    def inputs(self) -> list[torch.Tensor]:
        return [x for x, _ in self.items]

    def __len__(self) -> int:
        return sum(x.shape[0] for x, _ in self.items)


def digits_splits(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled digits, upsampled to 32x32, normalised; fixed train/validation split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    x = torch.nn.functional.interpolate(x, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear",
                                        align_corners=False)
    x = (x - 0.3) / 0.4
    idx_tr, idx_va = train_test_split(np.arange(len(y)), test_size=DIGITS_VAL_FRACTION,
                                      random_state=seed, stratify=y)
    yt = torch.tensor(y, dtype=torch.long)
    return x[idx_tr], yt[idx_tr], x[idx_va], yt[idx_va]


def batchify(x: torch.Tensor, y: torch.Tensor | None, batch_size: int) -> Batches:
    return Batches([(x[i:i + batch_size], None if y is None else y[i:i + batch_size])
                    for i in range(0, len(x), batch_size)])


def digits_data(batch_size: int = 32) -> tuple[Batches, Batches]:
    """(calibration/training batches, evaluation batches) of the digits dataset."""
    xt, yt, xv, yv = digits_splits()
    return batchify(xt, yt, batch_size), batchify(xv, yv, batch_size)


def as_batches(data: Iterable | None, name: str, sample_shape: tuple[int, ...],
               num_classes: int | None = None) -> Batches | None:
    """Validate user data: iterables of tensors or (tensor, label). One-line DataError on anything odd."""
    if data is None:
        return None
    if isinstance(data, Batches):
        items = data.items
    else:
        items = []
        for item in data:
            x, y = (item[0], item[1]) if isinstance(item, (tuple, list)) else (item, None)
            x = torch.as_tensor(x, dtype=torch.float32)
            single = x.dim() == len(sample_shape)
            if single:
                x = x.unsqueeze(0)
            items.append((x, None if y is None else _target(y, single)))
    if not items:
        raise DataError(f"{name} is empty: give at least one batch")
    for i, (x, y) in enumerate(items):
        if tuple(x.shape[1:]) != tuple(sample_shape):
            raise DataError(f"{name} batch {i} has sample shape {tuple(x.shape[1:])}, "
                            f"the model takes {tuple(sample_shape)}")
        if not torch.isfinite(x).all():
            raise DataError(f"{name} batch {i} contains NaN or Inf values")
        if y is not None:
            if len(y) != len(x):
                raise DataError(f"{name} batch {i} has {len(x)} inputs but {len(y)} labels")
            labels = isinstance(y, torch.Tensor) and y.dim() == 1
            if labels and num_classes is not None and len(y) and (y.min() < 0 or y.max() >= num_classes):
                raise DataError(f"{name} batch {i} has labels outside 0..{num_classes - 1}")
    return Batches(items)


def _target(y, single: bool):
    """Class labels -> (N,) long; dense targets (masks) -> (N, H, W) long; anything else (e.g. a detector's
    list of box dicts, read only by the user's metric) is kept as it is."""
    if isinstance(y, (list, tuple)) and y and not isinstance(y[0], (int, float)) and not torch.is_tensor(y[0]):
        return list(y) if not single else [y]
    t = torch.as_tensor(y)
    if t.is_floating_point() and not torch.equal(t, t.round()):
        raise DataError("targets must be class indices (integers), not fractional values")
    t = t.long()
    if single:
        return t.unsqueeze(0) if t.dim() >= 2 else t.reshape(-1)
    if t.dim() >= 3 or (t.dim() == 2 and t.shape[1] > 1):
        return t
    return t.reshape(-1)


@dataclass
class DataSplits:
    """Calibration (PTQ, BN re-estimation), training (fine-tuning) and held-out evaluation data. Evaluation
    data is never used for calibration or fine-tuning."""

    calib: Batches | None
    train: Batches | None
    eval: Batches | None
    source: str | None


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def image_folder(path, image_size: int | tuple[int, int], channels: int, mean: tuple[float, ...],
                 std: tuple[float, ...], val_split: float = 0.2, seed: int = 0, batch_size: int = 32
                 ) -> DataSplits:
    """A folder with one sub-folder per class (sorted names = class indices), split per class into training
    (also used for calibration) and held-out evaluation images."""
    from pathlib import Path

    from PIL import Image, UnidentifiedImageError

    root = Path(path)
    if not root.is_dir():
        raise DataError(f"--data {root} is not a folder (expected one sub-folder per class)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"--data {root} has no class sub-folders")
    if not 0.0 < val_split < 1.0:
        raise DataError(f"--val-split must be between 0 and 1, got {val_split}")
    if len(mean) not in (1, channels) or len(std) not in (1, channels) or any(s <= 0 for s in std):
        raise DataError(f"--mean/--std need 1 or {channels} values (std > 0)")
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    mode = "L" if channels == 1 else "RGB"
    m = torch.tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
    gen = torch.Generator().manual_seed(seed)
    tr, va = [], []
    for label, cls in enumerate(classes):
        files = sorted(f for f in (root / cls).rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        xs = []
        for f in files:
            try:
                with Image.open(f) as im:
                    a = np.asarray(im.convert(mode).resize((size[1], size[0])), dtype=np.float32) / 255.0
            except (UnidentifiedImageError, OSError) as e:
                raise DataError(f"cannot read image {f}: {e}") from None
            xs.append(torch.from_numpy(a.reshape(size[0], size[1], -1)).permute(2, 0, 1))
        if not xs:
            raise DataError(f"class folder {root / cls} has no images ({', '.join(IMAGE_SUFFIXES)})")
        perm = torch.randperm(len(xs), generator=gen).tolist()
        n_val = max(1, int(round(len(xs) * val_split))) if len(xs) > 1 else 0
        for j, i in enumerate(perm):
            (va if j < n_val else tr).append(((xs[i] - m) / s, label))
    if not va or not tr:
        raise DataError(f"--data {root}: too few images to hold out {val_split:.0%} for evaluation")

    def stack(pairs):
        return batchify(torch.stack([x for x, _ in pairs]), torch.tensor([y for _, y in pairs]), batch_size)

    train = stack(tr)
    return DataSplits(calib=train, train=train, eval=stack(va), source=f"folder:{root}")


def from_function(spec: str) -> dict:
    """`module:function` or `path/file.py:function` returning a dict with calib/train/eval iterables (any
    may be missing), or a (calib, train, eval) tuple."""
    import importlib
    import importlib.util
    import sys
    from pathlib import Path

    target, _, fn = spec.rpartition(":")
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise DataError(f"data file {path} does not exist")
            mspec = importlib.util.spec_from_file_location(f"edgeopt_user_data_{path.stem}", path)
            module = importlib.util.module_from_spec(mspec)
            sys.modules[mspec.name] = module
            mspec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
        result = getattr(module, fn)()
    except DataError:
        raise
    except (ImportError, AttributeError) as e:
        raise DataError(f"cannot load data function {spec}: {e}") from None
    if isinstance(result, (tuple, list)) and len(result) == 3:
        return dict(zip(("calib", "train", "eval"), result, strict=True))
    if isinstance(result, dict):
        unknown = set(result) - {"calib", "train", "eval", "calib_data", "train_data", "eval_data"}
        if unknown:
            raise DataError(f"{spec} returned unknown keys {sorted(unknown)}: use calib, train, eval")
        return {k.removesuffix("_data"): v for k, v in result.items()}
    raise DataError(f"{spec} must return a dict with calib/train/eval or a (calib, train, eval) tuple")
