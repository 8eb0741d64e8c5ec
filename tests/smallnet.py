"""A small CNN and the digits data at 16x16, cheap enough for tests that train (distillation, lottery
tickets, pruning at init, QAT) to run in seconds on 2 cores."""

import torch
import torch.nn.functional as F
from torch import nn


class SmallNet(nn.Module):
    def __init__(self, width: int = 16, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),
                                    nn.BatchNorm2d(2 * width), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1, bias=False),
                                    nn.BatchNorm2d(2 * width), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layer2(self.layer1(self.stem(x)))), 1))


def make(width: int = 16, seed: int = 0) -> SmallNet:
    torch.manual_seed(seed)
    return SmallNet(width)


def digits16(batch: int = 64, size: int = 16):
    """(train batches, validation batches) of digits at size x size."""
    from edgeopt.inputs.data import batchify, digits_splits

    xt, yt, xv, yv = digits_splits()
    xt, xv = (F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False) for x in (xt, xv))
    return batchify(xt, yt, batch), batchify(xv, yv, 256)


_TEACHERS: dict = {}


def trained(size: int = 8, epochs: int = 4) -> tuple[SmallNet, object, object]:
    """A SmallNet trained on digits at size x size, cached for the test session: (model, train, val)."""
    import copy

    from edgeopt.training import fit

    key = (size, epochs)
    if key not in _TEACHERS:
        train, val = digits16(size=size)
        model = make()
        fit(model, train, epochs=epochs, lr=0.05)
        _TEACHERS[key] = (model, train, val)
    model, train, val = _TEACHERS[key]
    return copy.deepcopy(model), train, val


def splits8() -> dict:
    """Digits at 8x8 as {"calib", "train", "eval"}: the `--data file.py:function` of CLI tests that train."""
    from edgeopt.inputs.data import Batches

    train, val = digits16(size=8)
    return {"calib": Batches(train.items[:2]), "train": train, "eval": val}
