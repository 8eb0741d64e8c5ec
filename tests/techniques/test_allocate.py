"""Allocation of channels under a latency budget over a latency table."""

import pytest
import torch
from torch import nn

from edgeopt.errors import PruningError
from edgeopt.techniques.pruning.allocate import Group, allocate, find_groups, widths_of


class _Table:
    """A latency table with known costs: layer "a" costs 1 ms per output channel, "b" 0.1 ms."""

    runtime, precision = "onnxruntime", "fp32"
    layers = {"a": {"sig": {"kind": "conv"}, "cin": 3, "cout": 16},
              "b": {"sig": {"kind": "conv"}, "cin": 16, "cout": 16}}

    def predict(self, widths):
        return widths["a"][1] * 1.0 + widths["b"][1] * 0.1


def _groups():
    flat = [i / 16 for i in range(17)]  # every channel equally important
    return [Group("a", 16, ["a"], ["b"], flat), Group("b", 16, ["b"], [], flat)]


def test_allocation_respects_the_budget_and_takes_from_the_expensive_layer():
    table, groups = _Table(), _groups()
    base = table.predict(widths_of(table, groups, {"a": 16, "b": 16}))
    ratios, rec = allocate(table, groups, 0.6 * base)
    assert rec["met"] and rec["predicted_ms"] <= 0.6 * base
    assert ratios["a"] > ratios.get("b", 0.0)  # equal importance: the expensive channels go first
    assert rec["widths"]["a"][1] < 16


def test_important_channels_are_kept_even_if_expensive():
    table, groups = _Table(), _groups()
    groups[0].loss = [0.0] + [1.0] * 16  # removing any channel of "a" loses everything
    ratios, rec = allocate(table, groups, table.predict({"a": (3, 16), "b": (16, 16)}) - 1.0)
    assert rec["met"] and "a" not in ratios and ratios["b"] > 0


def test_unreachable_budget_is_reported_and_bad_budget_refused():
    table, groups = _Table(), _groups()
    ratios, rec = allocate(table, groups, 0.5, max_layer_ratio=0.5)
    assert not rec["met"] and rec["widths"]["a"][1] >= 8
    with pytest.raises(PruningError):
        allocate(table, groups, 0.0)


def test_groups_of_a_real_model_follow_the_dependency_graph():
    import torch_pruning as tp

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()
    groups = find_groups(model, torch.randn(1, 1, 8, 8), tp.importance.GroupMagnitudeImportance(p=2))
    by = {g.root: g for g in groups}
    assert set(by) == {"0", "3"}  # the classifier's outputs are the model's: not a group
    assert by["0"].ins == ["3"] and by["3"].ins == ["7"]
    assert by["0"].loss[0] == 0.0 and by["0"].loss[-1] == pytest.approx(1.0)


def test_prune_to_latency_end_to_end(tmp_path):
    from edgeopt.measure.latency_table import LatencyTable
    from edgeopt.techniques.pruning.allocate import prune_to_latency

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(16, 3)).eval()
    x = torch.randn(1, 1, 16, 16)
    table = LatencyTable(cache_dir=tmp_path, runs=3).build(model, x, fractions=(1.0, 0.5, 0.25))
    small, rec = prune_to_latency(model, x, 0.7, table=table, data=[torch.randn(8, 1, 16, 16)],
                                  importance="recon", reconstruct=True)
    alloc = rec["allocation"]
    assert alloc["predicted_pruned_ms"] == pytest.approx(alloc["predicted_ms"], rel=0.05)
    assert rec["reconstruction"]["ran"] and small(x).shape == model(x).shape
    widths = {n: m.out_channels for n, m in small.named_modules() if isinstance(m, nn.Conv2d)}
    for root, (_, kept) in alloc["widths"].items():  # the pruned model has the widths allocated
        assert widths[root] == kept


def test_registry_latency_target_and_planner_ladder():
    from edgeopt.config import ModelSummary, make_context
    from edgeopt.decide.plan import plan
    from edgeopt.inputs.data import Batches
    from edgeopt.targets import load_target
    from edgeopt.techniques import TECHNIQUES

    summary = ModelSummary(params=10**6, macs=10**8, input_shape=[1, 3, 64, 64], num_outputs=10,
                           prunable_groups=12, min_channels=64, layers={"conv": 10, "linear": 1})
    local = load_target("x86-avx2").model_copy(update={"detected": False})
    p = plan(make_context(target="x86-avx2"), load_target("x86-avx2"), summary, local, ["onnxruntime"],
             has_calib_data=True)
    lat = [c for c in p.candidates if c.family == "prune-lat"]
    assert sorted({c.steps[0].latency_target for c in lat}) == [0.3, 0.4, 0.5, 0.6, 0.75, 0.9]
    assert all(c.steps[0].lut_runtime == "onnxruntime" for c in lat)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()
    x = torch.randn(1, 1, 8, 8)
    tech = TECHNIQUES.get("prune")
    cfg = lat[0].steps[0]
    small, rec = tech.apply_fn()(model, x, cfg, data=Batches([(torch.randn(8, 1, 8, 8), None)]))
    assert rec["allocation"]["latency_target"] == cfg.latency_target and rec["allocation"]["table_measured"] > 0
    assert small(x).shape == (1, 3)
    # the next level of the search prunes the same model: the table (and its whole-model fit) is reused
    _, rec2 = tech.apply_fn()(model, x, lat[1].steps[0], data=Batches([(torch.randn(8, 1, 8, 8), None)]))
    assert rec2["allocation"]["table_measured"] == rec["allocation"]["table_measured"]
    assert rec2["allocation"]["table_fit_ms"] == rec["allocation"]["table_fit_ms"]


def test_planner_reads_the_int8_table_when_int8_is_measured():
    from dataclasses import replace

    from edgeopt.config import ModelSummary, make_context
    from edgeopt.decide.plan import FORMAT_OF_RUNTIME, plan
    from edgeopt.targets import load_target
    from edgeopt.techniques.planning import PlanningContext
    from edgeopt.techniques.pruning.prune_technique import propose_latency_allocation, table_precision

    summary = ModelSummary(params=10**6, macs=10**8, input_shape=[1, 3, 64, 64], num_outputs=10,
                           prunable_groups=12, min_channels=64, layers={"conv": 10, "linear": 1})
    target = load_target("x86-avx512-vnni")
    ctx = PlanningContext(make_context(target="x86-avx512-vnni"), target, summary, has_calib_data=True,
                          runtimes=("openvino",), pairs=(("openvino", "fp32", ""), ("openvino", "int8", "")),
                          format_of_runtime=FORMAT_OF_RUNTIME, timing_runtime="openvino")
    out = propose_latency_allocation(ctx)
    assert {s.steps[0].lut_precision for s in out.structures} == {"int8"}
    assert "int8 layers" in out.decisions[-1].reason
    # INT8 not measured on this runtime (skipped: no int8 units, no calibration, quantize excluded...): the fp32
    # table decides
    for name, only in (("x86-avx2", None), ("x86-avx512-vnni", ["prune"])):
        here = load_target(name).model_copy(update={"detected": True})
        p = plan(make_context(target=name, techniques=only), here, summary, here, ["openvino"], has_calib_data=True)
        lat = [c for c in p.candidates if c.family == "prune-lat"]
        assert lat and {c.steps[0].lut_precision for c in lat} == {"fp32"}, name
    # the plan's pairs decide
    assert table_precision(replace(ctx, pairs=(("onnx", "fp32", ""), ("onnx", "int8", ""))), "onnxruntime") == "int8"
    assert table_precision(replace(ctx, pairs=(("openvino", "int8", ""),)), "onnxruntime") == "fp32"


def test_group_tracing_stops_at_the_runs_deadline():
    """Torch-Pruning walks the graph once per group (slow on large graphs): past the run's deadline the
    allocation stops with TimeBudgetError instead of running on past a --time-budget."""
    import time

    import torch_pruning as tp

    from edgeopt.errors import TimeBudgetError
    from edgeopt.timeout import run_until

    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()
    imp = tp.importance.GroupMagnitudeImportance(p=2)
    with run_until(time.perf_counter() + 3600):
        assert find_groups(model, torch.randn(1, 1, 8, 8), imp)
    with run_until(time.perf_counter() - 1), pytest.raises(TimeBudgetError, match="tracing the pruning groups"):
        find_groups(model, torch.randn(1, 1, 8, 8), imp)


class PatchMerging(nn.Module):
    """Named like a module Torch-Pruning cannot trace as part of a whole graph: the model holding it is traced
    block by block, as prune() cuts it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        return self.conv(x)


def _blockwise_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1), nn.ReLU()),
        PatchMerging(),
        nn.Sequential(nn.Conv2d(8, 16, 1), nn.ReLU(), nn.Conv2d(16, 8, 1)),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()


def test_groups_are_traced_on_the_blocks_prune_cuts(monkeypatch):
    """A model prune() cannot trace whole (a torchvision detector: tracing SSDlite whole took 238 s) is traced
    block by block: the groups are those inside each block, named by their full names, and the whole graph is
    never traced."""
    import torch_pruning as tp

    model = _blockwise_model()
    traced = []
    build = tp.DependencyGraph.build_dependency

    def spy(self, module, *args, **kwargs):
        traced.append(module)
        return build(self, module, *args, **kwargs)

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", spy)
    groups = find_groups(model, torch.randn(1, 1, 8, 8), tp.importance.GroupMagnitudeImportance(p=2))
    assert model not in traced and traced == [model[0], model[2]]
    by = {g.root: g for g in groups}
    # inside each block the first conv's outputs are cut; the second conv's are the block's interface
    assert set(by) == {"0.0", "2.0"}
    assert by["0.0"].ins == ["0.2"] and by["2.0"].ins == ["2.2"] and by["0.0"].width == 16


def test_latency_allocation_of_a_blockwise_model_prunes_the_widths_it_allocated(tmp_path):
    from edgeopt.measure.latency_table import LatencyTable
    from edgeopt.techniques.pruning.allocate import prune_to_latency

    model, x = _blockwise_model(), torch.randn(1, 1, 8, 8)
    table = LatencyTable(cache_dir=tmp_path, runs=3).build(model, x, fractions=(1.0, 0.5, 0.25))
    small, rec = prune_to_latency(model, x, 0.6, table=table)
    assert rec["mode"] == "blockwise" and small(x).shape == model(x).shape
    widths = {n: m.out_channels for n, m in small.named_modules() if isinstance(m, nn.Conv2d)}
    alloc = rec["allocation"]["widths"]
    assert set(alloc) == {"0.0", "2.0"} and any(kept < width for width, kept in alloc.values())
    for root, (_, kept) in alloc.items():
        assert widths[root] == kept


def test_a_model_whose_whole_graph_fails_is_traced_by_blocks(monkeypatch):
    """Where tracing the whole graph raises, prune() goes block by block: so do the groups."""
    import torch_pruning as tp

    torch.manual_seed(0)
    model = nn.Sequential(nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3)), nn.ReLU(),
                          nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 1))).eval()
    build = tp.DependencyGraph.build_dependency

    def whole_fails(self, module, *args, **kwargs):
        if module is model:
            raise RuntimeError("untraceable op")
        return build(self, module, *args, **kwargs)

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", whole_fails)
    groups = find_groups(model, torch.randn(1, 1, 8, 8), tp.importance.GroupMagnitudeImportance(p=2))
    assert {g.root for g in groups} == {"0.0", "2.0"}


def test_pruning_and_the_tables_calibration_stop_at_the_runs_deadline(tmp_path):
    """The parts of a latency allocation's build that no forecast sees: pruning block by block (18 blocks for
    SSDlite) and the table's calibration on whole models (an NNCF quantization each at INT8: 40 s of a 55-s
    SSDlite build that ran past a 300-s budget) stop past the run's deadline, not a whole build later."""
    import time

    from edgeopt.errors import TimeBudgetError
    from edgeopt.measure.latency_table import LatencyTable
    from edgeopt.techniques.pruning.prune import prune
    from edgeopt.timeout import run_until

    model, x = _blockwise_model(), torch.randn(1, 1, 8, 8)
    with run_until(time.perf_counter() + 3600):
        small, rec = prune(model, x, ratio=0.5)
    assert rec["mode"] == "blockwise" and rec["layers_changed"] > 0
    with run_until(time.perf_counter() - 1), pytest.raises(TimeBudgetError, match="pruning block by block"):
        prune(model, x, ratio=0.5)
    table = LatencyTable(cache_dir=tmp_path, runs=3)
    with run_until(time.perf_counter() - 1), pytest.raises(TimeBudgetError, match="calibrating the onnxruntime"):
        table.calibrate([model, small], x, seconds=0.2)
