"""The fixed, seeded tasks.

T1 accuracy + latency: torchvision resnet18 (num_classes=10) trained by the suite on scikit-learn's digits
upsampled to 64x64 (3 channels), evaluated on the held-out split. Trained once, cached.
T2 latency at deployment size: torchvision models at 224x224, batch 1, random weights; accuracy is
fidelity (top-1 agreement) to the original model on random inputs."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

T1_SIZE = 64


@dataclass
class Task:
    name: str
    model_name: str
    model: nn.Module
    example: torch.Tensor
    calib: list  # list of input batches (unlabelled)
    eval: list  # list of (x, y) batches, or x batches for fidelity
    train: list | None = None  # labelled batches when retraining is possible
    labelled: bool = False
    info: dict = field(default_factory=dict)


def _digits64(seed: int = 0):
    from edgeopt.inputs.data import digits_splits

    xt, yt, xv, yv = digits_splits(seed)
    up = lambda x: nn.functional.interpolate(x, size=(T1_SIZE, T1_SIZE), mode="bilinear",  # noqa: E731
                                             align_corners=False).repeat(1, 3, 1, 1)
    return up(xt), yt, up(xv), yv


def _batches(x, y, bs):
    return [(x[i:i + bs], y[i:i + bs]) for i in range(0, len(x), bs)]


def t1_task(cache: Path, epochs: int = 6) -> Task:
    import torchvision

    xt, yt, xv, yv = _digits64()
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    path = cache / "t1_resnet18_digits64.pt"
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        info = json.loads(meta_path.read_text())
    else:
        t0 = time.perf_counter()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        train = _batches(xt, yt, 64)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=epochs * len(train))
        g = torch.Generator().manual_seed(0)
        for _ in range(epochs):
            model.train()
            for i in torch.randperm(len(train), generator=g).tolist():
                x, y = train[i]
                loss = nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        model.eval()
        with torch.no_grad():
            acc = float((model(xv).argmax(1) == yv).float().mean() * 100)
        info = {"val_top1": acc, "train_seconds": round(time.perf_counter() - t0, 1), "epochs": epochs}
        cache.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
        meta_path.write_text(json.dumps(info))
    model.eval()
    return Task("T1", "resnet18-digits64", model, torch.randn(1, 3, T1_SIZE, T1_SIZE),
                calib=[x for x, _ in _batches(xt, yt, 32)][:10], eval=_batches(xv, yv, 64),
                train=_batches(xt, yt, 64), labelled=True, info=info)


def t2_task(name: str, n_eval: int = 64) -> Task:
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(8, 3, 224, 224, generator=g) for _ in range(4)]
    evals = [torch.randn(16, 3, 224, 224, generator=g) for _ in range(max(1, n_eval // 16))]
    return Task("T2", name, model, torch.randn(1, 3, 224, 224), calib=calib, eval=evals, labelled=False)
