"""Compare an exported model's outputs with the PyTorch model's on fresh inputs.

Tolerances depend on the precision: fp32 must match closely; reduced precisions are judged by relative
error and top-1 agreement, since their point is to trade exactness for speed."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

# The tolerances are policy: they live with the other thresholds in decide/policy.py, a leaf module that
# imports nothing and so may be read from this layer without importing the decision layer.
import edgeopt.decide.policy as policy
from edgeopt.errors import VerificationError
from edgeopt.formats.base import Session


def verify_session(session: Session, model: nn.Module, example: torch.Tensor, precision: str,
                   n_inputs: int | None = None, inputs: list[torch.Tensor] | None = None, seed: int = 1234,
                   labels: list[torch.Tensor] | None = None) -> dict:
    """Raise VerificationError when the runtime's outputs do not match; return the error figures.

    fp32 is judged on a few inputs by max error; reduced precisions on enough inputs (24 by default) for
    top-1 agreement to mean something. With `labels` (one tensor per input batch), the accuracy of both
    the runtime and PyTorch is reported too."""
    gen = torch.Generator().manual_seed(seed)
    if n_inputs is None:
        fp32 = policy.tolerance(session.precision_executed) == policy.TOLERANCES["fp32"]
        n_inputs = policy.VERIFY_INPUTS_FP32 if fp32 else policy.VERIFY_INPUTS_REDUCED
    xs = inputs or [torch.randn(example.shape, generator=gen) for _ in range(n_inputs)]
    if labels is not None and len(labels) != len(xs):
        raise VerificationError(f"{len(labels)} label batches for {len(xs)} input batches")
    max_abs = rel = 0.0
    agree = total = right_rt = right_pt = 0
    model.eval()
    for i, x in enumerate(xs):
        with torch.no_grad():
            ref = model(x).float().numpy()
        got = session.run(x.numpy())
        if got.shape != ref.shape:
            raise VerificationError(f"{session.runtime} output shape {got.shape} != PyTorch {ref.shape}")
        if not np.isfinite(got).all():
            raise VerificationError(f"{session.runtime} produced NaN/Inf outputs")
        diff = float(np.abs(got - ref).max())
        max_abs = max(max_abs, diff)
        rel = max(rel, diff / max(float(np.abs(ref).max()), 1e-6))
        if ref.ndim >= 2:
            agree += int((got.reshape(len(got), -1).argmax(1) == ref.reshape(len(ref), -1).argmax(1)).sum())
            total += len(ref)
            if labels is not None:
                y = labels[i].numpy().reshape(-1)
                right_rt += int((got.reshape(len(got), -1).argmax(1) == y).sum())
                right_pt += int((ref.reshape(len(ref), -1).argmax(1) == y).sum())
    agreement = agree / total if total else 1.0
    max_rel, min_agree = policy.tolerance(session.precision_executed)
    result = {"max_abs_error": max_abs, "max_rel_error": rel, "top1_agreement": agreement,
              "precision": session.precision_executed, "inputs": len(xs)}
    if labels is not None and total:
        result["accuracy"], result["accuracy_pytorch"] = right_rt / total, right_pt / total
    # top-1 agreement is only meaningful over enough samples; a single flip among 4 random inputs is noise
    if rel > max_rel or (total >= policy.AGREEMENT_MIN_SAMPLES and agreement < min_agree):
        raise VerificationError(
            f"{session.runtime} ({session.precision_executed}) outputs differ from PyTorch: max relative "
            f"error {rel:.2e} (limit {max_rel:.0e}), top-1 agreement {agreement:.0%} (min {min_agree:.0%})")
    return result
