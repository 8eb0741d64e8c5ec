"""Prune one module (the whole model, or one block of it) with Torch-Pruning's MetaPruner.

The dependency graph of the traced module says which channels are coupled. A group is cut only when it
stays inside the module: groups that change the module's output width (the classifier, a block's output
that feeds a channel shuffle) or its input width are ignored. Attention keeps whole heads: Torch-Pruning
gets `num_heads` for every nn.MultiheadAttention and timm-style `qkv` Linear (whose heads are removed whole,
see model_families); attention it cannot prune per head is kept intact with a reason. Detection heads keep
their output channels (model_families)."""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

import edgeopt.decide.policy as policy
from edgeopt.inputs.hooks import forward_hooks
from edgeopt.inputs.model_io import Inputs, flatten_outputs, per_image_lists
from edgeopt.techniques.pruning.importance import measured
from edgeopt.techniques.pruning.model_families import detection_head_outputs, head_schedule, qkv_attention, settle_heads


@dataclass
class PruneSpec:
    ratio: float
    importance: str
    criterion: object  # a Torch-Pruning importance: called on a group, one score per channel
    scope: str = "local"
    round_to: int | None = None
    iterative_steps: int = 1
    max_layer_ratio: float = 0.9
    data: list | None = None
    layer_ratios: dict[str, float] = field(default_factory=dict)  # module name -> ratio (sensitivity)
    names: dict[nn.Module, str] = field(default_factory=dict)  # module -> name in the full model
    # layer name -> original indices of the output channels it keeps (reconstruction matches those)
    kept: dict[str, list[int]] = field(default_factory=dict)


def rounded_kept(width: int, kept: int, multiple: int) -> int:
    """The channels a `width`-wide layer keeps when asked to keep `kept` and its kernels work in blocks of
    `multiple` channels: rounded up to a whole block, never above the width. A partial block costs the time of
    a whole one (blocked kernels pad it), so the channels that would only shrink it are kept and no layer loses
    more than asked. A layer narrower than ROUNDING_MIN_STEPS blocks rounds to a halved multiple, so that
    it can still be cut in steps of at most 1/ROUNDING_MIN_STEPS of its width."""
    m = multiple
    while m > 1 and width < policy.ROUNDING_MIN_STEPS * m:
        m //= 2
    return min(width, -(-kept // m) * m) if m > 1 else kept


@functools.cache
def _block_pruner():
    """Torch-Pruning's MetaPruner with its channel rounding replaced by rounded_kept (its own rounds the kept
    channels down, which cuts narrow layers far beyond the ratio)."""
    import torch_pruning as tp

    class BlockPruner(tp.pruner.MetaPruner):
        def _round_to(self, n_pruned, current_channels, round_to):
            return current_channels - rounded_kept(current_channels, current_channels - n_pruned, round_to)

    return BlockPruner


def is_attention(m: nn.Module) -> bool:
    return isinstance(m, nn.MultiheadAttention) or type(m).__name__.lower().endswith("attention")


def attention_heads(module: nn.Module, names: dict) -> tuple[dict, list[nn.Module], list[str]]:
    """(num_heads for Torch-Pruning, attention modules to keep intact, reasons/notes)."""
    heads: dict[nn.Module, int] = {}
    keep: list[nn.Module] = []
    notes: list[str] = []
    for m in module.modules():
        if isinstance(m, nn.MultiheadAttention):
            heads[m] = m.num_heads
        elif isinstance(getattr(m, "qkv", None), nn.Linear) and isinstance(getattr(m, "num_heads", None), int) \
                and not hasattr(m, "relative_position_bias_table"):
            heads[m.qkv] = m.num_heads
    covered = set(heads) | {q for m in heads for q in m.modules()}
    for m in module.modules():
        if is_attention(m) and not isinstance(m, nn.MultiheadAttention):
            inner = [q for q in m.modules() if q in covered]
            layers = any(isinstance(q, (nn.Conv2d, nn.Linear)) for q in m.modules())
            if not inner and layers:  # one with no layer (smp's attention_type=None) has nothing to keep
                keep.append(m)
                notes.append(f"{names.get(m, type(m).__name__)}: attention kept intact "
                             f"({type(m).__name__}: heads cannot be pruned consistently by Torch-Pruning)")
    return heads, keep, notes


def _boundary_layers(dg, ignored: list[nn.Module], roots, groups: list | None = None) -> list[nn.Module]:
    """Layers whose out-channel group reaches the module's output or input: cutting them would change
    the shape the rest of the network sees. `groups`: the graph's groups when the caller has them already
    (each costs Torch-Pruning a walk of the graph: 0.3 s a group on SSDlite, 120 s for all of them)."""
    from torch_pruning import ops

    bound: list[nn.Module] = []
    for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=roots) if groups is None else groups:
        touches = False
        for dep, _ in group:
            node, fn = dep.target, dep.handler
            if node.type == ops.OPTYPE.PARAMETER:
                continue
            mod = node.module
            layer = isinstance(mod, (nn.Conv2d, nn.Linear))
            # the module's output: a layer's out-channels, or any op (norm, activation, add) at the end
            if not node.outputs and (dg.is_out_channel_pruning_fn(fn) if layer else bool(node.inputs)):
                touches = True
            # the module's input: a layer fed by it, whose in-channels (or depthwise channels) would shrink
            depthwise = isinstance(mod, nn.Conv2d) and mod.groups > 1 and mod.groups == mod.in_channels
            if layer and not node.inputs and (dg.is_in_channel_pruning_fn(fn) or depthwise):
                touches = True
        if touches:
            bound += [dep.target.module for dep, _ in group if dg.is_out_channel_pruning_fn(dep.handler)]
    return bound


def _call(module: nn.Module, args: tuple | dict):
    return module(**args) if isinstance(args, dict) else module(*args)


def _outputs(module: nn.Module, args: tuple | dict) -> list[tuple[int, ...]]:
    """Shapes of every tensor the module returns (tuples, lists and dicts walked); per-image box lists
    without their leading size (the number of boxes found)."""
    with torch.no_grad():
        out = _call(module, args)
    lead = 1 if per_image_lists(out) else 0
    shapes: list[tuple[int, ...]] = []
    stack = [out]
    while stack:
        o = stack.pop(0)
        if isinstance(o, torch.Tensor):
            shapes.append(tuple(o.shape)[lead:])
        elif isinstance(o, dict):
            stack[:0] = list(o.values())
        elif isinstance(o, (tuple, list)):
            stack[:0] = list(o)
    return shapes


def prune_module(module: nn.Module, args: tuple | dict, spec: PruneSpec, full_model: nn.Module,
                 extra_ignored: list[nn.Module] = ()) -> dict:
    """Prune `module` in place (traced with `args`). Returns notes; raises on any failure (the caller
    restores the module). The module's output shapes are checked to be unchanged. `args`: positional
    tensors, or a dict of keyword tensors (Torch-Pruning calls module(**args))."""
    roots = (nn.Conv2d, nn.Linear)
    shapes = _outputs(module, args)
    heads, keep, notes = attention_heads(module, spec.names)
    ignored = list(extra_ignored) + keep + detection_head_outputs(module)
    ratio_dict = {m: spec.layer_ratios[spec.names[m]] for m in module.modules()
                  if isinstance(m, roots) and spec.names.get(m) in spec.layer_ratios}
    # fused-qkv attention loses whole heads, never dims inside a head: its reshape and scale stay valid
    attention = qkv_attention(module)
    head_share = head_schedule(attention, lambda q: min(ratio_dict.get(q, spec.ratio), spec.max_layer_ratio),
                               spec.iterative_steps)
    example = args if isinstance(args, dict) else args[0] if len(args) == 1 else list(args)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        pruner = _block_pruner()(
            module, example, importance=spec.criterion, pruning_ratio=spec.ratio,
            pruning_ratio_dict=ratio_dict or None, global_pruning=(spec.scope == "global"),
            max_pruning_ratio=spec.max_layer_ratio, iterative_steps=spec.iterative_steps, round_to=spec.round_to,
            ignored_layers=ignored, num_heads=heads, prune_num_heads=bool(attention), prune_head_dims=not attention,
            head_pruning_ratio=spec.ratio if attention else 0.0)
    notes += _unwrapped_notes(said)
    if spec.scope == "local":  # its own linear schedule would take ceil(share x heads left) again each step
        pruner.head_pruning_ratio_dict.update(head_share)
    bound = _boundary_layers(pruner.DG, pruner.ignored_layers, roots)
    pruner.ignored_layers.extend(bound)
    if spec.scope == "global":  # recount the channels the global ranking shares out, boundaries excluded
        pruner.initial_total_channels = sum(
            pruner.DG.get_out_channels(g[0][0].target.module) // pruner._get_channel_groups(g)
            for g in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers, root_module_types=roots))
    kept: dict[str, list[int]] = {}  # merged into spec.kept only once this module was pruned successfully
    for step in range(spec.iterative_steps):
        if measured(spec.criterion) and (step > 0 or spec.criterion.every_step):
            spec.criterion.measure(full_model, spec.data)  # measures of the channels that are left
        for group in pruner.step(interactive=True):
            _track_kept(group, pruner.DG, spec, kept)
            group.prune()
    full_model.zero_grad(set_to_none=True)
    notes += settle_heads(attention, pruner.num_heads, spec.names)
    new_shapes = _outputs(module, args)
    if new_shapes != shapes:
        raise RuntimeError(f"output shape changed {shapes} -> {new_shapes}")
    spec.kept.update(kept)
    for m in heads:
        if isinstance(m, nn.MultiheadAttention):
            notes.append(f"{spec.names.get(m, 'attention')}: {m.num_heads} heads kept, embed dim {m.embed_dim} "
                         "(head dims pruned consistently where the residual stream allowed)")
    return {"notes": notes, "boundary": [spec.names.get(m, "?") for m in bound if isinstance(m, roots)]}


def _unwrapped_notes(said: list) -> list[str]:
    """Torch-Pruning's warnings while it traced the module, as notes of the prune record: its "unwrapped
    parameters" (a ViT's cls_token and pos_embed, ConvNeXt's layer scales) are cut with the channels they
    follow, along their last dimension of more than one (embedding or channel width). That is what these models
    need, and the output-shape check and the accuracy screen catch a model where it is not; printed as a warning
    it would repeat for every candidate built. Any other warning is passed on."""
    notes = []
    for w in said:
        text = str(w.message)
        if text.startswith("Unwrapped parameters detected:"):
            names = text.split(":", 1)[1].split("]")[0].strip(" [")
            notes.append(f"parameters outside its layers ({names.replace(chr(39), '')}) cut with the channels they "
                         "follow, along their last dimension")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return notes


def _track_kept(group, dg, spec: PruneSpec, kept: dict[str, list[int]]) -> None:
    """Before the group is cut: drop its indices from each layer's list of kept original channels."""
    seen = set()
    for dep, idxs in group:
        mod = dep.target.module
        if not isinstance(mod, (nn.Conv2d, nn.Linear)) or mod in seen or not dg.is_out_channel_pruning_fn(dep.handler):
            continue
        seen.add(mod)
        name = spec.names.get(mod)
        if name is None:
            continue
        width = mod.out_channels if isinstance(mod, nn.Conv2d) else mod.out_features
        cur = kept.get(name) or spec.kept.get(name) or list(range(width))
        drop = set(int(i) for i in idxs)
        kept[name] = [c for i, c in enumerate(cur) if i not in drop]


def output_layers(model: nn.Module, example: Inputs) -> list[nn.Module]:
    """Conv/Linear layers whose output tensor is one of the model's outputs, directly or through modules
    that keep its channels (upsampling, an activation, dropout: a segmentation head): their output channels
    are what the user reads (boxes, classes, masks), so they are never pruned on their output side."""
    produced: dict[int, tuple[nn.Module, torch.Tensor | None, torch.Tensor]] = {}  # output id -> (module, in, out)

    # The tensors are held until the end (one forward's activations at the example's batch): with only ids or
    # shapes kept, a freed tensor's id is reused by the next one, and an output made by a plain op (a transpose)
    # would be taken for a layer's output it never was.
    def hook(mod, args, out):
        src = args[0] if len(args) == 1 and isinstance(args[0], torch.Tensor) else None
        if isinstance(out, torch.Tensor) and out is not src:  # an identity passes its input on: nothing to add
            produced[id(out)] = (mod, src, out)

    leaves = (m for m in model.modules() if not list(m.children()))
    with forward_hooks((m, hook) for m in leaves), torch.no_grad():
        outs = flatten_outputs(example.call(model))
    found: list[nn.Module] = []
    for t in outs.values():
        cur = t
        for _ in range(8):  # a few channel-keeping modules at most between the layer and the output
            if id(cur) not in produced:
                break
            mod, src, out = produced[id(cur)]
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                if mod not in found:
                    found.append(mod)
                break
            resized = src is not None and src.dim() == out.dim() == 4 and src.shape[:2] == out.shape[:2]
            if src is None or not (src.shape == out.shape or resized):
                break
            cur = src
    return found
