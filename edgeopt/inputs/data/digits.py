"""The built-in data: scikit-learn's bundled digits (no download), as in-memory batches."""

from __future__ import annotations

import numpy as np
import torch

from edgeopt.inputs.data.batches import Batches

DIGITS_SIZE = 32  # the 8x8 digits are upsampled so that the demo CNN has real work per image
DIGITS_VAL_FRACTION = 0.2


def digits_splits(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled digits, upsampled to 32x32, normalised; fixed stratified train/validation split."""
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
