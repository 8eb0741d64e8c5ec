"""Analyze a model: params, MACs, layer mix, prunable groups (Torch-Pruning's dependency graph)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from edgeopt.config import ModelSummary
from edgeopt.errors import first_line
from edgeopt.inputs.hooks import forward_hooks
from edgeopt.timeout import time_limit


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class _Keywords(nn.Module):
    """Calls the model with keyword inputs from positional ones: Torch-Pruning's counter reads the batch size
    from the first positional input (with keyword inputs it printed a warning and counted the whole batch)."""

    def __init__(self, model: nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *xs):
        return self.model(**dict(zip(self.names, xs, strict=True)))


def count_macs(model: nn.Module, example) -> int:
    """MACs of one forward pass on `example` (a tensor, a tuple or a dict of tensors), per sample."""
    import torch_pruning as tp

    if isinstance(example, dict):
        model, example = _Keywords(model, [str(k) for k in example]), tuple(example.values())
    with torch.no_grad(), _factorized_qkv_counted():
        macs, _ = tp.utils.count_ops_and_params(model, example)
    return int(macs)


@contextlib.contextmanager
def _factorized_qkv_counted():
    """Torch-Pruning counts a timm attention block from its fused `qkv` Linear's width, and fails on a block
    whose qkv was factorized into two Linears (a Sequential has no `out_features`). Such a block counts its
    two attention products here (Q K^T and the weighted sum of V), the two Linears count themselves."""
    from torch_pruning.utils import op_counter

    original = getattr(op_counter, "timm_multihead_attention_counter_hook", None)
    types = [t for t, h in op_counter.MODULES_MAPPING.items() if original is not None and h is original]

    def hook(module, inputs, output):
        if isinstance(getattr(module, "qkv", None), nn.Linear):
            return original(module, inputs, output)
        batch, tokens, dim = inputs[0].shape[:3]
        module.__flops__ += int(2 * batch * tokens * tokens * dim)

    for t in types:
        op_counter.MODULES_MAPPING[t] = hook
    try:
        yield
    finally:
        for t in types:
            op_counter.MODULES_MAPPING[t] = original


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
        elif isinstance(m, nn.MultiheadAttention) or (type(m).__name__.lower().endswith("attention")
                                                       and any(True for _ in m.parameters())):
            add("attention")  # a weightless wrapper named so is not attention (smp's Unet: Identity inside)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            add("batchnorm")
        elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
            add("layernorm")
    return mix


def count_prunable_groups(model: nn.Module, example, timeout_s: float = 60) -> int:
    """Groups of coupled channels that Torch-Pruning can cut (the layers producing outputs excluded)."""
    import torch_pruning as tp

    from edgeopt.inputs.model_io import Inputs
    from edgeopt.techniques.pruning.prune import output_layers

    out_layers = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    out_layers += output_layers(model, Inputs.of(example, model))
    with time_limit(timeout_s, "dependency-graph tracing"):
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
        return sum(1 for _ in dg.get_all_groups(ignored_layers=out_layers,
                                                root_module_types=(nn.Conv2d, nn.Linear)))


def analyze(model: nn.Module, input_shape, size_bytes: int = 0) -> ModelSummary:
    """`input_shape`: one input's shape, name -> shape for several, or example inputs (Inputs, tuple, dict)."""
    from edgeopt.inputs.model_io import Inputs, flatten_outputs

    if isinstance(input_shape, Inputs) or isinstance(input_shape, (tuple, list)) and input_shape \
            and isinstance(input_shape[0], torch.Tensor) or isinstance(input_shape, torch.Tensor):
        inputs = Inputs.of(input_shape, model)
    else:
        inputs = Inputs.random(input_shape, keyword=True)
    example = inputs.example()
    model.eval()
    linear = {"macs": 0}

    def count_linear(mod, args, out):  # MACs of Linear layers per sample, tokens included (ViT blocks)
        if isinstance(out, torch.Tensor) and out.dim() >= 1 and inputs.batch:
            linear["macs"] += out.numel() // max(out.shape[-1], 1) // inputs.batch * mod.in_features * \
                mod.out_features

    with forward_hooks((m, count_linear) for m in model.modules() if isinstance(m, nn.Linear)), torch.no_grad():
        outs = flatten_outputs(inputs.call(model))
    out = outs.get("out", next(iter(outs.values())))  # the primary output: 'out' or the first
    from edgeopt.techniques.pruning.prune import trouble_modules, unsafe_layers

    unprunable: list[str] = list(unsafe_layers(model)[1])
    trouble = trouble_modules(model)
    # where whole-graph tracing fails or does not finish, prune() goes block by block: an upper bound
    # (estimated, not traced) of the layers that can root a group inside a block
    estimate = sum(1 for m in model.modules() if isinstance(m, nn.Linear) or isinstance(m, nn.Conv2d) and m.groups == 1)
    if trouble:
        groups = estimate
        unprunable += [f"{name or 'model'}: {why}: not traceable as a whole, pruned block by block "
                       "(prunable_groups is an estimate)" for name, why in trouble[:10]]
    else:
        try:
            groups = count_prunable_groups(model, example)
        except Exception as e:  # tracing fails on some graphs: the model is still pruned by blocks
            groups = estimate
            unprunable.append(f"model: dependency graph failed ({first_line(e, 120)}): pruned block by block "
                              "(prunable_groups is an estimate)")
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups == 1]
    from edgeopt.techniques.pruning.depth import residual_blocks

    try:
        removable = len(residual_blocks(model, example))
    except Exception:  # a model whose submodules cannot be called alone: depth pruning falls back to its default
        removable = None
    return ModelSummary(
        params=count_params(model), macs=count_macs(model, example), input_shape=list(inputs.first.shape),
        num_outputs=(int(out.shape[-1]) if out.dim() == 2 else int(out.shape[1]) if out.dim() == 4 else None),
        layers=layer_mix(model), linear_macs=linear["macs"],
        linear_params=sum(p.numel() for m in model.modules() if isinstance(m, nn.Linear) for p in m.parameters()),
        prunable_groups=groups, unprunable=unprunable, min_channels=min(widths) if widths else None,
        residual_blocks=removable,
        size_bytes=size_bytes or sum(p.numel() * p.element_size() for p in model.parameters()),
    )
