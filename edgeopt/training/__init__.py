"""Retraining: fine-tuning with knowledge distillation from the original model (teacher) into the
compressed one (student). One loop (`fit`), losses in `losses.py`, layer matching in `features.py`,
`distill` records the accuracy recovered; DistributedDataParallel under torchrun (`ddp.py`)."""

from edgeopt.training.distill import DistillResult, distill, top1
from edgeopt.training.loop import FitResult, fit

__all__ = ["fit", "FitResult", "distill", "DistillResult", "top1"]
