"""Analyze a model: params, MACs, layer mix, prunable groups (Torch-Pruning's dependency graph)."""

from __future__ import annotations

import torch
from torch import nn

from edgeopt.config import ModelSummary
from edgeopt.timeout import time_limit


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    import torch_pruning as tp

    with torch.no_grad():
        macs, _ = tp.utils.count_ops_and_params(model, example)
    return int(macs)


def layer_mix(model: nn.Module) -> dict[str, int]:
    mix: dict[str, int] = {}

    def add(k: str) -> None:
        mix[k] = mix.get(k, 0) + 1

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            add("depthwise_conv" if m.groups > 1 and m.groups == m.in_channels else
                "grouped_conv" if m.groups > 1 else "conv")
        elif isinstance(m, nn.Linear):
            add("linear")
        elif isinstance(m, nn.MultiheadAttention) or type(m).__name__.lower().endswith("attention"):
            add("attention")
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            add("batchnorm")
        elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
            add("layernorm")
    return mix


def count_prunable_groups(model: nn.Module, example: torch.Tensor, timeout_s: float = 60) -> int:
    """Groups of coupled channels that Torch-Pruning can cut (the output layer excluded)."""
    import torch_pruning as tp

    out_layers = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    with time_limit(timeout_s, "dependency-graph tracing"):
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example)
        return sum(1 for _ in dg.get_all_groups(ignored_layers=out_layers,
                                                root_module_types=(nn.Conv2d, nn.Linear)))


def analyze(model: nn.Module, input_shape: tuple[int, ...], size_bytes: int = 0) -> ModelSummary:
    example = torch.randn(*input_shape)
    model.eval()
    with torch.no_grad():
        out = model(example)
    from edgeopt.techniques.prune import trouble_modules, unsafe_layers

    unprunable: list[str] = list(unsafe_layers(model)[1])
    trouble = trouble_modules(model)
    if trouble:  # whole-graph tracing fails or does not finish on these: prune() goes block by block
        # an upper bound (estimated, not traced): layers that can root a group inside a block
        groups = sum(1 for m in model.modules()
                     if isinstance(m, nn.Linear) or isinstance(m, nn.Conv2d) and m.groups == 1)
        unprunable += [f"{name}: {why}: not traceable as a whole, pruned block by block "
                       "(prunable_groups is an estimate)" for name, why in trouble[:10]]
    else:
        try:
            groups = count_prunable_groups(model, example)
        except Exception as e:  # tracing fails on some graphs: the model is still usable, pruned by blocks
            groups = 0
            unprunable.append(f"model: dependency graph failed ({type(e).__name__}: {str(e)[:120]})")
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups == 1]
    return ModelSummary(
        params=count_params(model), macs=count_macs(model, example), input_shape=list(input_shape),
        num_outputs=int(out.shape[-1]) if out.dim() >= 2 else None, layers=layer_mix(model),
        prunable_groups=groups, unprunable=unprunable, min_channels=min(widths) if widths else None,
        size_bytes=size_bytes or sum(p.numel() * p.element_size() for p in model.parameters()),
    )
