"""The planner's serving rules: what the served batch and streams change in what is proposed, and why."""

import pytest

from edgeopt.config import ModelSummary, make_context
from edgeopt.decide.plan import plan
from edgeopt.decide.serving import (
    COMPUTE_BOUND_BATCH,
    Serving,
    decision,
    depth_pruning,
    latency_rules_out_precisions,
)
from edgeopt.targets import load_target


def test_serving_of_a_context_and_the_batch_its_tables_are_measured_at():
    latency = Serving.of(make_context(goal="latency"))
    assert (latency.batch, latency.table_batch, latency.compute_bound) == (1, 1, False)
    assert "goal latency" in latency.load()
    served = Serving.of(make_context(goal="throughput", serve_batch=32, streams=2))
    assert (served.batch, served.streams, served.table_batch, served.compute_bound) == (32, 2, 32, True)
    assert served.load() == "batch 32, 2 requests in flight (goal throughput)"
    small = Serving.of(make_context(goal="throughput", streams=4))
    assert small.batch == 1 and not small.compute_bound and small.table_batch == 1
    assert not Serving("throughput", COMPUTE_BOUND_BATCH - 1).compute_bound
    assert decision(make_context(goal="latency"), "cpu") is None


@pytest.mark.parametrize("goal,batch,streams,kind,pays,words", [
    ("latency", None, None, "cpu", True, "per-layer dispatch dominates"),
    ("throughput", 32, None, "cpu", False, "shared by the 32 images"),
    ("throughput", None, 4, "cpu", True, "several requests in flight"),
    ("throughput", 32, 2, "gpu", False, "proposed for CPUs"),
    ("size", None, None, "cpu", False, "goal size"),
])
def test_depth_pruning_pays_only_where_per_call_overhead_does(goal, batch, streams, kind, pays, words):
    ok, why = depth_pruning(Serving.of(make_context(goal=goal, serve_batch=batch, streams=streams)), kind)
    assert ok is pays and words in why


@pytest.mark.parametrize("goal,batch,streams,rules_out,words", [
    ("latency", None, None, True, "carry over"),
    ("size", None, None, True, "carry over"),
    ("throughput", 32, None, False, "batch 32, the runtime's choice of requests in flight"),
    ("throughput", None, 4, False, "batch 1, 4 requests in flight"),
])
def test_batch_1_latency_rules_out_precisions_only_when_it_is_the_figure_ranked(goal, batch, streams, rules_out,
                                                                                 words):
    ok, why = latency_rules_out_precisions(Serving.of(make_context(goal=goal, serve_batch=batch, streams=streams)))
    assert ok is rules_out and words in why


def _plan(**ctx):
    local = load_target("x86-avx2").model_copy(update={"detected": False})
    summary = ModelSummary(params=10**6, macs=10**8, input_shape=[1, 3, 64, 64], num_outputs=10,
                           prunable_groups=4, min_channels=64, layers={"conv": 8, "linear": 1})
    p = plan(make_context(target="x86-avx2", **ctx), load_target("x86-avx2"), summary, local,
             ["onnxruntime", "openvino"], has_calib_data=True)
    return p, {d.technique: d for d in p.decisions}


def test_plan_at_a_served_batch_says_why_and_measures_its_tables_at_that_batch():
    p, by = _plan(goal="throughput", serve_batch=32, streams=2)
    assert by["serving"].decision == "applied"
    why = by["serving"].reason
    assert "batch 32, 2 requests in flight" in why and "compute-bound" in why and "INT8 pays" in why
    assert by["depth_prune"].decision == "skipped" and "batch 32" in by["depth_prune"].reason
    assert not any(c.family == "depth_prune" for c in p.candidates)
    assert "images/s grows about as the MACs fall" in by["prune"].reason
    lat = [s for c in p.candidates if c.family == "prune-lat" for s in c.steps if s.technique == "prune"]
    assert lat and {s.lut_batch for s in lat} == {32}
    assert "served batch 32" in by["prune_latency_allocation"].reason


def test_plan_at_batch_1_keeps_depth_pruning_and_batch_1_tables():
    p, by = _plan(goal="latency")
    assert "serving" not in by
    assert by["depth_prune"].decision == "applied" and any(c.family == "depth_prune" for c in p.candidates)
    lat = [s for c in p.candidates if c.family == "prune-lat" for s in c.steps if s.technique == "prune"]
    assert lat and {s.lut_batch for s in lat} == {1}
    assert "dense CPU kernels" in by["prune"].reason
