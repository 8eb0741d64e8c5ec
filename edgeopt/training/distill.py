"""`distill`: fine-tune a compressed student from its original (teacher), and record what it recovered."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from edgeopt.measure.top1 import percent_correct
from edgeopt.training.loop import FitResult, fit


@dataclass
class DistillResult:
    kind: str
    epochs: int
    seconds: float
    feature_layers: list[str]
    world_size: int
    teacher_top1: float | None = None
    before_top1: float | None = None
    after_top1: float | None = None
    recovered: float | None = None  # share of the teacher-student gap closed, 1.0 = all of it

    def to_dict(self) -> dict:
        return asdict(self)


def top1(model: nn.Module, data) -> float | None:
    """Top-1 accuracy in % on labelled batches; None when the data has no labels."""
    items = data.items if hasattr(data, "items") else list(data)
    if not items or any(not isinstance(b, (tuple, list)) or b[1] is None for b in items):
        return None
    model.eval()
    with torch.no_grad():
        return percent_correct((model(x), y) for x, y in items)


def distill(student: nn.Module, teacher: nn.Module, train_data, kind="response", epochs: int = 3,
            eval_data=None, **fit_kwargs) -> tuple[nn.Module, DistillResult]:
    """Train `student` in place with the chosen distillation; returns (student, result). With labelled
    `eval_data`, the result holds the teacher's, the student's before/after top-1 and the gap recovered."""
    t_acc = top1(teacher, eval_data) if eval_data is not None else None
    before = top1(student, eval_data) if eval_data is not None else None
    res: FitResult = fit(student, train_data, teacher=teacher, epochs=epochs, kind=kind, **fit_kwargs)
    after = top1(student, eval_data) if eval_data is not None else None
    recovered = None
    if None not in (t_acc, before, after) and t_acc - before > 1e-9:
        recovered = round((after - before) / (t_acc - before), 3)
    return student, DistillResult(kind=res.kind, epochs=res.epochs, seconds=res.seconds,
                                  feature_layers=res.feature_layers, world_size=res.world_size,
                                  teacher_top1=t_acc, before_top1=before, after_top1=after, recovered=recovered)
