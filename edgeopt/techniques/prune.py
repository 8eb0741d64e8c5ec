"""Structured pruning through Torch-Pruning: the dependency graph says which channels are coupled,
an importance criterion says which to remove, Torch-Pruning's pruning functions cut them physically.
The input model is never modified: a copy is pruned."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from edgeopt.errors import PruningError
from edgeopt.registry import Registry
from edgeopt.timeout import time_limit


def _importances() -> Registry[Callable[[], object]]:
    import torch_pruning as tp

    reg: Registry[Callable[[], object]] = Registry("importance criterion")
    reg.register("l2", lambda: tp.importance.GroupMagnitudeImportance(p=2), aliases=("magnitude",))
    reg.register("l1", lambda: tp.importance.GroupMagnitudeImportance(p=1))
    reg.register("bn_scale", lambda: tp.importance.BNScaleImportance(), aliases=("slimming", "bn"))
    reg.register("taylor", lambda: tp.importance.GroupTaylorImportance())
    reg.register("fpgm", lambda: tp.importance.FPGMImportance())
    reg.register("random", lambda: tp.importance.RandomImportance())
    return reg


IMPORTANCE_NAMES = ("l2", "l1", "bn_scale", "taylor", "fpgm", "random")


def output_layers(model: nn.Module, num_outputs: int | None) -> list[nn.Module]:
    """The classifier: its output size must not change."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    keep = [m for m in layers if isinstance(m, nn.Linear) and m.out_features == num_outputs]
    if not keep and layers:
        keep = [layers[-1]]
    return keep


def unsafe_layers(model: nn.Module) -> tuple[list[nn.Module], list[str]]:
    """Modules whose channels must not be cut by a plain pruner (attention needs consistent heads), with
    a reason per layer. They are kept intact; the rest of the model is still pruned."""
    keep, why = [], []
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention) or type(m).__name__.lower().endswith("attention"):
            keep.append(m)
            why.append(f"{name}: attention block kept intact (heads must stay consistent)")
    return keep, why


def channel_table(model: nn.Module) -> dict[str, int]:
    return {name: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
            for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def _taylor_grads(model: nn.Module, data) -> None:
    if not data or not all(isinstance(b, (tuple, list)) and b[1] is not None for b in data):
        raise PruningError("taylor importance needs a few labelled batches: pass data=[(x, y), ...]")
    model.zero_grad()
    for x, y in data[:4]:
        nn.functional.cross_entropy(model(x), y).backward()


def prune(model: nn.Module, example: torch.Tensor, ratio: float = 0.3, importance: str = "l2",
          scope: str = "local", round_to: int | None = None, iterative_steps: int = 1, data=None,
          max_layer_ratio: float = 0.9, timeout_s: float = 120) -> tuple[nn.Module, dict]:
    """Return (physically pruned copy, record of what changed per layer)."""
    import torch_pruning as tp

    if not 0.0 <= ratio < 1.0:
        raise PruningError(f"prune ratio must be in [0, 1), got {ratio}")
    imp = _importances().get(importance)()
    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        out = model(example)
    num_outputs = int(out.shape[-1])
    before = channel_table(model)
    unsafe, skipped = unsafe_layers(model)
    ignored = output_layers(model, num_outputs) + unsafe
    try:
        with time_limit(timeout_s, "pruning"):
            pruner = tp.pruner.MetaPruner(
                model, example, importance=imp, pruning_ratio=ratio, global_pruning=(scope == "global"),
                max_pruning_ratio=max_layer_ratio, iterative_steps=iterative_steps, round_to=round_to,
                ignored_layers=ignored)
            for _ in range(iterative_steps):
                if importance == "taylor":
                    _taylor_grads(model, data)
                pruner.step()
    except PruningError:
        raise
    except TimeoutError as e:
        raise PruningError(f"pruning stopped: {e}") from None
    except Exception as e:
        raise PruningError(f"Torch-Pruning failed on this model: {type(e).__name__}: {str(e)[:200]}") from None
    model.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        new_out = model(example)
    if new_out.shape != out.shape:
        raise PruningError(f"pruning changed the output shape {tuple(out.shape)} -> {tuple(new_out.shape)}")
    after = channel_table(model)
    layers = [{"layer": k, "before": before[k], "after": after.get(k)} for k in before
              if after.get(k) != before[k]]
    record = {"ratio": ratio, "importance": importance, "scope": scope, "round_to": round_to,
              "iterative_steps": iterative_steps, "layers_changed": len(layers), "layers": layers,
              "skipped": skipped}
    return model, record


def apply_prune(model: nn.Module, example: torch.Tensor, config, data=None) -> tuple[nn.Module, dict]:
    return prune(model, example, ratio=config.ratio, importance=config.importance, scope=config.scope,
                 round_to=config.round_to, iterative_steps=config.iterative_steps,
                 data=data.items if data is not None else None,
                 max_layer_ratio=config.max_layer_ratio)
