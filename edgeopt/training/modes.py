"""The mode a model is fine-tuned in. Most models return the same outputs in training and in evaluation mode and
train in training mode (BatchNorm statistics follow the new weights). Detectors often do not: an Ultralytics head
returns its raw per-level maps in training mode and decoded boxes in evaluation mode, and a torchvision detector
wants box targets in training mode and returns losses. Distillation matches the student's outputs to the teacher's
(which runs in evaluation mode), so such a model is fine-tuned in evaluation mode: BatchNorm statistics and dropout
frozen, gradients flowing, the usual way to fine-tune a detector on small batches. A model whose evaluation outputs
are per-image lists after non-maximum suppression has nothing to match element by element (how many boxes it finds
follows the weights): it is not distilled, with the reason."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from edgeopt.errors import InputShapeError, first_line
from edgeopt.inputs.feeding import run_model
from edgeopt.inputs.model_io import flatten_outputs, per_image_lists


@dataclass(frozen=True)
class TrainingMode:
    mode: str  # "train", "eval" (outputs differ in training mode), or "none" (cannot be distilled)
    reason: str


def _shapes(out) -> dict[str, tuple[int, ...]] | None:
    try:
        return {k: tuple(v.shape) for k, v in flatten_outputs(out).items()}
    except InputShapeError:
        return None


@contextmanager
def _untouched(model: nn.Module):
    """Run `model` inside and leave it as it was: its modes, its buffers (a training-mode pass moves BatchNorm
    statistics) and the random state (dropout draws). In place, not on a copy: masked or parametrized weights
    (pruning masks) are not leaf tensors and cannot be deep-copied."""
    modes = {m: m.training for m in model.modules()}
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for m, training in modes.items():
            m.training = training


def training_mode(model: nn.Module, example) -> TrainingMode:
    """How `model` is fine-tuned, decided on one batch `example` (a tensor or Inputs)."""
    with _untouched(model), torch.no_grad():
        evaluated = run_model(model.eval(), example)
        if per_image_lists(evaluated):
            return TrainingMode("none", "its outputs are per-image detections after non-maximum suppression (as "
                                        "many boxes as it finds): there is no output to distil element by element")
        try:
            trained = run_model(model.train(), example)
        except Exception as e:  # e.g. a detector that wants box targets in training mode
            return TrainingMode("eval", f"training mode fails on images alone ({first_line(e, 100)}): fine-tuned in "
                                        "evaluation mode (BatchNorm statistics frozen)")
    if _shapes(trained) != _shapes(evaluated):
        return TrainingMode("eval", "its outputs in training mode differ from its deployed outputs (a detection "
                                    "head's raw maps): fine-tuned in evaluation mode (BatchNorm statistics frozen)")
    return TrainingMode("train", "training mode")
