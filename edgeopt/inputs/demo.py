"""The built-in demo: a small ResNet-style CNN trained on scikit-learn's digits (seeded, cached)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from edgeopt.inputs.data import DIGITS_SIZE, digits_splits
from edgeopt.measure.top1 import percent_correct
from edgeopt.report import write_atomic

DEMO_VERSION = 1
DEMO_INPUT_SHAPE = (1, 1, DIGITS_SIZE, DIGITS_SIZE)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.down is None else self.down(x)))


class DemoNet(nn.Module):
    """~25 M MACs at 1x32x32: enough work that pruning shows on a runtime, small enough to train fast."""

    def __init__(self, num_classes: int = 10, width: int = 32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.layer1 = BasicBlock(width, width, 1)
        self.layer2 = BasicBlock(width, 2 * width, 2)
        self.layer3 = BasicBlock(2 * width, 4 * width, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def cache_dir() -> Path:
    base = os.environ.get("EDGEOPT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgeopt")
    return Path(base)


def evaluate_top1(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return percent_correct([(model(x), y)])


def train_demo(epochs: int = 8, seed: int = 0, progress: Callable[[int, int], None] | None = None
               ) -> tuple[DemoNet, float, float]:
    """Train DemoNet on digits. Returns (model, validation top-1 %, seconds)."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    xt, yt, xv, yv = digits_splits()
    model = DemoNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps_per_epoch = (len(xt) + 63) // 64
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), 64):
            idx = perm[i:i + 64]
            # light augmentation (random shifts) so the demo generalises like a real model
            xb = torch.roll(xt[idx], shifts=tuple(torch.randint(-2, 3, (2,), generator=gen).tolist()),
                            dims=(2, 3))
            loss = nn.functional.cross_entropy(model(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if progress:
            progress(epoch + 1, epochs)
    return model, evaluate_top1(model, xv, yv), time.perf_counter() - t0


def load_demo(progress: Callable[[int, int], None] | None = None) -> tuple[DemoNet, dict]:
    """The trained demo model and its metadata (validation accuracy, training time), trained on first use."""
    path = cache_dir() / f"demo-v{DEMO_VERSION}.pt"
    meta_path = path.with_suffix(".json")
    model = DemoNet()
    if path.is_file() and meta_path.is_file():
        try:
            model.load_state_dict(torch.load(path, weights_only=True))
            meta = json.loads(meta_path.read_text())
            meta["cached"] = True
            return model.eval(), meta
        except Exception:  # a corrupt cache is rebuilt, not fatal
            pass
    model, acc, seconds = train_demo(progress=progress)
    import io

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    write_atomic(path, buf.getvalue())
    meta = {"val_top1": acc, "train_seconds": round(seconds, 2), "version": DEMO_VERSION}
    write_atomic(meta_path, json.dumps(meta))
    meta["cached"] = False
    return model.eval(), meta
