"""Distillation losses. Response-based (Hinton et al. 2015): KL divergence between temperature-softened
teacher and student outputs, scaled by T^2 so its gradients keep their size as T changes, mixed with the
hard-label cross-entropy when labels exist."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hinton_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None,
                temperature: float = 4.0, alpha: float = 0.7) -> torch.Tensor:
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.softmax(teacher_logits / t, dim=1),
                    reduction="batchmean") * (t * t)
    if labels is None:
        return soft  # no labels: pure distillation
    return alpha * soft + (1.0 - alpha) * F.cross_entropy(student_logits, labels)
