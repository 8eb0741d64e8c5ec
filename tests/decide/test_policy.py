"""decide/policy.py is the one place the decision rules live: its ladders are well-formed, and the planner,
the search, the selection and the verification really read them (changing a value there changes what they
do, with no other literal to update)."""

import ast

import pytest
import torch
from paths import ROOT
from torch import nn

from edgeopt.config import DeployContext, ModelSummary, make_context
from edgeopt.decide import policy
from edgeopt.decide.plan import plan
from edgeopt.decide.select import select
from edgeopt.errors import VerificationError
from edgeopt.formats.base import Session
from edgeopt.formats.verify import verify_session
from edgeopt.report import Candidate, LatencyStats, Report
from edgeopt.targets import load_target

SUMMARY = ModelSummary(params=1_000_000, macs=100_000_000, input_shape=[1, 3, 64, 64], num_outputs=10,
                       prunable_groups=12, min_channels=64, layers={"conv": 10, "linear": 1})
DECIDE = ROOT / "edgeopt" / "decide"


def test_ladders_are_ordered_and_in_range():
    for ratios in policy.RATIOS.values():
        assert list(ratios) == sorted(set(ratios)) and 0 < ratios[0] and ratios[-1] < 1
    for retrain in (False, True):  # retraining allows at least as aggressive a ladder
        for kind in ("tight", "normal", "loose"):
            assert policy.RATIOS[(True, kind)][-1] >= policy.RATIOS[(False, kind)][-1]
        energies = policy.ENERGIES[retrain]
        assert list(energies) == sorted(energies, reverse=True) and 0 < energies[-1] <= energies[0] <= 1
        assert list(policy.SPARSITIES[retrain]) == sorted(policy.SPARSITIES[retrain])
    assert policy.budget_kind(0.5) == "tight" and policy.budget_kind(1.0) == "normal"
    assert policy.budget_kind(2.0) == "loose"
    assert 0 < policy.MARGIN < 1 and policy.MARGIN_LEVELS >= 0


def test_tolerances_get_looser_as_precision_drops():
    order = ["fp32", "fp16", "bf16", "int8"]
    errors = [policy.TOLERANCES[p][0] for p in order]
    agreements = [policy.TOLERANCES[p][1] for p in order]
    assert errors == sorted(errors) and agreements == sorted(agreements, reverse=True)
    assert policy.tolerance("int8+fp32") == policy.TOLERANCES["int8"]
    assert policy.tolerance("fp32") == policy.TOLERANCES["fp32"]


def test_no_ladder_literal_is_left_in_the_decision_modules():
    """The policy's tuples of numbers appear nowhere else in decide/ (they would drift apart)."""
    for path in DECIDE.glob("*.py"):
        if path.name == "policy.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Tuple) and len(node.elts) >= 3:
                assert not all(isinstance(e, ast.Constant) and isinstance(e.value, float) for e in node.elts), (
                    f"{path.name}:{node.lineno}: a ladder of numbers belongs in policy.py")


def _plan():
    local = load_target("x86-amx").model_copy(update={"detected": False})
    return plan(make_context(target="x86-amx"), load_target("x86-amx"), SUMMARY, local, ["onnxruntime"],
                has_calib_data=True)


def test_the_planner_reads_the_ladders_and_margin(monkeypatch):
    monkeypatch.setitem(policy.RATIOS, (False, "normal"), (0.11, 0.22))
    monkeypatch.setattr(policy, "CRITERIA_NO_DATA", ("l1",))
    monkeypatch.setattr(policy, "CRITERIA_INPUTS", ("hrank",))
    monkeypatch.setattr(policy, "DEFAULT_CRITERION", "l1")
    monkeypatch.setattr(policy, "ITERATIVE_STEPS", 5)
    monkeypatch.setattr(policy, "ENERGIES", {False: (0.77,), True: (0.66,)})
    monkeypatch.setattr(policy, "FACTORIZE_METHODS", (("tucker", "energy"),))
    p = _plan()
    naive = [c for c in p.candidates if c.family == "prune-l1"]  # the uniform-ratio family (not recon/latency)
    assert sorted({s.ratio for c in naive for s in c.steps if s.technique == "prune"}) == [0.11, 0.22]
    assert {c.family for c in p.candidates if c.family and c.family.startswith("prune-")} <= {
        "prune-l1", "prune-hrank", "prune-l1-global", "prune-l1-iter5", "prune-recon", "prune-lat"}
    assert {s.iterative_steps for c in p.candidates if c.family == "prune-l1-iter5" for s in c.steps
            if s.technique == "prune"} == {5}
    fac = [s for c in p.candidates for s in c.steps if s.technique == "factorize"]
    assert {s.energy for s in fac} == {0.77} and {s.method for s in fac} == {"tucker"}


def test_screening_level_is_the_bisections_first_probe():
    from edgeopt.engine.bisect import bisect

    for n in range(1, 8):
        levels = [f"l{i}" for i in range(n)]
        probed: list[str] = []
        bisect("f", levels, lambda s, seen=probed: seen.append(s) or 0.0, 1.0, lambda: None, lambda s: None)
        assert probed[0] == levels[policy.screen_index(n)]
    assert policy.SCREEN_KEEP >= 1 and policy.SCREEN_TIE_PP >= 0


def test_channel_rounding_reads_the_min_steps_rule(monkeypatch):
    from edgeopt.techniques.pruning.graph_surgery import rounded_kept

    monkeypatch.setattr(policy, "ROUNDING_MIN_STEPS", 2)
    assert rounded_kept(32, 20, 16) == 32  # two blocks: the whole multiple, rounded up
    monkeypatch.setattr(policy, "ROUNDING_MIN_STEPS", 4)
    assert rounded_kept(32, 20, 16) == 24  # now the multiple must halve: 32 < 4 x 16
    assert "multiples of 16 for x86-amx" in next(d.reason for d in _plan().decisions
                                                   if d.technique == "channel_rounding")


def _cand(cid, p50, size):
    return Candidate(id=cid, runtime="onnxruntime", precision=cid.rsplit("-", 1)[1], status="ok", accuracy=1.0,
                     size_bytes=size, latency_ms=LatencyStats(p50=p50, p90=p50, p99=p50, mean=p50, std=0, n=30))


def test_selection_reads_the_ranking_rule(monkeypatch):
    def chosen():
        report = Report(edgeopt_version="t", context={}, target={}, environment={},
                        baseline=_cand("original@onnx-fp32", 2.0, 4000),
                        candidates=[_cand("a@onnx-fp32", 1.0, 3000), _cand("b@onnx-fp32", 1.5, 1000)])
        select(report, DeployContext())
        return report.chosen

    assert chosen() == "a@onnx-fp32"  # latency goal: fastest first
    monkeypatch.setitem(policy.RANK_BY, "latency", ("size", "p50"))
    assert chosen() == "b@onnx-fp32"


def test_speeds_within_measurement_noise_tie_and_the_more_accurate_wins():
    """Two candidates 1 % apart in p50 (two structures of one shape measure that close) are a tie: the more
    accurate is chosen, with the reason; 5 % apart is a real difference; sizes are exact, never a tie."""
    def report(*cands):
        return Report(edgeopt_version="t", context={}, target={}, environment={},
                      baseline=_cand("original@onnx-fp32", 2.0, 4000), candidates=list(cands))

    fast, close, slower = _cand("a@onnx-fp32", 1.0, 3000), _cand("b@onnx-fp32", 1.01, 3000), \
        _cand("c@onnx-fp32", 1.05, 3000)
    fast.accuracy, close.accuracy, slower.accuracy = 0.97, 0.98, 0.99
    r = report(fast, close, slower)
    select(r, DeployContext(max_accuracy_drop=5.0))
    assert r.chosen == "b@onnx-fp32"
    assert "a@onnx-fp32" in close.reason and "noise" in close.reason and "0.98 vs 0.97" in close.reason
    equal = [_cand("a@onnx-fp32", 1.0, 3000), _cand("b@onnx-fp32", 1.01, 3000)]  # the same accuracy: fastest
    r = report(*equal)
    select(r, DeployContext(max_accuracy_drop=5.0))
    assert r.chosen == "a@onnx-fp32" and equal[0].reason == "chosen: fastest within budget"
    small, smaller = _cand("a@onnx-fp32", 1.0, 1010), _cand("b@onnx-fp32", 1.0, 1000)
    small.accuracy = 0.99
    r = report(small, smaller)
    select(r, DeployContext(goal="size", max_accuracy_drop=5.0))
    assert r.chosen == "b@onnx-fp32"


def _session_and_model(offset: float) -> tuple[Session, nn.Module]:
    """A "runtime" that returns the PyTorch outputs shifted by `offset`."""
    net = nn.Linear(4, 3).eval()
    with torch.no_grad():
        net.weight.fill_(1.0)
        net.bias.fill_(0.0)  # outputs = 4 on ones: relative error = offset / 4

    def run(x):
        with torch.no_grad():
            return net(torch.from_numpy(x)).numpy() + offset

    return Session("fake", "0", "fp32", (1, 4), run, lambda x: (lambda: None)), net


def test_verification_reads_the_tolerances(monkeypatch):
    session, net = _session_and_model(offset=4e-4)
    ones = [torch.ones(2, 4)]
    assert verify_session(session, net, ones[0], "fp32", inputs=ones)["max_rel_error"] == pytest.approx(1e-4, rel=1e-2)
    monkeypatch.setitem(policy.TOLERANCES, "fp32", (1e-5, 1.0))
    with pytest.raises(VerificationError, match="limit 1e-05"):
        verify_session(session, net, ones[0], "fp32", inputs=ones)
