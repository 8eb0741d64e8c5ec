"""Retraining: fine-tuning with knowledge distillation from the original model (teacher) into the
compressed one (student). One loop (`fit`), losses in `losses.py`."""

from edgeopt.training.loop import FitResult, fit

__all__ = ["fit", "FitResult"]
