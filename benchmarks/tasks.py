"""The fixed, seeded tasks.

T1 accuracy + latency: torchvision resnet18 (num_classes=10) trained by the suite on scikit-learn's digits
upsampled to 64x64 (3 channels), evaluated on the held-out split. Trained once, cached.
T2 latency at deployment size: torchvision models at 224x224, batch 1. With `--t2-trained`, trained by the
suite on digits upsampled to 224 (cached) and scored by held-out top-1; else random weights and fidelity
(top-1 agreement) to the original model on random inputs. `held_out=F` trains on the other 1-F of digits and
holds out F of it (all of it as evaluation data), for a test split of a few hundred images."""

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


def _digits(size: int, seed: int = 0):
    from edgeopt.inputs.data import digits_splits

    xt, yt, xv, yv = digits_splits(seed)
    up = lambda x: nn.functional.interpolate(x, size=(size, size), mode="bilinear",  # noqa: E731
                                             align_corners=False).repeat(1, 3, 1, 1)
    return up(xt), yt, up(xv), yv


def _batches(x, y, bs):
    return [(x[i:i + bs], y[i:i + bs]) for i in range(0, len(x), bs)]


def _trained(model: nn.Module, path: Path, xt, yt, xv, yv, epochs: int, lr: float = 0.05, bs: int = 64) -> dict:
    """Train `model` on (xt, yt) once (SGD, one-cycle), cache the weights at `path`; later calls load them.
    Returns the info (held-out top-1, training seconds, epochs)."""
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        model.eval()
        return json.loads(meta_path.read_text())
    t0 = time.perf_counter()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    train = _batches(xt, yt, bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * len(train))
    g = torch.Generator().manual_seed(0)
    for epoch in range(epochs):
        model.train()
        for i in torch.randperm(len(train), generator=g).tolist():
            x, y = train[i]
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"  trained {path.stem} epoch {epoch + 1}/{epochs} ({time.perf_counter() - t0:.0f} s)", flush=True)
    model.eval()
    with torch.no_grad():
        acc = float(torch.cat([model(x).argmax(1) for x, _ in _batches(xv, yv, 64)]).eq(yv).float().mean() * 100)
    info = {"val_top1": acc, "train_seconds": round(time.perf_counter() - t0, 1), "epochs": epochs}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    meta_path.write_text(json.dumps(info))
    return info


def t1_task(cache: Path, epochs: int = 6) -> Task:
    import torchvision

    xt, yt, xv, yv = _digits(T1_SIZE)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    info = _trained(model, cache / "t1_resnet18_digits64.pt", xt, yt, xv, yv, epochs)
    return Task("T1", "resnet18-digits64", model, torch.randn(1, 3, T1_SIZE, T1_SIZE),
                calib=[x for x, _ in _batches(xt, yt, 32)][:10], eval=_batches(xv, yv, 64),
                train=_batches(xt, yt, 64), labelled=True, info=info)


T2_SIZE = 224
T2_EPOCHS = 2  # at 224 on 2 CPU cores: minutes per epoch for resnet18, the most for resnet50
# calibration batches of 8 for the held-out variant: 4 leave reconstruction pruning 16k sampled rows for a
# 4.6k-feature 3x3 conv (resnet18, 10 % pruned with reconstruction: 1.9 pp lost on the selection split); 12
# give 49k (0.48 pp) and stay under reconstruct.py's one-pass limit (2**24 input values: 111 images at 224)
T2_CALIB_BATCHES = 12


def _digits_held_out(size: int, fraction: float, seed: int = 0):
    """Digits upsampled to `size`, split (stratified, seeded) with `fraction` of the images held out: more
    held-out images than digits_splits' fixed split keeps, for a test split of a few hundred."""
    from sklearn.model_selection import train_test_split

    xt, yt, xv, yv = _digits(size, seed)
    x, y = torch.cat([xt, xv]), torch.cat([yt, yv])
    tr, va = train_test_split(list(range(len(y))), test_size=fraction, random_state=seed, stratify=y.numpy())
    tr, va = torch.tensor(sorted(tr)), torch.tensor(sorted(va))
    return x[tr], y[tr], x[va], y[va]


def t2_task(name: str, n_eval: int = 64, cache: Path | None = None, trained: bool = False,
            held_out: float | None = None, epochs: int = T2_EPOCHS) -> Task:
    """A torchvision model at deployment size. `trained`: trained by the suite on digits upsampled to 224 (cached),
    held-out top-1 on `n_eval` held-out digits, so INT8 and pruning losses are real accuracy; otherwise random
    weights and fidelity to the original on random inputs. `held_out` (trained only): hold out that fraction of
    digits (stratified) and evaluate on all of it (`n_eval` ignored); its own cached weights."""
    import torchvision

    torch.manual_seed(0)
    if not trained:
        model = torchvision.models.get_model(name, weights=None).eval()
        g = torch.Generator().manual_seed(1)
        calib = [torch.randn(8, 3, T2_SIZE, T2_SIZE, generator=g) for _ in range(4)]
        evals = [torch.randn(16, 3, T2_SIZE, T2_SIZE, generator=g) for _ in range(max(1, n_eval // 16))]
        return Task("T2", name, model, torch.randn(1, 3, T2_SIZE, T2_SIZE), calib=calib, eval=evals,
                    labelled=False)
    calib_batches = 4
    if held_out is None:
        xt, yt, xv, yv = _digits(T2_SIZE)
        stem = f"t2_{name}_digits{T2_SIZE}"
    else:
        xt, yt, xv, yv = _digits_held_out(T2_SIZE, held_out)
        stem = f"t2_{name}_digits{T2_SIZE}_ho{round(held_out * 100)}_e{epochs}"
        n_eval = len(yv)
        calib_batches = T2_CALIB_BATCHES
    model = torchvision.models.get_model(name, weights=None, num_classes=10)
    info = _trained(model, (cache or Path("/tmp/edgeopt-bench-cache")) / f"{stem}.pt",
                    xt, yt, xv, yv, epochs, lr=0.02, bs=32)
    return Task("T2", f"{name}-digits{T2_SIZE}", model, torch.randn(1, 3, T2_SIZE, T2_SIZE),
                calib=[x for x, _ in _batches(xt, yt, 8)][:calib_batches],
                eval=_batches(xv[:n_eval], yv[:n_eval], 16),
                train=_batches(xt, yt, 32), labelled=True, info=info)
