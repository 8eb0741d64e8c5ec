"""Segmentation data: an image folder plus a mask folder whose files have the same stems
(`--data images/ --masks masks/`). A mask holds one class index per pixel (a palette or grey PNG).
Images are split into calibration/training and held-out evaluation pairs, like class folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgeopt.errors import DataError
from edgeopt.inputs.data import IMAGE_SUFFIXES, Batches, DataSplits
from edgeopt.inputs.data.folder import open_image


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


VOID = 255  # the usual "ignore" label of segmentation masks (Pascal VOC, Cityscapes): never a class


def _resized(im, size: tuple[int, int], nearest: bool) -> np.ndarray:
    from PIL import Image

    return np.asarray(im.resize((size[1], size[0]), Image.NEAREST if nearest else Image.BILINEAR))


def _mask(path: Path, image_size: tuple[int, int], image_file: Path, num_classes: int | None) -> np.ndarray:
    """A mask's class indices at its own resolution, checked: the same size as its image (a mask of another
    size would be stretched onto pixels it was not drawn for) and values in 0..num_classes-1 or VOID (any
    other value is a class the model cannot predict: mIoU would be 0 for every candidate)."""
    im = open_image(path, None)
    if im.mode not in ("P", "L", "I", "I;16", "1"):
        im = im.convert("RGB")  # an RGB mask: class index in the first channel
    if (im.height, im.width) != image_size:
        raise DataError(f"mask {path} is {im.width}x{im.height} but its image {image_file.name} is "
                        f"{image_size[1]}x{image_size[0]}: masks must have their image's size")
    a = np.asarray(im)
    a = a[..., 0] if a.ndim == 3 else a
    if num_classes is not None and num_classes >= 2:
        bad = ((a >= num_classes) & (a != VOID)) | (a < 0)
        if bad.any():
            wrong = ", ".join(str(int(v)) for v in np.unique(a[bad])[:5])
            raise DataError(f"mask {path} has class value(s) {wrong} outside 0..{num_classes - 1} (the model "
                            f"predicts {num_classes} classes; {VOID} marks void pixels)")
    return a


def mask_folder(images, masks, image_size: tuple[int, int], channels: int, mean: tuple[float, ...],
                std: tuple[float, ...], val_split: float = 0.2, seed: int = 0, batch_size: int = 8,
                num_classes: int | None = None) -> DataSplits:
    """Image/mask pairs as (image, mask) batches: masks are long tensors (N, H, W) of class indices.
    `num_classes`: the model's output channels; mask values outside 0..num_classes-1 (other than 255, void)
    are refused, naming the file."""
    from PIL import Image

    pairs = pair_files(Path(images), Path(masks))
    if not 0.0 < val_split < 1.0:
        raise DataError(f"--val-split must be between 0 and 1, got {val_split}")
    size = tuple(image_size)
    m = torch.tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
    xs, ys = [], []
    for img, msk in pairs:
        im = open_image(img, "L" if channels == 1 else "RGB")
        mk = _mask(msk, (im.height, im.width), img, num_classes)
        a = _resized(im, size, nearest=False).astype(np.float32) / 255.0
        xs.append((torch.from_numpy(a.reshape(size[0], size[1], -1)).permute(2, 0, 1) - m) / s)
        mk = _resized(Image.fromarray(mk), size, nearest=True)  # class indices: never interpolated
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
