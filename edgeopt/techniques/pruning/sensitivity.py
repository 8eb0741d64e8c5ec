"""Sensitivity analysis for pruning: prune each layer's channel group alone, measure the accuracy drop with
the caller's `evaluate(model) -> accuracy`, and turn the drops into per-layer ratios (sensitive layers are
pruned less). The pipeline's `--sensitivity` runs this and passes `layer_ratios` to the prune step."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from edgeopt.errors import PruningError


def candidate_layers(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Conv/Linear layers that root a channel group (not depthwise, not the classifier)."""
    with torch.no_grad():
        n_out = int(model(example).shape[-1])
    names = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and m.groups == 1 and m.out_channels > 1:
            names.append(name)
        elif isinstance(m, nn.Linear) and m.out_features != n_out:
            names.append(name)
    return names


def ratios_from_drops(drops: dict[str, float], target_ratio: float, max_layer_ratio: float = 0.9) -> dict[str, float]:
    """Linear allocation: the least sensitive layer gets 1.5x the target ratio, the most sensitive 0.5x,
    so that the average stays near the target."""
    if not drops:
        return {}
    lo, hi = min(drops.values()), max(drops.values())
    span = hi - lo
    out = {}
    for name, d in drops.items():
        s = (d - lo) / span if span > 1e-12 else 0.5
        out[name] = round(min(max_layer_ratio, max(0.0, target_ratio * (1.5 - s))), 4)
    return out


def sensitivity(model: nn.Module, example: torch.Tensor, evaluate: Callable[[nn.Module], float],
                ratio: float = 0.5, importance: str = "l2", target_ratio: float | None = None,
                max_groups: int | None = None, data=None, timeout_s: float = 60) -> dict:
    """Accuracy drop (same unit as `evaluate`) per layer when that layer's group alone is pruned at `ratio`."""
    from edgeopt.techniques.pruning.prune import prune

    if not callable(evaluate):
        raise PruningError("sensitivity analysis needs evaluate(model) -> accuracy")
    baseline = float(evaluate(model))
    layers = candidate_layers(model, example)[: max_groups or None]
    drops: dict[str, float] = {}
    skipped: list[str] = []
    for name in layers:
        try:
            small, rec = prune(model, example, ratio=0.0, importance=importance, layer_ratios={name: ratio},
                               data=data, timeout_s=timeout_s)
        except PruningError as e:
            skipped.append(f"{name}: {e}")
            continue
        if not any(r["layer"] == name for r in rec["layers"]):
            skipped.append(f"{name}: not prunable alone (its group reaches the output or input)")
            continue
        drops[name] = round(baseline - float(evaluate(small)), 6)
    return {"baseline": baseline, "probe_ratio": ratio, "importance": importance, "layers": drops,
            "layer_ratios": ratios_from_drops(drops, ratio if target_ratio is None else target_ratio),
            "skipped": skipped}
