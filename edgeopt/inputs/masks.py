"""Segmentation data: an image folder plus a mask folder whose files have the same stems
(`--data images/ --masks masks/`). A mask holds one class index per pixel (a palette or grey PNG).
Images are split into calibration/training and held-out evaluation pairs, like class folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgeopt.errors import DataError
from edgeopt.inputs.data import IMAGE_SUFFIXES, Batches, DataSplits


def _files(root: Path, what: str) -> dict[str, Path]:
    if not root.is_dir():
        raise DataError(f"{what} {root} is not a folder")
    found = {f.stem: f for f in sorted(root.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES}
    if not found:
        raise DataError(f"{what} {root} has no images ({', '.join(IMAGE_SUFFIXES)})")
    return found


def pair_files(images: Path, masks: Path) -> list[tuple[Path, Path]]:
    """(image, mask) pairs by file stem; one-line DataError naming the first image or mask without a pair."""
    imgs, msks = _files(Path(images), "--data"), _files(Path(masks), "--masks")
    for stem in imgs:
        if stem not in msks:
            raise DataError(f"image {imgs[stem]} has no mask {stem}.* in {masks}")
    for stem in msks:
        if stem not in imgs:
            raise DataError(f"mask {msks[stem]} has no image {stem}.* in {images}")
    return [(imgs[s], msks[s]) for s in imgs]


def _read(path: Path, size: tuple[int, int], mode: str, nearest: bool) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im if mode == "P" else im.convert(mode)
            resample = Image.NEAREST if nearest else Image.BILINEAR
            return np.asarray(im.resize((size[1], size[0]), resample))
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"cannot read {path}: {e}") from None


def mask_folder(images, masks, image_size: tuple[int, int], channels: int, mean: tuple[float, ...],
                std: tuple[float, ...], val_split: float = 0.2, seed: int = 0, batch_size: int = 8) -> DataSplits:
    """Image/mask pairs as (image, mask) batches: masks are long tensors (N, H, W) of class indices."""
    pairs = pair_files(Path(images), Path(masks))
    if not 0.0 < val_split < 1.0:
        raise DataError(f"--val-split must be between 0 and 1, got {val_split}")
    size = tuple(image_size)
    m = torch.tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
    xs, ys = [], []
    for img, msk in pairs:
        a = _read(img, size, "L" if channels == 1 else "RGB", nearest=False).astype(np.float32) / 255.0
        xs.append((torch.from_numpy(a.reshape(size[0], size[1], -1)).permute(2, 0, 1) - m) / s)
        mk = _read(msk, size, "P", nearest=True)
        if mk.ndim == 3:  # an RGB mask: class index in the first channel
            mk = mk[..., 0]
        ys.append(torch.from_numpy(mk.astype(np.int64)))
    perm = torch.randperm(len(xs), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, int(round(len(xs) * val_split)))
    if len(xs) - n_val < 1:
        raise DataError(f"--data {images}: too few image/mask pairs to hold out {val_split:.0%} for evaluation")
    val, train = perm[:n_val], perm[n_val:]

    def batches(idx: list[int]) -> Batches:
        return Batches([(torch.stack([xs[i] for i in idx[j:j + batch_size]]),
                         torch.stack([ys[i] for i in idx[j:j + batch_size]])) for j in range(0, len(idx), batch_size)])

    tr = batches(train)
    return DataSplits(calib=tr, train=tr, eval=batches(val), source=f"masks:{images}+{masks}")
