"""Structured pruning through Torch-Pruning: the dependency graph says which channels are coupled,
an importance criterion says which to remove, Torch-Pruning's pruning functions cut them physically.

Never crash, never hang: the whole model is tried first; where its graph cannot be traced or pruned in
time (channel shuffle, window attention), the model is walked down and each block is pruned on its own
(channels inside the block only, so the block's interface stays the same), within a time budget. What
could not be pruned is listed in the record's `skipped`, with a reason per layer. The input model is
never modified: a copy is pruned."""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from edgeopt.errors import PruningError, TimeBudgetError, first_line
from edgeopt.inputs.feeding import batch_inputs
from edgeopt.inputs.hooks import forward_hooks
from edgeopt.inputs.model_io import Inputs, flatten_outputs, model_outputs, per_image_lists
from edgeopt.techniques.pruning.graph_surgery import (
    PruneSpec,
    is_attention,
    output_layers,
    prune_module,
)
from edgeopt.techniques.pruning.importance import IMPORTANCE_NAMES, MeasuredImportance, importances, inputs_of, measured
from edgeopt.techniques.pruning.model_families import split_chunked_blocks
from edgeopt.timeout import deadline_passed, time_limit

__all__ = ["IMPORTANCE_NAMES", "prune", "apply_prune", "channel_table", "traced_blocks", "unsafe_layers"]

# Graphs Torch-Pruning 1.6 cannot handle as a whole: tracing them fails or does not finish,
# so edgeopt goes straight to their blocks instead of spending the time budget on the attempt.
TROUBLE = {
    "InvertedResidual@torchvision.models.shufflenetv2": "channel shuffle (view/transpose of channels)",
    "ShiftedWindowAttention": "shifted-window attention (window reshapes)",
    "ShiftedWindowAttentionV2": "shifted-window attention (window reshapes)",
    "PatchMerging": "patch merging (strided slices + concat)",
    "PatchMergingV2": "patch merging (strided slices + concat)",
    "PartitionAttentionLayer": "partitioned attention (window/grid reshapes)",
    # torchvision's detectors: resizing, anchors, per-image box lists and NMS around the network (tracing
    # SSDlite did not finish in 60 s); their backbone and head blocks are pruned on their own
    **{f"{cls}@torchvision.models.detection.{mod}": "a torchvision detector (anchors, per-image lists, NMS)"
       for cls, mod in (("SSD", "ssd"), ("FasterRCNN", "faster_rcnn"), ("MaskRCNN", "mask_rcnn"),
                        ("KeypointRCNN", "keypoint_rcnn"), ("RetinaNet", "retinanet"), ("FCOS", "fcos"))},
}


def _trouble(m: nn.Module) -> str | None:
    cls = type(m)
    return TROUBLE.get(f"{cls.__name__}@{cls.__module__}") or TROUBLE.get(cls.__name__)


def trouble_modules(model: nn.Module) -> list[tuple[str, str]]:
    """(name, why) of the modules that make whole-graph tracing fail or hang."""
    return [(n, _trouble(m)) for n, m in model.named_modules() if _trouble(m)]


def channel_table(model: nn.Module) -> dict[str, int]:
    return {name: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
            for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def unsafe_layers(model: nn.Module) -> tuple[list[nn.Module], list[str]]:
    """Attention modules Torch-Pruning cannot prune per head (no nn.MultiheadAttention / qkv inside)."""
    from edgeopt.techniques.pruning.graph_surgery import attention_heads

    names = {m: n for n, m in model.named_modules()}
    _, keep, why = attention_heads(model, names)
    return keep, why


def _prunable(m: nn.Module) -> int:
    return sum(1 for q in m.modules() if isinstance(q, (nn.Conv2d, nn.Linear)))


def _capture_inputs(model: nn.Module, example: Inputs) -> dict[nn.Module, tuple]:
    """Each submodule's positional inputs on the example (first call only; kwargs make it untraceable).
    The model itself is traced with the example inputs as given (a dict feeds keyword arguments)."""
    seen: dict[nn.Module, tuple] = {}

    def hook(mod, args, kwargs):
        if mod not in seen:
            ok = not kwargs and args and all(isinstance(a, torch.Tensor) for a in args)
            seen[mod] = tuple(a.detach() for a in args) if ok else ()

    with forward_hooks(((m, hook) for m in model.modules()), pre=True, with_kwargs=True), torch.no_grad():
        example.call(model)
    seen[model] = example.example() if example.keyword else tuple(example.tensors)
    return seen


def traced_blocks(model: nn.Module, example: Inputs, whole: bool = True) -> list[tuple[str, nn.Module, tuple]]:
    """(name, module, its captured inputs) of the modules `prune` traces on their own: the model itself, or,
    where it holds a module Torch-Pruning cannot trace (a torchvision detector: finding SSDlite's groups took
    238 s traced whole, 0.2 s by blocks), the largest blocks without one, the way `prune` walks down. `whole=False`:
    the blocks even when the model itself is traceable (its whole-graph attempt failed). Blocks called with
    keyword or non-tensor inputs are walked through, as `prune` does; a single layer is no block."""
    inputs = _capture_inputs(model, example)
    out: list[tuple[str, nn.Module, tuple]] = []

    def visit(name: str, module: nn.Module) -> None:
        if _prunable(module) < 2 or is_attention(module) and _trouble(module):
            return
        if (name or whole) and not any(_trouble(m) for m in module.modules()) and inputs.get(module):
            out.append((name, module, inputs[module]))
            return
        for cname, child in module.named_children():
            visit(f"{name}.{cname}" if name else cname, child)

    visit("", model)
    return out


class _Walker:
    def __init__(self, model, example, spec: PruneSpec, deadline: float, block_timeout_s: float):
        self.model, self.spec, self.deadline, self.block_timeout_s = model, spec, deadline, block_timeout_s
        self.example = example
        self.inputs = _capture_inputs(model, example)
        self.heads = output_layers(model, example)
        self.skipped: list[str] = []
        self.notes: list[str] = []
        self.pruned_blocks: list[str] = []
        self.failures: list[str] = []

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def _try(self, name: str, module: nn.Module, limit: float) -> nn.Module | None:
        """None when pruned; else the module (put back as it was) whose children are to be tried."""
        args = self.inputs.get(module, ())
        if not args:
            self.failures.append(f"{name or 'model'}: called with keyword/non-tensor inputs, not traceable alone")
            return module
        backup = copy.deepcopy(module)
        criterion = self.spec.criterion
        scores = criterion.saved(name) if isinstance(criterion, MeasuredImportance) else None
        try:
            with time_limit(max(1.0, limit), f"pruning {name or 'the model'}"):
                res = prune_module(module, args, self.spec, self.model,
                                   extra_ignored=self.heads if module is self.model else ())
        except Exception as e:  # any failure: put the block back as it was, then try its children
            self.failures.append(f"{name or 'model'}: {first_line(e, 160)}")
            if scores is not None:  # the block's layers are put back with the scores measured on them
                criterion.put_back(name, scores)
            self._restore(name, module, backup)
            return backup
        self.notes += res["notes"]
        self.pruned_blocks.append(name or "model")
        return None

    def _restore(self, name: str, module: nn.Module, backup: nn.Module) -> None:
        if not name:
            raise _RootFailed  # the caller starts again from a clean copy
        parent_name, _, attr = name.rpartition(".")
        setattr(self.model.get_submodule(parent_name) if parent_name else self.model, attr, backup)
        # the copy has new module objects: their names and inputs are needed to try its children
        self.spec.names = {m: n for n, m in self.model.named_modules()}
        self.inputs = _capture_inputs(self.model, self.example)
        self.heads = output_layers(self.model, self.example)

    def visit(self, name: str, module: nn.Module) -> None:
        if _prunable(module) < 2:  # one layer alone: its output width is the block's interface
            return
        label = name or "model"
        if is_attention(module) and _trouble(module):
            self.skipped.append(f"{label}: attention kept intact ({_trouble(module)}: heads cannot be pruned "
                                "consistently by Torch-Pruning 1.6)")
            return
        if self.left() <= 0:
            self.skipped.append(f"{label}: not pruned, time budget spent")
            return
        if deadline_passed():  # the run's --time-budget (a detector is pruned block by block: 18 blocks for SSDlite)
            raise TimeBudgetError(f"the time ran out while pruning block by block ({len(self.pruned_blocks)} "
                                  "pruned)")
        trouble = [(n, _trouble(m)) for n, m in module.named_modules() if _trouble(m)]
        if trouble:
            n, why = trouble[0]
            self.failures.append(f"{label}: not traced as a whole: contains {why} at {(name + '.' + n).strip('.')}")
        else:
            # the whole-model attempt may use half the budget; the rest is kept for the blocks
            limit = self.left() / 2 if not name else min(self.left(), self.block_timeout_s)
            module = self._try(name, module, limit)
            if module is None:
                return
        for cname, child in list(module.named_children()):
            self.visit(f"{name}.{cname}" if name else cname, child)


class _RootFailed(Exception):
    pass


def prune(model: nn.Module, example, ratio: float = 0.3, importance: str = "l2",
          scope: str = "local", round_to: int | None = None, iterative_steps: int = 1, data=None,
          max_layer_ratio: float = 0.9, timeout_s: float = 120, layer_ratios: dict[str, float] | None = None,
          block_timeout_s: float = 20, reconstruct: bool = False) -> tuple[nn.Module, dict]:
    """Return (physically pruned copy, record of what changed per layer and what was skipped, why).
    `example`: a tensor, a tuple of tensors or a dict name -> tensor (PyTorch's convention).
    `importance="recon"` ranks channels by the output error their removal leaves after re-weighting (needs
    unlabeled `data`); `reconstruct=True` re-solves the layers fed by pruned channels on `data`."""
    if not 0.0 <= ratio < 1.0:
        raise PruningError(f"prune ratio must be in [0, 1), got {ratio}")
    if scope not in ("local", "global"):
        raise PruningError(f"prune scope must be local or global, got {scope!r}")
    t0 = time.monotonic()
    work, split = _working_copy(model)
    example = Inputs.of(example, model)
    data = batch_inputs(data, example)
    with torch.no_grad():
        raw = example.call(work)
    out = flatten_outputs(raw)
    lead = 1 if per_image_lists(raw) else 0  # the number of boxes a detector finds follows the weights
    before = channel_table(work)
    extra: dict = {}
    importance, criterion = _criterion(importance, work, data, extra)
    # the time limit guards tracing and pruning (a graph Torch-Pruning cannot finish); a measured criterion's
    # scores are data-bound work it needs whole, so they do not count: on a loaded machine they would leave a
    # large model's whole-model attempt no time, and the result would depend on the load
    t_prune = time.monotonic()
    spec = PruneSpec(ratio=ratio, importance=importance, criterion=criterion, scope=scope, round_to=round_to,
                     iterative_steps=iterative_steps, max_layer_ratio=max_layer_ratio, data=data,
                     layer_ratios=dict(layer_ratios or {}), names={m: n for n, m in work.named_modules()})
    walker = _Walker(work, example, spec, t_prune + timeout_s, block_timeout_s)
    try:
        walker.visit("", work)
    except _RootFailed:  # the whole-model attempt failed half-way: start again from a clean copy, by blocks
        failures, spent = walker.failures, time.monotonic() - t_prune
        work, _ = _working_copy(model)
        _, spec.criterion = _criterion(importance, work, data, extra)  # measured again, on the clean copy
        spec.names = {m: n for n, m in work.named_modules()}
        walker = _Walker(work, example, spec, time.monotonic() + timeout_s - spent, block_timeout_s)
        walker.failures = failures
        for cname, child in work.named_children():
            walker.visit(cname, child)
    if reconstruct:
        extra["reconstruction"] = _reconstruct(model, work, data, spec.kept)
    work.zero_grad(set_to_none=True)
    work.eval()
    new_out = model_outputs(work, example)
    old_shapes = {k: tuple(v.shape)[lead:] for k, v in out.items()}
    new_shapes = {k: tuple(v.shape)[lead:] for k, v in new_out.items()}
    if new_shapes != old_shapes:
        one = len(old_shapes) == 1
        raise PruningError(f"pruning changed the output shape{'' if one else 's'} "
                           f"{next(iter(old_shapes.values())) if one else old_shapes} -> "
                           f"{next(iter(new_shapes.values())) if one else new_shapes}")
    after = channel_table(work)
    layers = [{"layer": k, "before": before[k], "after": after.get(k)} for k in before if after.get(k) != before[k]]
    if not layers and ratio > 0 and not walker.skipped:
        walker.skipped.append("model: no group could be pruned safely (see failures)")
    mode = "whole" if walker.pruned_blocks == ["model"] else "blockwise"
    record = {"ratio": ratio, "importance": importance, "reconstruct": reconstruct, "scope": scope,
              "round_to": round_to,
              "iterative_steps": iterative_steps, "mode": mode, "layers_changed": len(layers), "layers": layers,
              "skipped": walker.skipped + [f"{f} (not pruned as a whole; its blocks were tried)"
                                           for f in walker.failures],
              "notes": split + walker.notes,
              "pruned_blocks": walker.pruned_blocks if mode == "blockwise" else ["model"],
              "seconds": round(time.monotonic() - t0, 2), **extra}
    if layer_ratios:
        record["layer_ratios"] = dict(layer_ratios)
    return work, record


def _working_copy(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """A copy in eval mode with its chunked CSP blocks split in two convs (same function, prunable halves),
    and a note per block split."""
    work = copy.deepcopy(model).eval()
    return work, [f"{n}: chunked first conv split in two convs, one per half (same function; halves pruned apart)"
                  for n in split_chunked_blocks(work)]


def _criterion(importance: str, work: nn.Module, data, extra: dict):
    """(canonical name, the criterion object), measured on `work` when it measures on data (what it
    measured goes into `extra`); `recon` without calibration inputs falls back to l2."""
    if importance == "recon":
        from edgeopt.techniques.pruning.recon_scores import ReconImportance

        if not inputs_of(data):
            extra["importance_fallback"] = "recon importance needs unlabeled calibration inputs: l2 used instead"
            return "l2", importances().get("l2")()
        criterion = ReconImportance()
    else:
        criterion = importances().get(importance)()
        importance = importances().canonical(importance)
    if measured(criterion):
        extra.update(criterion.measure(work, data))  # raises PruningError early when the data cannot serve
        if criterion.every_step:  # measured again before each step (Taylor's gradients): not kept meanwhile
            work.zero_grad(set_to_none=True)
    return importance, criterion


def _reconstruct(model: nn.Module, work: nn.Module, data, kept: dict) -> dict:
    from edgeopt.techniques.repair.reconstruct import reconstruct

    batches = inputs_of(data)
    if not batches:
        return {"ran": False, "reason": "no calibration data: reconstruction needs a few unlabeled input batches",
                "layers": [], "skipped": []}
    return {"ran": True, **reconstruct(_working_copy(model)[0], work, batches, kept)}


def apply_prune(model: nn.Module, example: torch.Tensor, config, data=None) -> tuple[nn.Module, dict]:
    """Technique entry point (registry): `data` is an edgeopt.inputs.data.Batches of calibration batches."""
    layer_ratios = config.layer_ratios
    if config.sensitivity and not layer_ratios:
        from edgeopt.techniques.pruning.sensitivity import ratios_from_drops

        layer_ratios = ratios_from_drops(config.sensitivity, config.ratio, config.max_layer_ratio)
    if config.latency_target:
        from edgeopt.techniques.pruning.allocate import prune_to_latency

        return prune_to_latency(model, example, config.latency_target, runtime=config.lut_runtime,
                                importance=config.importance, data=data.items if data is not None else None,
                                reconstruct=config.reconstruct, max_layer_ratio=config.max_layer_ratio,
                                round_to=config.round_to, precision=config.lut_precision, batch=config.lut_batch)
    return prune(model, example, ratio=config.ratio, importance=config.importance, scope=config.scope,
                 round_to=config.round_to, iterative_steps=config.iterative_steps,
                 data=data.items if data is not None else None, max_layer_ratio=config.max_layer_ratio,
                 timeout_s=config.timeout_s, layer_ratios=layer_ratios or None, reconstruct=config.reconstruct)
