"""Layer-level (depth) pruning: remove whole residual blocks, replacing each by the identity its skip
connection already provides.

On CPUs at batch 1 small models are dominated by per-layer dispatch rather than MACs, so dropping a few
blocks can beat thinning every layer. Which blocks go is measured, not assumed: each block is removed on
its own and scored by the accuracy drop on held-out labelled data, or, without labels, by a cheap proxy
(the KL divergence of the truncated model's outputs from the original's); the cheapest go. BatchNorm
statistics are then re-estimated, the dense layers after the removed blocks re-solved by least squares to the
original's outputs where that measurably helps, and the model is fine-tuned from the original when training data
is given.
A model without residual blocks is returned unchanged with the reason."""

from __future__ import annotations

import copy
import operator

import torch
from torch import fx, nn

from edgeopt.errors import PruningError, TimeBudgetError
from edgeopt.inputs.feeding import batch_inputs, run_model
from edgeopt.inputs.hooks import forward_hooks
from edgeopt.inputs.model_io import Inputs, flatten_outputs, per_image_lists
from edgeopt.techniques.pruning.memo import LastMeasurement
from edgeopt.techniques.repair.layer_rows import forward_order
from edgeopt.timeout import deadline_passed

_ADDS = {operator.add, operator.iadd, torch.add}
# element-wise modules and functions that may follow the residual add (the block's output activation)
_AFTER_ADD = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Identity, nn.Dropout)
_AFTER_ADD_FNS = {torch.relu, nn.functional.relu, nn.functional.silu, nn.functional.gelu}


class _OneLevel(fx.Tracer):
    """Trace a block's own forward only: its children stay opaque calls."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return True


def _is_residual(block: nn.Module) -> bool:
    """Whether the block's output is (an activation of) `f(x) + x` with x its own input, the skip possibly
    through an identity module (ConvNeXt's `shortcut`) or a chain of residual adds (a transformer block's
    `x + attn(x)` then `+ mlp(...)`): removing the block leaves that skip, the identity."""
    try:
        graph = _OneLevel().trace(block)
    except Exception:  # data-dependent control flow: not recognised, so not removed
        return False
    mods = dict(block.named_modules())
    nodes = list(graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    if not inputs:
        return False
    x = inputs[0]  # the block's tensor; later placeholders are options (masks, flags)

    def carries_input(node) -> bool:
        """`node` is x itself, reached through identities and residual adds only."""
        while isinstance(node, fx.Node):
            if node is x:
                return True
            if node.op == "call_module" and isinstance(mods.get(node.target), nn.Identity) and node.args:
                node = node.args[0]
            elif node.op == "call_function" and node.target in _ADDS:
                return any(carries_input(a) for a in node.args)
            else:
                return False
        return False

    node = next(n for n in nodes if n.op == "output").args[0]
    while isinstance(node, fx.Node):
        if node.op == "call_function" and node.target in _ADDS:
            return carries_input(node)
        elementwise = (node.op == "call_module" and isinstance(mods.get(node.target), _AFTER_ADD)) or \
            (node.op == "call_function" and node.target in _AFTER_ADD_FNS)
        if not elementwise or not node.args:
            return False
        node = node.args[0]
    return False


def _shapes(model: nn.Module, example: torch.Tensor) -> dict[str, tuple]:
    """(input shape, output shape) of every submodule called with one tensor on the example."""
    names = {m: n for n, m in model.named_modules()}
    seen: dict[str, tuple] = {}

    def hook(mod, args, out):
        if len(args) == 1 and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
            seen.setdefault(names[mod], (tuple(args[0].shape), tuple(out.shape)))

    with forward_hooks((m, hook) for m in model.modules()), torch.no_grad():
        run_model(model, Inputs.of(example, model))
    return seen


def residual_blocks(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the blocks that can be replaced by the identity: residual, same input and output shape,
    called once. Nested residual blocks inside a removable one are not listed separately."""
    shapes = _shapes(model, example)
    found: list[str] = []
    for name, m in model.named_modules():
        if not name or any(name.startswith(f + ".") for f in found):
            continue
        io = shapes.get(name)
        if io and io[0] == io[1] and _is_residual(m):
            found.append(name)
    return found


def _without(model: nn.Module, names: list[str]) -> nn.Module:
    out = copy.deepcopy(model)
    for name in names:
        parent, _, attr = name.rpartition(".")
        setattr(out.get_submodule(parent) if parent else out, attr, nn.Identity())
    return out.eval()


def _items(data, example) -> list:
    items = data.items if hasattr(data, "items") else list(data or [])
    ex = Inputs.of(example)
    if not ex.single:
        return batch_inputs(items, ex)
    return [(b[0], b[1]) if isinstance(b, (tuple, list)) else (b, None) for b in items]


def _gap(out, ref) -> torch.Tensor:
    """How far the outputs moved: KL(original || model) for class logits; for per-image box sets (torchvision's
    detectors, whose box counts follow the weights) one minus their box-level agreement; else the mean relative
    squared error over every output tensor (boxes, dense maps, several heads)."""
    if per_image_lists(ref):
        from edgeopt.measure.detection import box_fidelity

        return torch.tensor(1.0 - box_fidelity(list(out), list(ref)) / 100.0)
    o, r = flatten_outputs(out), flatten_outputs(ref)
    if len(o) == 1 and next(iter(o.values())).dim() == 2:
        a, b = next(iter(o.values())), next(iter(r.values()))
        return nn.functional.kl_div(a.log_softmax(1), b.log_softmax(1), log_target=True, reduction="batchmean")
    return torch.stack([((o[k] - r[k]) ** 2).sum() / (r[k] ** 2).sum().clamp_min(1e-12) for k in r]).mean()


@torch.no_grad()
def _cost(model: nn.Module, reference: list, items: list, labelled: bool) -> float:
    """Accuracy drop in points (labelled data, a classifier) or the output gap to the original."""
    model.eval()
    if labelled:
        from edgeopt.measure.top1 import percent_correct

        return -percent_correct((run_model(model, x), y) for x, y in items)  # negated accuracy: lower is better
    return _mean_gap(model, [x for x, _ in items], reference)


@torch.no_grad()
def _mean_gap(model: nn.Module, batches: list, reference: list) -> float:
    """The mean output gap to the original (`reference`: its outputs on `batches`)."""
    return float(torch.stack([_gap(run_model(model, x), r) for x, r in zip(batches, reference, strict=True)]).mean())


# Samples an output gap is measured on for each block. The gap is continuous, so a few batches rank the blocks as
# all do (the Unet's ten blocks: the same order and the four cheapest within 20 % on 16, 32, 64 and 128 images;
# 3.8 s on 32 against 17.8 s on 128, paid by a search's first depth level). A labelled classifier's cost is a
# count of correct answers: it keeps every sample.
GAP_SAMPLES = 32


def _first_samples(items: list, n: int) -> list:
    """The first batches holding at least n samples (all of them when there are fewer)."""
    out, count = [], 0
    for x, y in items:
        if count >= n:
            break
        out.append((x, y))
        count += len(Inputs.of(x).first)
    return out


_COSTS = LastMeasurement()  # the last model's block costs, for one set of weights and batch objects


def _block_costs(model: nn.Module, found: list[str], items: list, reference: list, labelled: bool
                 ) -> tuple[float, dict[str, float]]:
    """(the model's own cost, each block's added cost when removed alone): one evaluation per block, the
    same at every level of a search (the same model on the same held-out batches), so measured once for
    them all (a Unet's ten blocks: 65 s per level on 2 cores)."""
    hit = _COSTS.of(model, [x for x, _ in items], (tuple(found), labelled))
    if not hit:
        base_cost = _cost(model, reference, items, labelled)
        costs = {}
        for n in found:
            if deadline_passed():  # one evaluation of the held-out batches per block
                raise TimeBudgetError(f"the time ran out while measuring each block's cost ({len(costs)} of "
                                      f"{len(found)})")
            costs[n] = _cost(_without(model, [n]), reference, items, labelled) - base_cost
        hit.update(base=base_cost, costs=costs)
    return hit["base"], hit["costs"]


def depth_prune(model: nn.Module, example: torch.Tensor, data, blocks: int = 1, train_data=None,
                epochs: int = 0, lr: float = 0.01, bn_batches: int = 20, resolve: bool = True
                ) -> tuple[nn.Module, dict]:
    """Return (copy with the `blocks` cheapest residual blocks replaced by the identity, record).
    `data`: held-out batches, labelled for a classifier (cost = measured accuracy drop), else the cost is
    how far the outputs move (KL of class logits; relative error of boxes, dense maps, several heads).
    `resolve`: the dense layers after the first removed block re-solved to the original's outputs
    (`_resolve_after`), kept where that measurably brings the outputs closer."""
    if blocks < 1:
        raise PruningError(f"depth pruning removes at least one block, got blocks={blocks}")
    items = _items(data, example)
    if not items:
        raise PruningError("depth pruning needs a few batches of held-out inputs to measure each block's cost")
    base = copy.deepcopy(model).eval()
    with torch.no_grad():
        first = run_model(base, items[0][0])
    classifier = isinstance(first, torch.Tensor) and first.dim() == 2  # labels mean top-1 only for these
    labelled = classifier and all(y is not None for _, y in items)
    found = residual_blocks(model, example)
    criterion = "accuracy_drop" if labelled else "output_kl" if classifier else "output_error"
    record: dict = {"blocks_found": found, "criterion": criterion, "removed": [], "costs": {}, "skipped": []}
    if not found:
        record["skipped"].append("model: no residual blocks (a block whose output is f(x) + x with the same "
                                 "shape): removing a plain layer would break the network, so nothing removed")
        return base, record
    scored = items if labelled else _first_samples(items, GAP_SAMPLES)
    with torch.no_grad():
        reference = [run_model(base, x) for x, _ in scored]
    base_cost, costs = _block_costs(base, found, scored, reference, labelled)
    record["costs"] = {n: round(c, 4) for n, c in costs.items()}
    if blocks > len(found):
        record["skipped"].append(f"asked for {blocks} blocks, the model has only {len(found)} removable")
        blocks = len(found)
    removed = sorted(found, key=lambda n: costs[n])[:blocks]
    small = _without(model, removed)
    from edgeopt.techniques.repair.bn_recal import recalibrate_bn

    record["bn_recalibrated"] = recalibrate_bn(small, [x for x, _ in items], max_batches=bn_batches)
    if resolve:
        small, record["resolved"] = _resolve_after(base, small, removed, [x for x, _ in items])
    if epochs and train_data is not None:
        from edgeopt.training import fit

        res = fit(small, train_data, teacher=base, epochs=epochs, lr=lr)
        record["fine_tuned"] = {"epochs": res.epochs, "distillation": res.kind}
        small.eval()
    if labelled:
        record["accuracy_before"] = round(-base_cost, 2)
        record["accuracy_after"] = round(-_cost(small, reference, scored, labelled), 2)
    record["removed"] = removed
    return small, record


# The share of the calibration batches a re-solve after removed blocks is not fitted on, to check it there; and
# how much closer to the original's (relative fall of the output gap there) its outputs must come to be kept.
# Without the check a re-solve can lose: DeiT-tiny (digits, 96 px) with its cheapest block removed dropped 0.67 pp
# plain and 3.03 pp re-solved, its gap on the left-out batches unchanged (0.0661 -> 0.0660); with two to four
# blocks removed the gap fell 10-13 % and the drop with it (5.05 -> 4.04, 16.50 -> 10.44 pp), and ConvNeXt-atto's
# fell from 3.03 / 7.41 / 12.12 pp (two / three / four blocks) to 2.02 / 3.03 / 4.04 pp.
RESOLVE_CHECK_SHARE = 0.25
RESOLVE_MIN_GAIN = 0.02


def _dense_after(orig: nn.Module, small: nn.Module, removed: list[str], x) -> list[str]:
    """The dense layers of `small` that the original runs after the first of the `removed` blocks."""
    order = forward_order(orig, x)
    inside = [i for i, n in enumerate(order) if any(n.startswith(r + ".") for r in removed)]
    if not inside:
        return []
    later = set(order[min(inside):])
    return [n for n in forward_order(small, x) if n in later]


def _resolve_after(orig: nn.Module, small: nn.Module, removed: list[str], batches: list
                   ) -> tuple[nn.Module, dict]:
    """Re-solve the dense layers after the removed blocks (repair/reconstruct.py: ridge least squares from the
    smaller network's own activations to the original layer's outputs, forward order). A removed block's
    contribution is missing from every later activation; each later layer refitted to what it produced in the
    original absorbs part of that. Fitted on all but the last RESOLVE_CHECK_SHARE of the batches and kept only
    where the output gap to the original falls there by RESOLVE_MIN_GAIN: what is kept is what was checked
    (solving again on all of them would double the cost: the smp Unet's one solve took 23 s on 2 cores). Returns
    (the model to use, the record)."""
    from edgeopt.techniques.repair.reconstruct import reconstruct

    if len(batches) < 2:
        return small, {"kept": False, "reason": "one calibration batch: none left to check a re-solve on"}
    names = _dense_after(orig, small, removed, batches[0])
    if not names:
        return small, {"kept": False, "reason": "no dense layer runs after the removed blocks"}
    n_fit = min(len(batches) - 1, max(1, round(len(batches) * (1 - RESOLVE_CHECK_SHARE))))
    fit, check = batches[:n_fit], batches[n_fit:]
    with torch.no_grad():
        reference = [run_model(orig, x) for x in check]
    trial = copy.deepcopy(small)
    solved = reconstruct(orig, trial, fit, kept={}, names=names)
    before, after = _mean_gap(small, check, reference), _mean_gap(trial, check, reference)
    record = {"layers": len(names), "solved": len(solved["layers"]), "skipped": solved["skipped"][:5],
              "gap_before": round(before, 5), "gap_after": round(after, 5), "fitted_on_batches": len(fit),
              "checked_on_batches": len(check), "seconds": solved["seconds"]}
    if not after < (1 - RESOLVE_MIN_GAIN) * before:
        return small, {**record, "kept": False, "reason": (
            f"re-solving {len(names)} later layers moved the output gap on {len(check)} batch(es) it was not "
            f"fitted on from {before:.4g} to {after:.4g}: not {100 * RESOLVE_MIN_GAIN:g} % closer")}
    return trial, {**record, "kept": True}


def apply_depth(model: nn.Module, example: torch.Tensor, config, data=None, teacher=None, train_data=None,
                progress=None) -> tuple[nn.Module, dict]:
    """Registry entry: scored on the calibration batches (labelled ones give the measured drop)."""
    return depth_prune(model, example, data, blocks=config.blocks, train_data=train_data,
                       epochs=config.epochs if train_data is not None else 0, lr=config.lr,
                       bn_batches=config.bn_batches, resolve=config.resolve)
