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
            if x.dim() == len(sample_shape):
                x = x.unsqueeze(0)
            items.append((x, None if y is None else torch.as_tensor(y, dtype=torch.long).reshape(-1)))
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
            if num_classes is not None and len(y) and (y.min() < 0 or y.max() >= num_classes):
                raise DataError(f"{name} batch {i} has labels outside 0..{num_classes - 1}")
    return Batches(items)
