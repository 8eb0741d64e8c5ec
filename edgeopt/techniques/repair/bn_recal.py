"""Re-estimate BatchNorm running statistics after the model's structure changed (pruning shifts the
activation statistics; re-estimating them on unlabeled data recovers much of the accuracy for free)."""

from __future__ import annotations

import torch
from torch import nn

from edgeopt.inputs.feeding import run_model


def recalibrate_bn(model: nn.Module, batches: list[torch.Tensor], max_batches: int = 20) -> int:
    """Reset and re-estimate BN statistics in place on up to `max_batches` batches. Returns BN count."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or not batches:
        return 0
    saved = {m: (getattr(m, "momentum", None), m.training) for m in model.modules()}
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over all batches, not an exponential one
        bn.train()
    with torch.no_grad():
        for x in batches[:max_batches]:
            run_model(model, x)
    for m, (momentum, training) in saved.items():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum
        m.train(training)
    model.eval()
    return len(bns)


def apply_bn_recalibrate(model: nn.Module, example: torch.Tensor, config, data=None) -> tuple[nn.Module, dict]:
    batches = data.inputs() if data is not None else []  # data: edgeopt.inputs.data.Batches
    n = recalibrate_bn(model, batches, max_batches=config.batches)
    return model, {"batchnorm_layers": n, "batches": min(len(batches), config.batches)}
