"""Channel allocation under a latency budget: per-group widths that keep the most importance for the latency
the lookup table predicts, instead of one ratio for every layer.

Greedy, as NetAdapt (Yang et al. 2018) but over the measured table rather than one measurement per step:
from the full widths, repeatedly take from the group whose next step removes the least importance per
millisecond saved, until the predicted latency meets the budget. Importance is normalised per group (the
fraction of the group's total removed) so that groups of different scales compare. The result is a
`layer_ratios` dict for `prune` (keyed by each group's root layer) and a record of the prediction."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from edgeopt.errors import PruningError, TimeBudgetError
from edgeopt.inputs.feeding import batch_inputs
from edgeopt.inputs.model_io import Inputs
from edgeopt.timeout import deadline_passed

CALIBRATION_RATIO = 0.5  # the pruned copy the table's whole-model fit is measured on: on the grid, far from 1


@dataclass
class Group:
    root: str  # name of the root layer (the key of `layer_ratios`)
    width: int
    outs: list[str]  # layers whose output channels the group cuts
    ins: list[str]  # layers whose input channels it cuts
    loss: list[float]  # loss[k] = normalised importance removed when the k least important channels go


def find_groups(model: nn.Module, example: torch.Tensor, importance) -> list[Group]:
    """Torch-Pruning's groups of the model (boundaries excluded), each with its importance curve, traced on the
    units `prune` cuts: the whole model, or block by block where it cannot be traced whole (prune's
    `traced_blocks`), so that the widths allocated name the groups the pruning then meets."""
    from edgeopt.techniques.pruning.prune import traced_blocks

    names = {m: n for n, m in model.named_modules()}
    ex = Inputs.of(example, model)
    blocks = traced_blocks(model, ex)
    if [b[1] for b in blocks] == [model]:
        try:
            return _block_groups(model, blocks[0][2], names, importance)
        except TimeBudgetError:
            raise
        except Exception:  # prune() then goes block by block: so do the groups
            blocks = traced_blocks(model, ex, whole=False)
    return [g for _, block, args in blocks for g in _block_groups(block, args, names, importance)]


def _block_groups(block: nn.Module, args: tuple | dict, names: dict[nn.Module, str], importance) -> list[Group]:
    """The groups inside one traced block; a group cutting the block's interface (its inputs or outputs) is left
    out, as `prune` leaves it."""
    import torch_pruning as tp

    from edgeopt.techniques.pruning.graph_surgery import _boundary_layers, attention_heads
    from edgeopt.techniques.pruning.model_families import detection_head_outputs

    roots = (nn.Conv2d, nn.Linear)
    # Torch-Pruning calls model(**dict) / model(*list)
    tp_example = args if isinstance(args, dict) else args[0] if len(args) == 1 else list(args)
    dg = tp.DependencyGraph().build_dependency(block, example_inputs=tp_example, verbose=False)
    _, keep, _ = attention_heads(block, names)
    ignored = list(keep) + detection_head_outputs(block)  # a detector's output convs are its contract
    # one walk of the graph for both uses: with the boundary layers ignored too, Torch-Pruning yields the
    # same groups less those with a boundary layer among their cut outputs
    every = []
    for g in dg.get_all_groups(ignored_layers=ignored, root_module_types=roots):
        every.append(g)
        if deadline_passed():  # each group walks the graph: slow on large graphs
            raise TimeBudgetError(f"the time ran out while tracing the pruning groups ({len(every)} traced)")
    bound = set(_boundary_layers(dg, ignored, roots, every))
    groups = []
    for g in every:
        if any(dep.target.module in bound for dep, _ in g if dg.is_out_channel_pruning_fn(dep.handler)):
            continue
        root = g[0][0].target.module
        outs, ins = [], []
        for dep, _ in g:
            mod = dep.target.module
            if not isinstance(mod, roots) or mod not in names:
                continue
            (outs if dg.is_out_channel_pruning_fn(dep.handler) else ins).append(names[mod])
        scores = importance(g)
        if scores is None or root not in names:
            continue
        s = torch.sort(scores.detach().float().clamp_min(0)).values
        total = float(s.sum()) or 1.0
        loss = [0.0] + torch.cumsum(s, 0).div(total).tolist()
        groups.append(Group(names[root], len(s), sorted(set(outs)), sorted(set(ins)), loss))
    return groups


def widths_of(table, groups: list[Group], kept: dict[str, int], touch: dict | None = None
              ) -> dict[str, tuple[int, int]]:
    """(cin, cout) per table layer when each group keeps kept[root] channels (scaled: a flattening Linear's
    inputs shrink with the channels that feed it). `touch`: `layer_groups(table, groups)`, when the caller
    asks for many allocations of the same groups."""
    touch = layer_groups(table, groups) if touch is None else touch
    out: dict[str, tuple[int, int]] = {}
    for name, row in table.layers.items():
        cin, cout = row["cin"], row["cout"]
        by_out, by_in = touch[name]
        if by_out is not None:
            cout = max(1, round(row["cout"] * kept[by_out.root] / by_out.width))
        if by_in is not None:
            cin = max(1, round(row["cin"] * kept[by_in.root] / by_in.width))
        if row["sig"]["kind"] == "dwconv":
            cin = cout = min(cin, cout)
        out[name] = (cin, cout)
    return out


def layer_groups(table, groups: list[Group]) -> dict[str, tuple[Group | None, Group | None]]:
    """Per table layer, the group whose kept channels set its output width and the one that sets its input
    width (the last in `groups` that lists it; None: it keeps that width)."""
    touch = {}
    for name in table.layers:
        outs = [g for g in groups if name in g.outs]
        ins = [g for g in groups if name in g.ins]
        touch[name] = (outs[-1] if outs else None, ins[-1] if ins else None)
    return touch


def allocate(table, groups: list[Group], budget_ms: float, max_layer_ratio: float = 0.9,
             step: float = 1 / 16, round_to: int | None = None) -> tuple[dict[str, float], dict]:
    """Greedy widths under `budget_ms` (predicted). Returns (layer_ratios for prune, record)."""
    if budget_ms <= 0:
        raise PruningError(f"latency budget must be positive, got {budget_ms}")
    if not groups:
        raise PruningError("no prunable channel group to allocate")
    kept = {g.root: g.width for g in groups}
    touch = layer_groups(table, groups)  # the greedy steps predict the whole model thousands of times

    def predict(widths: dict[str, int]) -> float:
        return table.predict(widths_of(table, groups, widths, touch))

    baseline = predict(kept)
    current = baseline
    while current > budget_ms:
        best = None
        for g in groups:
            cand = _next_step(predict, kept, g, current, max(round_to or 1, int(round(g.width * step))),
                              max(1, g.width * (1 - max_layer_ratio)))
            if cand is None:
                continue
            new, ms = cand
            cost = g.loss[g.width - new] - g.loss[g.width - kept[g.root]]
            score = cost / (current - ms)
            if best is None or score < best[0]:
                best = (score, g.root, new, ms)
        if best is None:
            break  # nothing left to remove that the table says is faster
        _, root, kept[root], current = best
    ratios = {g.root: round(1 - kept[g.root] / g.width, 4) for g in groups if kept[g.root] < g.width}
    record = {"budget_ms": round(budget_ms, 4), "baseline_predicted_ms": round(baseline, 4),
              "predicted_ms": round(current, 4), "met": current <= budget_ms,
              "widths": {g.root: [g.width, kept[g.root]] for g in groups}, "runtime": table.runtime,
              "precision": table.precision}
    return ratios, record


def _next_step(predict: Callable[[dict[str, int]], float], kept, g: Group, current: float, k: int, floor: float
               ) -> tuple[int, float] | None:
    """The group's next width that the table says is faster (runtimes run some widths no faster than wider
    ones: those are stepped over), with its predicted latency; None when none is left above the floor."""
    new = kept[g.root] - k
    while new >= floor:
        ms = predict(dict(kept, **{g.root: new}))
        if current - ms > 1e-9:
            return new, ms
        new -= k
    return None


_TABLES: dict[tuple, object] = {}  # the last table built, by model identity and contents


def _table_key(model: nn.Module, example: torch.Tensor, runtime: str, precision: str, threads: int) -> tuple:
    with torch.no_grad():
        digest = tuple(round(float(p.double().sum()), 6) for p in list(model.parameters())[:4])
    n = sum(p.numel() for p in model.parameters())
    return (id(model), n, digest, Inputs.of(example, model).describe(), runtime, precision, threads)


_SPLIT: dict[tuple, nn.Module] = {}


def _prunable_form(model: nn.Module) -> nn.Module:
    """The model as `prune` cuts it: chunked CSP blocks split in two convs (a copy, made once per model), so
    the table, the groups and the widths name the same layers the pruning then meets."""
    from edgeopt.techniques.pruning.model_families import _chunk_block, split_chunked_blocks

    if not any(_chunk_block(m) for m in model.modules()):
        return model
    key = (id(model), sum(p.numel() for p in model.parameters()))
    if key not in _SPLIT:
        import copy

        _SPLIT.clear()
        work = copy.deepcopy(model).eval()
        split_chunked_blocks(work)
        _SPLIT[key] = work
    return _SPLIT[key]


def prune_to_latency(model: nn.Module, example: torch.Tensor, latency_target: float, runtime: str | None = None,
                     importance: str = "l2", data=None, reconstruct: bool = False, table=None,
                     max_layer_ratio: float = 0.9, round_to: int | None = None, threads: int = 1,
                     precision: str = "fp32", batch: int = 1) -> tuple[nn.Module, dict]:
    """Prune to `latency_target` x the layers' time predicted by the table measured on `runtime` at
    `precision` (an INT8 candidate's widths come from the INT8 table: INT8 kernels favour other widths) and
    at `batch` (the served batch: which layers cost the most time changes with it)."""
    from edgeopt.measure.latency_table import RUNTIMES, LatencyTable
    from edgeopt.techniques.pruning.importance import importances, inputs_of
    from edgeopt.techniques.pruning.prune import prune
    from edgeopt.techniques.pruning.recon_scores import ReconImportance

    if not 0.0 < latency_target < 1.0:
        raise PruningError(f"latency target must be a fraction of the baseline in (0, 1), got {latency_target}")
    data = batch_inputs(data, Inputs.of(example, model))
    model = _prunable_form(model)
    if table is None:
        key = (*_table_key(model, example, runtime or RUNTIMES[0], precision, threads), batch)
        if key not in _TABLES:  # each level of a search prunes the same model: one table (and one fit) for all
            _TABLES.clear()
            # the whole model is measured by the calibration below, beside a pruned copy: not twice
            _TABLES[key] = LatencyTable(runtime=key[-4], threads=threads, precision=precision,
                                        batch=batch).build(model, example, whole=False)
        table = _TABLES[key]
    model.eval()
    if importance == "recon" and inputs_of(data):
        imp = ReconImportance()
        imp.measure(model, data)
    else:
        imp = importances().get("l2" if importance == "recon" else importance)()
    groups = find_groups(model, example, imp)
    if table.fit is None:  # the fixed cost no width changes, from the original and a half-width copy
        half, _ = prune(model, example, ratio=CALIBRATION_RATIO, max_layer_ratio=max_layer_ratio)
        table.calibrate([model, half], example)
    # the target is a fraction of the layers' time: the fixed cost no width changes (the fit's offset, noisy
    # on a loaded machine) must not make a target unreachable and drive every layer to the floor
    full_s = table.predict_layers(widths_of(table, groups, {g.root: g.width for g in groups}))
    budget = table.from_sum(latency_target * full_s)
    ratios, rec = allocate(table, groups, budget, max_layer_ratio=max_layer_ratio, round_to=round_to)
    small, record = prune(model, example, ratio=0.0, importance=importance, data=data, layer_ratios=ratios,
                          max_layer_ratio=max_layer_ratio, round_to=round_to, reconstruct=reconstruct)
    record["allocation"] = {**rec, "latency_target": latency_target, "table_measured": table.measured,
                            "table_fit_ms": [round(v, 5) for v in table.fit] if table.fit else None,
                            "table_cache_hits": table.hits, "table_batch": table.batch,
                            "predicted_pruned_ms": round(table.predict_model(small), 4)}
    return small, record
