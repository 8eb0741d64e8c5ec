"""The fine-tuning loop: SGD with momentum, cosine learning-rate decay, optional teacher (distillation).
Runs on the GPU when one is present, else on the CPU."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from edgeopt.errors import DataError
from edgeopt.training.losses import hinton_loss


@dataclass
class FitResult:
    epochs: int
    seconds: float
    losses: list[float] = field(default_factory=list)  # mean loss per epoch
    kind: str = "response"
    device: str = "cpu"


def _device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def fit(student: nn.Module, train_data, teacher: nn.Module | None = None, epochs: int = 3, lr: float = 0.01,
        temperature: float = 4.0, alpha: float = 0.7, weight_decay: float = 5e-4, seed: int = 0,
        progress: Callable[[int, int, float], None] | None = None) -> FitResult:
    """Train `student` in place on batches of (x, y) or x. With a teacher, the loss is Hinton's KD mixed
    with cross-entropy; without one, plain cross-entropy (labels required)."""
    items = [(b[0], b[1]) if isinstance(b, (tuple, list)) else (b, None) for b in
             (train_data.items if hasattr(train_data, "items") else train_data)]
    if not items:
        raise DataError("training data is empty: give at least one batch")
    if teacher is None and any(y is None for _, y in items):
        raise DataError("fine-tuning without a teacher needs labelled training data (x, y)")
    torch.manual_seed(seed)
    dev = _device()
    student.to(dev).train()
    if teacher is not None:
        teacher = copy.deepcopy(teacher).to(dev).eval()
    opt = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * len(items)))
    gen = torch.Generator().manual_seed(seed)
    result = FitResult(epochs=epochs, seconds=0.0, device=str(dev),
                       kind="response" if teacher is not None else "none")
    t0 = time.perf_counter()
    for epoch in range(epochs):
        total = 0.0
        for i in torch.randperm(len(items), generator=gen).tolist():
            x, y = items[i]
            x = x.to(dev)
            y = y.to(dev) if y is not None else None
            out = student(x)
            if teacher is not None:
                with torch.no_grad():
                    t_out = teacher(x)
                loss = hinton_loss(out, t_out, y, temperature, alpha)
            else:
                loss = nn.functional.cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        result.losses.append(total / len(items))
        if progress:
            progress(epoch + 1, epochs, result.losses[-1])
    student.to("cpu").eval()
    result.seconds = round(time.perf_counter() - t0, 2)
    return result
