"""The search's logic with a fake builder: no model is pruned or exported, each level's accuracy drop is set
by the test, so bisection, margin, early stop, time budget, failures and raised errors are checked exactly."""

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch import nn

from edgeopt.config import make_context
from edgeopt.decide.plan import CandidateSpec, Plan
from edgeopt.engine import ledger
from edgeopt.engine.build import Built
from edgeopt.engine.cache import CandidateCache
from edgeopt.engine.search import Search
from edgeopt.errors import BackendMissingError, ConfigError, ExportError
from edgeopt.report import LatencyStats
from edgeopt.techniques import FactorizeConfig, PruneConfig

BASE_ACC = 90.0
RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)


class Progress:
    def stage(self, *a, **k): ...
    def log(self, *a, **k): ...
    def advance(self, *a, **k): ...


@dataclass
class FakeResult:
    path: Path
    size_bytes: int = 1000
    exporter: str = "fake"
    info: dict = field(default_factory=dict)

    def compressed_size_bytes(self) -> int:
        return 900


@dataclass
class FakeSession:
    precision_executed: str
    accuracy: float

    def run(self, x):  # pragma: no cover - the fake builder evaluates without running
        raise AssertionError


class _Layout(nn.Module):
    """A built model of the fake: a parameter of its own width (a distinct layout), no layer whose channels a
    cut could count, so a family is never climbed from it (engine/gradual.py; test_gradual.py builds layouts)."""

    def __init__(self, width: int):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(width))


class FakeBuilder:
    """`drops`: structure -> PyTorch accuracy drop (pp); `errors`: structure -> exception its build raises;
    `export_errors`: candidate id -> exception its export raises; `int8_drops`: extra drop of INT8 twins."""

    def __init__(self, out_dir, drops, errors=None, export_errors=None, int8_drops=None, clock=None, export_s=0.0):
        self.net, self.out_dir = nn.Linear(4, 2), Path(out_dir)
        self.drops, self.errors = drops, errors or {}
        self.export_errors, self.int8_drops = export_errors or {}, int8_drops or {}
        self.clock, self.builds = clock, []
        self.export_s = export_s  # seconds of the fake clock every export "takes"
        self.labelled, self.accuracy_control = True, []

    def build(self, start, spec):
        self.builds.append(spec.structure)
        if self.clock is not None:
            self.clock[0] += 10.0  # every build "takes" 10 s of the fake clock
        if spec.structure in self.errors:
            raise self.errors[spec.structure]
        width = 2 + len(self.builds)  # a distinct channel layout per structure
        model = _Layout(width)
        model.structure = spec.structure
        level = "".join(ch for ch in spec.structure if ch.isdigit())
        return Built(model, [], 10, 1000 - 10 * int(level or 0))  # more aggressive levels: fewer MACs

    def torch_accuracy(self, model):
        return BASE_ACC - self.drops.get(model.structure, 0.0)

    def torch_screen(self, model, floor):
        from edgeopt.engine.build import Screened

        return Screened(self.torch_accuracy(model), 100, 100)

    def export(self, built, spec, max_drop_pp=None, name=None):
        if self.clock is not None:
            self.clock[0] += self.export_s
        if spec.id in self.export_errors:
            raise self.export_errors[spec.id]
        structure = getattr(built.model, "structure", "original")
        acc = BASE_ACC - self.drops.get(structure, 0.0)
        result = FakeResult(self.out_dir / f"{spec.id}.onnx")
        if max_drop_pp is not None:  # accuracy control: one layer back to float recovers the INT8 loss
            self.accuracy_control.append((spec.id, max_drop_pp))
            result.info["accuracy_control"] = {"max_drop_pp": max_drop_pp, "float_layers": ["conv1"]}
        elif spec.precision == "int8":
            acc -= self.int8_drops.get(structure, 0.0)
        return result, FakeSession(spec.precision, acc)

    def evaluate(self, session):
        return session.accuracy, "top1"

    def restore(self, cand, entry):
        return False, None


def _plan(families=("prune",), precisions=("fp32",), qat_formats=(), fmt="onnx"):
    specs = [CandidateSpec(id=f"original@{fmt}-{p}", structure="original", format=fmt, precision=p)
             for p in precisions]
    for fam in families:
        for r in RATIOS:
            name = f"{fam}{int(r * 100)}"
            step = PruneConfig(ratio=r) if fam == "prune" else FactorizeConfig(energy=1 - r)
            specs += [CandidateSpec(id=f"{name}@{fmt}-{p}", structure=name, format=fmt, precision=p, steps=[step],
                                    family=fam, level=r) for p in precisions]
    return Plan(candidates=specs, baseline_id=specs[0].id, qat_formats=list(qat_formats))


def _search(tmp_path, builder, plan=None, t_start=0.0, **ctx):
    return Search(plan=plan or _plan(), context=make_context(**{"max_accuracy_drop": 1.0, **ctx}), builder=builder,
                  base_torch_acc=BASE_ACC, cache=CandidateCache(tmp_path, enabled=False), cache_parts=("t",),
                  progress=Progress(), t_start=t_start, quick_latency=lambda cands, sessions: None)


def _by_id(result):
    return {c.id: c for c in result.candidates}


def test_bisection_settles_on_the_most_aggressive_level_within_budget_plus_margin(tmp_path):
    drops = dict(zip([f"prune{int(r * 100)}" for r in RATIOS], (0.1, 0.3, 0.6, 0.9, 1.5, 3.0), strict=True))
    builder = FakeBuilder(tmp_path, drops)
    # bf16: a reduced precision the probes are not checked at, so a margin level is kept for its loss
    search = _search(tmp_path, builder, plan=_plan(precisions=("fp32", "bf16")))
    result = search.run()
    c = _by_id(result)
    # the original, then log2(7) screenings rather than 6 builds
    assert sorted(builder.builds) == ["original", "prune30", "prune40", "prune50"]
    assert c["prune40@onnx-fp32"].status == "ok"  # settled: drop 0.9 <= 1.0
    assert c["prune30@onnx-fp32"].status == "ok"  # the margin level
    assert "PyTorch accuracy drop 1.50 pp > budget 1.0 pp" in c["prune50@onnx-fp32"].reason
    assert "more aggressive than prune50" in c["prune60@onnx-fp32"].reason
    assert "milder than prune40" in c["prune10@onnx-fp32"].reason
    assert any("bisection kept prune40, margin prune30" in t for t in search.trace)
    # where the time went: every structure built and every candidate finished has its seconds
    summary = result.summary()
    assert set(builder.builds) - {"original"} <= set(summary["build_seconds"])
    assert all(v >= 0 for v in summary["build_seconds"].values())
    assert {"prune40@onnx-fp32", "prune30@onnx-fp32"} <= set(summary["finish_seconds"])


def test_levels_within_budget_dropped_by_the_bisection_say_why(tmp_path):
    drops = {f"prune{int(r * 100)}": r for r in RATIOS}  # every level holds the 1 pp budget
    search = _search(tmp_path, FakeBuilder(tmp_path, drops), plan=_plan(precisions=("fp32", "bf16")))
    c = _by_id(search.run())
    assert c["prune60@onnx-fp32"].status == c["prune50@onnx-fp32"].status == "ok"
    why = c["prune30@onnx-fp32"].reason  # screened (drop 0.30 pp, within budget) but not kept
    assert "> budget" not in why
    assert "within budget in screening (PyTorch drop 0.30 pp)" in why and "prune60" in why


def test_no_margin_level_when_every_candidate_is_fp32(tmp_path):
    """The margin level leaves room for a reduced precision's own loss; with fp32 only, and the settled level
    well inside the budget, it would be exported and measured for nothing (a milder level is never faster)."""
    drops = dict(zip([f"prune{int(r * 100)}" for r in RATIOS], (0.1, 0.2, 0.3, 0.4, 1.5, 3.0), strict=True))
    c = _by_id(_search(tmp_path, FakeBuilder(tmp_path, drops)).run())
    assert c["prune40@onnx-fp32"].status == "ok"
    assert c["prune30@onnx-fp32"].status == "rejected" and "kept the more aggressive prune40" in c[
        "prune30@onnx-fp32"].reason


def test_a_level_near_the_budget_gets_a_milder_fallback_finished(tmp_path):
    """YOLOv8n's prune-recon30 lost 0.69 pp on the selection split and 1.05 pp on the test split, which judges
    the choice: with no milder level finished, the original was shipped. A settled level using more than half
    of the budget keeps the next milder one, even at fp32 only."""
    drops = dict(zip([f"prune{int(r * 100)}" for r in RATIOS], (0.1, 0.3, 0.6, 0.9, 1.5, 3.0), strict=True))
    search = _search(tmp_path, FakeBuilder(tmp_path, drops))
    c = _by_id(search.run())
    assert c["prune40@onnx-fp32"].status == c["prune30@onnx-fp32"].status == "ok"
    assert any("bisection kept prune40, margin prune30" in t and "near the budget" in t for t in search.trace)


def test_early_stop_once_a_budget_is_met_with_margin(tmp_path):
    builder = FakeBuilder(tmp_path, {})
    search = _search(tmp_path, builder, plan=_plan(families=("prune", "factorize")), size_budget_mb=1.0)
    c = _by_id(search.run())
    assert not any(s.startswith("factorize") for s in builder.builds)  # the second family never started
    assert "budget already met with margin" in c["factorize10@onnx-fp32"].reason
    assert search.stopped and "met with margin" in search.stopped


def test_time_budget_stops_the_search(tmp_path, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(ledger.time, "perf_counter", lambda: clock[0])
    builder = FakeBuilder(tmp_path, {}, clock=clock)
    search = _search(tmp_path, builder, plan=_plan(families=("prune", "factorize")), time_budget_s=15)
    c = _by_id(search.run())
    assert len(builder.builds) == 2  # 0 s, 10 s: both under 15 s; then the budget is spent
    assert "stopped by the time budget (--time-budget of 15 s" in c["factorize10@onnx-fp32"].reason
    assert all(x.status != "pending" for x in c.values())


def test_time_budget_spent_before_any_finish_still_offers_the_best_screened_structure(tmp_path, monkeypatch):
    """The budget runs out while the bisection is still building: the structure with the fewest MACs already
    screened within the accuracy budget is exported and measured anyway, one over the budget is not."""
    clock = [0.0]
    monkeypatch.setattr(ledger.time, "perf_counter", lambda: clock[0])
    drops = dict(zip([f"prune{int(r * 100)}" for r in RATIOS], (0.1, 0.3, 0.6, 0.9, 1.5, 3.0), strict=True))
    builder = FakeBuilder(tmp_path, drops, clock=clock)
    search = _search(tmp_path, builder, time_budget_s=25)
    c = _by_id(search.run())
    within = [s for s in builder.builds if s != "original" and drops[s] <= 1.0]
    assert within, builder.builds
    best = max(within, key=lambda s: int(s.removeprefix("prune")))  # the fewest MACs in the fake builder
    assert c[f"{best}@onnx-fp32"].status == "ok"
    assert any("time budget spent: finishing " + best in t for t in search.trace)
    assert all(isinstance(x.reason, str) for x in c.values())  # the report's tables print every reason
    over = [s for s in builder.builds if s != "original" and drops[s] > 1.0]
    assert all(c[f"{s}@onnx-fp32"].status != "ok" for s in over)
    # a compressed candidate finished in time: nothing more is finished after the budget
    clock[0] = 0.0
    builder = FakeBuilder(tmp_path, drops, clock=clock)
    # 40 s of builds: within the search's share of 60 s (the rest is kept for the finish and the measurement)
    search = _search(tmp_path, builder, time_budget_s=60)
    c = _by_id(search.run())
    assert not any("time budget spent" in t for t in search.trace)
    assert sum(x.status == "ok" for x in c.values()) >= 2


def test_a_build_the_time_budget_ends_halfway_is_not_a_failure(tmp_path, monkeypatch):
    """A latency table stopped at the search's deadline (edgeopt/timeout.py: run_until) ends its
    build with TimeBudgetError: the search stops as for any time stop, its candidates are rejected with that
    reason (not failed), and nothing of it is cached as a failure for the next run."""
    from edgeopt.errors import TimeBudgetError
    from edgeopt.timeout import current_deadline

    deadlines = []

    class TableBuilder(FakeBuilder):
        def build(self, start, spec):
            deadlines.append(current_deadline())
            if spec.structure == "factorize30":
                raise TimeBudgetError("the time ran out while measuring the openvino latency table: 40 entries "
                                      "measured, kept on disk for the next run")
            return super().build(start, spec)

    clock = [0.0]
    monkeypatch.setattr(ledger.time, "perf_counter", lambda: clock[0])
    builder = TableBuilder(tmp_path, {}, clock=clock)
    search = _search(tmp_path, builder, plan=_plan(families=("prune", "factorize")), time_budget_s=3600)
    c = _by_id(search.run())
    assert all(d is not None for d in deadlines[1:])  # every build after the baseline has the search's deadline
    why = c["factorize30@onnx-fp32"].reason
    assert c["factorize30@onnx-fp32"].status == "rejected" and why.startswith("not tried: stopped by the time")
    assert "kept on disk for the next run" in why
    assert not any(x.status == "failed" for x in c.values())
    assert search.stopped and "latency table" in search.stopped
    assert "factorize30" not in search.builds.built  # asked again later (in grace), it is built again


def test_failures_are_recorded_not_raised(tmp_path):
    builder = FakeBuilder(tmp_path, {}, errors={"prune30": RuntimeError("boom")},  # the first level screened
                          export_errors={"prune20@onnx-int8": ExportError("int8 export broke")})
    search = _search(tmp_path, builder, plan=_plan(precisions=("fp32", "int8")))
    c = _by_id(search.run())
    assert c["prune30@onnx-fp32"].status == "failed" and "RuntimeError: boom" in c["prune30@onnx-fp32"].reason
    assert c["prune20@onnx-fp32"].status == "ok"  # the bisection settled below the failing level
    assert "could not be built" in c["prune40@onnx-fp32"].reason
    assert c["prune20@onnx-int8"].status == "failed" and "int8 export broke" in c["prune20@onnx-int8"].reason


@pytest.mark.parametrize("error", [ConfigError("prune: invalid ratio"), BackendMissingError("no openvino")])
def test_configuration_and_missing_backend_errors_are_raised(tmp_path, error):
    with pytest.raises(type(error), match=str(error)):
        _search(tmp_path, FakeBuilder(tmp_path, {}, errors={"prune30": error})).run()
    with pytest.raises(type(error)):
        _search(tmp_path, FakeBuilder(tmp_path, {}, export_errors={"original@onnx-fp32": error})).run()


def test_qat_phase_retrains_where_ptq_breaks_the_budget(tmp_path):
    drops = {f"prune{int(r * 100)}": 0.1 for r in RATIOS}
    int8 = {"prune60": 2.0}  # PTQ of the most compressed structure loses 2 pp on top
    search = _search(tmp_path, FakeBuilder(tmp_path, drops, int8_drops=int8),
                     plan=_plan(precisions=("fp32", "int8"), qat_formats=("onnx",)))
    c = _by_id(search.run())
    assert c["prune60@onnx-int8"].status == "ok" and c["prune60@onnx-int8"].accuracy == BASE_ACC - 2.1
    qat = c["prune60-qat@onnx-int8"]
    assert qat.status == "ok" and qat.steps[-1].technique == "qat"
    assert search.base_of["prune60-qat"] == "prune60"
    assert any(d.technique == "qat@onnx" and d.decision == "applied" for d in search.decisions)


def test_openvino_int8_over_budget_is_retried_with_accuracy_control(tmp_path):
    drops = {f"prune{int(r * 100)}": 0.4 for r in RATIOS}
    builder = FakeBuilder(tmp_path, drops, int8_drops={"prune60": 2.0})
    search = _search(tmp_path, builder, plan=_plan(precisions=("fp32", "int8"), fmt="openvino"))
    c = _by_id(search.run())
    # only the INT8 twin that broke the budget, with what the structure left of it (1.0 - 0.4 pp)
    assert builder.accuracy_control == [("prune60@openvino-int8-ac", 0.6)]  # its own artifact
    cand = c["prune60@openvino-int8"]
    assert cand.status == "ok" and cand.accuracy == BASE_ACC - 0.4
    assert cand.accuracy_control["float_layers"] == ["conv1"] and "lost 2.40 pp" in cand.accuracy_control["ptq"]
    why = next(d for d in search.decisions if d.technique == "accuracy_control@prune60@openvino-int8")
    assert why.decision == "applied" and "1 layer(s) in float: conv1" in why.reason
    unlabelled = FakeBuilder(tmp_path, drops, int8_drops={"prune60": 2.0})
    unlabelled.labelled = False  # without labels there is nothing to control accuracy against
    c = _by_id(_search(tmp_path, unlabelled, plan=_plan(precisions=("fp32", "int8"), fmt="openvino")).run())
    assert unlabelled.accuracy_control == [] and c["prune60@openvino-int8"].accuracy == BASE_ACC - 2.4


def test_a_bad_planned_step_is_an_error_at_planning_time():
    with pytest.raises(ConfigError, match="ratio"):
        CandidateSpec(id="x", structure="x", format="onnx", steps=[{"technique": "prune", "ratio": 1.5}])
    spec = CandidateSpec(id="x", structure="x", format="onnx", steps=[{"technique": "kd", "epochs": 3}])
    assert type(spec.steps[0]).__name__ == "FineTuneConfig" and spec.steps[0].epochs == 3


@pytest.mark.slow  # ~20 s of CPU: one OpenVINO export, NNCF PTQ, then NNCF accuracy control
def test_accuracy_control_keeps_layers_in_float_on_a_real_openvino_model(tmp_path):
    """The real builder: INT8 with deliberately bad calibration (inputs 100x too small, so activations
    saturate) breaks a 0 pp budget; NNCF accuracy control reverts layers to float and says which."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    import torch

    from edgeopt.engine.build import Builder
    from edgeopt.inputs.data import Batches, DataSplits

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8 * 16 * 16, 10)).eval()
    xs = [torch.randn(4, 1, 16, 16) for _ in range(8)]
    with torch.no_grad():  # labels = the model's own answers: the original scores 100%
        eval_b = Batches([(x, net(x).argmax(1)) for x in xs])
    calib = Batches([(x * 0.01, None) for x in xs[:4]])
    builder = Builder(net=net, example=xs[0], splits=DataSplits(calib, None, eval_b, "test"), eval_b=eval_b,
                      batch=4, reference=None, out_dir=tmp_path, threads=2)
    specs = [CandidateSpec(id=f"original@openvino-{p}", structure="original", format="openvino", precision=p)
             for p in ("fp32", "int8")]
    search = _search(tmp_path, builder, plan=Plan(candidates=specs, baseline_id=specs[0].id),
                     max_accuracy_drop=0.0)
    search.base_torch_acc = builder.torch_accuracy(net)
    c = _by_id(search.run())
    decision = next(d for d in search.decisions if d.technique.startswith("accuracy_control@"))
    assert decision.decision == "applied" and "PTQ INT8 lost" in decision.reason, decision.reason
    control = c["original@openvino-int8"].accuracy_control
    assert control["float_layers"] and control["max_drop_pp"] == 0.0
    assert c["original@openvino-int8"].accuracy >= c["original@openvino-fp32"].accuracy - 1e-9


def test_a_structure_that_compresses_almost_nothing_is_not_exported(tmp_path):
    """Under policy.MIN_GAIN of the original's MACs and parameters (a factorization that only found the
    classifier head): rejected with the numbers, never exported or measured."""

    class HeadOnly(FakeBuilder):
        def build(self, start, spec):
            b = super().build(start, spec)
            if spec.structure == "prune30":
                b.macs = 999  # 0.1 % fewer MACs, the same parameters
            return b

    builder = HeadOnly(tmp_path, {"prune40": 5.0, "prune50": 5.0, "prune60": 5.0})
    exported = []
    real_export = builder.export
    builder.export = lambda built, spec, **k: (exported.append(spec.id), real_export(built, spec, **k))[1]
    cands = _by_id(_search(tmp_path, builder).run())
    c = cands["prune30@onnx-fp32"]
    assert c.status == "rejected" and "compresses too little" in c.reason and "0.10 % fewer MACs" in c.reason
    assert "prune30@onnx-fp32" not in exported and "original@onnx-fp32" in exported


def test_each_probe_is_checked_at_int8_where_the_plan_measures_it(tmp_path):
    """Every level holds the budget in PyTorch, but INT8 of the two most aggressive breaks it: the bisection
    settles where INT8 holds, from INT8 measured on the runtime, and keeps no margin level."""
    drops = {f"prune{int(r * 100)}": 0.3 for r in RATIOS}
    builder = FakeBuilder(tmp_path, drops, int8_drops={"prune50": 2.0, "prune60": 2.0})
    search = _search(tmp_path, builder, plan=_plan(precisions=("fp32", "int8")))
    c = _by_id(search.run())
    assert c["prune40@onnx-int8"].status == c["prune40@onnx-fp32"].status == "ok"
    assert c["prune50@onnx-int8"].status == "rejected" and "checked in the bisection" in c["prune50@onnx-int8"].reason
    assert c["prune50@onnx-fp32"].status == "rejected" and "2.30 pp > budget" in c["prune50@onnx-fp32"].reason
    assert c["prune30@onnx-int8"].status == "ok"  # a probe on the way, within budget: a candidate like any other
    assert c["prune30@onnx-fp32"].status == "rejected"  # but no margin level is finished at fp32
    assert any(t == "check prune50 at int8: drop 2.30 pp" for t in search.trace)
    assert any("bisection kept prune40" in t and "margin" not in t for t in search.trace)


def test_probes_are_not_checked_at_int8_where_the_originals_int8_already_breaks_the_budget(tmp_path):
    """YOLOv8n lost 2.9 pp at OpenVINO INT8 on the original itself: checking each level there made every level
    break the budget, and the bisection kept none although PyTorch lost 0.7 pp at 30 %. The INT8 check says
    nothing of a structure where the original fails it, so the levels are judged as without it."""
    drops = {f"prune{int(r * 100)}": 0.3 for r in RATIOS}
    builder = FakeBuilder(tmp_path, drops, int8_drops={"original": 2.0, **{s: 2.0 for s in drops}})
    search = _search(tmp_path, builder, plan=_plan(precisions=("fp32", "int8")))
    c = _by_id(search.run())
    assert c["prune60@onnx-fp32"].status == "ok"  # the most aggressive level, judged by PyTorch
    assert not any(t.startswith("check prune") for t in search.trace)


def test_probes_are_not_checked_at_int8_where_the_originals_int8_does_not_lead_its_floats(tmp_path):
    """ConvNeXt-atto's OpenVINO INT8 ran 2.67 ms against BF16's 2.78 on the original: its `depth2` held the
    budget in PyTorch and was dropped for its INT8 drop, though its float candidates held and would have run as
    fast. Where INT8 does not lead by policy.CHECK_INT8_LEAD the levels are judged by their float drop."""
    drops = {f"prune{int(r * 100)}": 0.3 for r in RATIOS}

    builder = FakeBuilder(tmp_path / "tie", drops, int8_drops={"prune50": 2.0, "prune60": 2.0})
    search = _search(tmp_path / "tie", builder, plan=_plan(precisions=("fp32", "int8")))
    search.quick_latency = int8_timed(0.97)  # 3 % faster: not a lead
    c = _by_id(search.run())
    assert c["prune60@onnx-fp32"].status == "ok"  # the most aggressive level, judged by PyTorch
    assert not any(t.startswith("check prune") for t in search.trace)
    assert any(t.startswith("probes not checked at int8 on onnx") for t in search.trace)
    builder = FakeBuilder(tmp_path / "lead", drops, int8_drops={"prune50": 2.0, "prune60": 2.0})
    search = _search(tmp_path / "lead", builder, plan=_plan(precisions=("fp32", "int8")))
    search.quick_latency = int8_timed(0.5)  # twice as fast: INT8 is where a level wins, and it is checked there
    c = _by_id(search.run())
    assert c["prune50@onnx-int8"].status == "rejected" and "checked in the bisection" in c["prune50@onnx-int8"].reason
    assert any(t == "check prune50 at int8: drop 2.30 pp" for t in search.trace)


def test_a_precision_slower_than_a_more_exact_one_on_the_original_is_not_repeated(tmp_path):
    drops = {f"prune{int(r * 100)}": 0.3 for r in RATIOS}
    builder = FakeBuilder(tmp_path, drops)
    exported = []
    export = builder.export
    builder.export = lambda built, spec, **kw: (exported.append(spec.id), export(built, spec, **kw))[1]

    def quick(cands, sessions):  # INT8 measured 2x slower than fp32 on the original
        for cand in cands:
            ms = 2.0 if cand.precision == "int8" else 1.0
            cand.latency_ms = LatencyStats(p50=ms, p90=ms, p99=ms, mean=ms, std=0.0, n=5)

    search = _search(tmp_path, builder, plan=_plan(precisions=("fp32", "int8")))
    search.quick_latency = quick
    c = _by_id(search.run())
    assert c["original@onnx-int8"].status == "ok"  # the original's own INT8 stays measured
    assert [e for e in exported if "int8" in e] == ["original@onnx-int8"]
    assert "cannot win" in c["prune60@onnx-int8"].reason and "2.0x onnx fp32" in c["prune60@onnx-int8"].reason
    assert c["prune60@onnx-fp32"].status == "ok"
    assert any(d.technique == "precision_screen:int8@onnx" for d in search.decisions)
    # a structure the search adds later (a climbed level) is not exported at that precision either
    search.ledger.add(CandidateSpec(id="prune60-from-prune40@onnx-int8", structure="prune60-from-prune40",
                                    format="onnx", precision="int8"))
    search.finisher.finish("prune60-from-prune40")
    assert "cannot win" in search.ledger.cands["prune60-from-prune40@onnx-int8"].reason
    assert [e for e in exported if "int8" in e] == ["original@onnx-int8"]


def test_a_precision_is_ruled_out_only_when_every_fresh_round_agrees(tmp_path):
    """A Unet's OpenVINO INT8 once measured 1.3x slower than ONNX Runtime INT8 in a single quick round and was
    never tried on a pruned structure, though the final interleaved measurement had it fastest. Every round
    re-times all of the original's conversions together; one round that disagrees keeps the precision."""
    drops = {f"prune{int(r * 100)}": 0.3 for r in RATIOS}
    builder = FakeBuilder(tmp_path, drops)
    rounds = []

    def quick(cands, sessions):  # INT8 2x slower in the first round, as fast as fp32 in the second
        rounds.append(sorted(c.id for c in cands))
        for cand in cands:
            ms = 2.0 if cand.precision == "int8" and len(rounds) == 1 else 1.0
            cand.latency_ms = LatencyStats(p50=ms, p90=ms, p99=ms, mean=ms, std=0.0, n=5)

    search = _search(tmp_path, builder, plan=_plan(precisions=("fp32", "int8")))
    search.quick_latency = quick
    c = _by_id(search.run())
    assert "cannot win" not in c["prune60@onnx-int8"].reason
    assert not any(d.technique.startswith("precision_screen") for d in search.decisions)
    originals = ["original@onnx-fp32", "original@onnx-int8"]
    assert rounds[:2] == [originals, originals]  # both re-timed in each round, measured before or not


def test_under_a_served_batch_the_batch1_latency_rules_no_precision_out(tmp_path):
    """Which runtime serves the most images/s at batch 32 is not which answers one image soonest: the same
    2x slower batch-1 INT8 is kept on every structure, and the trace says why."""
    drops = {f"prune{int(r * 100)}": 0.3 for r in RATIOS}
    builder = FakeBuilder(tmp_path, drops)

    def quick(cands, sessions):
        for cand in cands:
            ms = 2.0 if cand.precision == "int8" else 1.0
            cand.latency_ms = LatencyStats(p50=ms, p90=ms, p99=ms, mean=ms, std=0.0, n=5)

    search = _search(tmp_path, builder, plan=_plan(precisions=("fp32", "int8")), goal="throughput", serve_batch=32)
    search.quick_latency = quick
    c = _by_id(search.run())
    assert "cannot win" not in c["prune60@onnx-int8"].reason
    assert not any(d.technique.startswith("precision_screen") for d in search.decisions)
    assert any(t.startswith("precision screen skipped") and "batch 32" in t for t in search.trace)


class EarlyStoppingBuilder(FakeBuilder):
    """Screens as the real builder does on a mean-over-samples metric: a structure under the floor is seen on
    64 of 256 samples only."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.screens: list[str] = []

    def torch_screen(self, model, floor):
        from edgeopt.engine.build import Screened

        self.screens.append(model.structure)
        acc = self.torch_accuracy(model)
        best_whole = (acc * 64 + 100.0 * 192) / 256  # the other 192 samples all right
        return Screened(acc, 64, 256) if best_whole < floor else Screened(acc, 256, 256)


def test_a_screening_stopped_early_says_so_and_is_reused_only_under_the_budget_it_proved(tmp_path):
    # prune50 loses 80 pp: 64 of 256 samples prove it loses at least 90 - (10 * 64 + 100 * 192) / 256 = 12.5 pp
    drops = dict(zip([f"prune{int(r * 100)}" for r in RATIOS], (0.1, 0.3, 0.6, 0.9, 80.0, 90.0), strict=True))
    cache = CandidateCache(tmp_path / "cache", enabled=True)

    def run(budget):
        builder = EarlyStoppingBuilder(tmp_path, drops)
        search = Search(plan=_plan(), context=make_context(max_accuracy_drop=budget), builder=builder,
                        base_torch_acc=BASE_ACC, cache=cache, cache_parts=("t",), progress=Progress(), t_start=0.0,
                        quick_latency=lambda cands, sessions: None)
        return builder, _by_id(search.run())

    builder, c = run(1.0)
    assert "prune50" in builder.screens
    assert "on the first 64 of 256 samples" in c["prune50@onnx-fp32"].reason
    assert "on the first" not in (c["prune30@onnx-fp32"].reason or "")  # screened whole: within the budget
    builder, c = run(5.0)  # a budget the early verdict still proves broken: taken from the cache
    assert "prune50" not in builder.screens and c["prune50@onnx-fp32"].status == "rejected"
    builder, c = run(20.0)  # over 12.5 pp: the 64 samples prove nothing, so it is screened again
    assert "prune50" in builder.screens


def int8_timed(int8_ms: float):
    """A quick latency measurement where every float candidate runs 1 ms and every INT8 one `int8_ms`."""
    def quick(cands, sessions):
        for cand in cands:
            ms = int8_ms if cand.precision == "int8" else 1.0
            cand.latency_ms = LatencyStats(p50=ms, p90=ms, p99=ms, mean=ms, std=0.0, n=5)
    return quick


def _timed(ms_of):
    def quick(cands, sessions):
        for cand in cands:
            ms = ms_of(cand.structure)
            cand.latency_ms = LatencyStats(p50=ms, p90=ms, p99=ms, mean=ms, std=0.0, n=5)
    return quick


def test_the_fastest_structure_gets_another_techniques_family_stacked_on_it(tmp_path):
    """Each family settles alone: prune at 40 % (0.4 pp), factorize at 30 % (0.3 pp). The fastest of them is
    the base, factorize is bisected again on top of it at its levels up to where it settled alone, built from
    the base's model, and the composite that holds the budget is finished like any candidate."""
    drops = {f"prune{int(r * 100)}": r for r in (0.1, 0.2, 0.3, 0.4)}
    drops |= {"prune50": 1.5, "prune60": 3.0, "factorize10": 0.1, "factorize20": 0.2, "factorize30": 0.3,
              "factorize40": 1.2, "factorize50": 2.0, "factorize60": 3.0}
    drops |= {"prune40+factorize10": 0.6, "prune40+factorize20": 0.9, "prune40+factorize30": 1.4}
    builder = FakeBuilder(tmp_path, drops)
    search = _search(tmp_path, builder, plan=_plan(families=("prune", "factorize")))
    search.quick_latency = _timed(lambda s: {"original": 4.0, "prune40": 2.0, "factorize30": 3.0}.get(s, 2.5))
    c = _by_id(search.run())
    assert c["prune40+factorize20@onnx-fp32"].status == "ok"  # the most aggressive composite within budget
    assert c["prune40+factorize30@onnx-fp32"].status == "rejected"
    assert "1.40 pp > budget" in c["prune40+factorize30@onnx-fp32"].reason
    assert "prune40+factorize40@onnx-fp32" not in c  # broke the budget alone: not tried on top either
    assert search.base_of["prune40+factorize20"] == "prune40"  # built from the base's model
    steps = [s.technique for s in c["prune40+factorize20@onnx-fp32"].steps]
    assert steps == ["prune", "factorize"]
    stack = next(d for d in search.decisions if d.technique == "stack")
    assert stack.decision == "applied" and "factorize bisected again on top of prune40" in stack.reason


def test_nothing_is_stacked_without_another_technique_that_held_the_budget(tmp_path):
    drops = {f"prune{int(r * 100)}": r for r in RATIOS}
    search = _search(tmp_path, FakeBuilder(tmp_path, drops), plan=_plan(families=("prune",)))
    search.quick_latency = _timed(lambda s: 1.0)
    c = _by_id(search.run())
    assert not any("+" in cid for cid in c)
    stack = next(d for d in search.decisions if d.technique == "stack")
    assert stack.decision == "skipped" and "another technique" in stack.reason


def _plan_with_fine_tuned_twins(ft_ratios=(0.3, 0.4, 0.5, 0.6, 0.7)):
    """prune10..60 (no retraining) and prune-ft30..70: the same pruning steps, then fine-tuning."""
    from edgeopt.techniques import FineTuneConfig

    plan = _plan()
    specs = list(plan.candidates)
    for r in ft_ratios:
        name = f"prune-ft{int(r * 100)}"
        specs.append(CandidateSpec(id=f"{name}@onnx-fp32", structure=name, format="onnx",
                                   steps=[PruneConfig(ratio=r), FineTuneConfig(epochs=1)], family="prune-ft",
                                   level=r))
    return Plan(candidates=specs, baseline_id=specs[0].id)


class TwinBuilder(FakeBuilder):
    """Records what each structure was built on (the original or another structure's model)."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.started_from: dict[str, str] = {}

    def build(self, start, spec):
        self.started_from[spec.structure] = getattr(start, "structure", "original")
        return super().build(start, spec)


def test_fine_tuning_is_tried_only_beyond_what_the_reconstruction_holds_and_on_its_twins(tmp_path):
    """With retraining allowed, the levels the un-fine-tuned family holds need no fine-tuning (as fast, already
    within the budget): the fine-tuned family is bisected beyond its settled level, each level built on its
    un-fine-tuned twin; a level with no twin (70) is built from the original."""
    drops = {"prune10": 0.1, "prune20": 0.2, "prune30": 0.4, "prune40": 0.9, "prune50": 1.5, "prune60": 3.0,
             "prune-ft50": 0.5, "prune-ft60": 0.8, "prune-ft70": 2.0}
    builder = TwinBuilder(tmp_path, drops)
    search = _search(tmp_path, builder, plan=_plan_with_fine_tuned_twins())
    c = _by_id(search.run())
    assert search.settled["prune"] == "prune40"
    assert search.settled["prune-ft"] == "prune-ft60"
    # no fine-tuning where the reconstruction alone holds: 30 and 40 were never built fine-tuned
    assert "prune-ft30" not in builder.builds and "prune-ft40" not in builder.builds
    why = c["prune-ft40@onnx-fp32"].reason
    assert c["prune-ft40@onnx-fp32"].status == "rejected" and "holds the budget without fine-tuning" in why
    assert builder.started_from["prune-ft60"] == "prune60" and builder.started_from["prune-ft70"] == "original"
    assert c["prune-ft60@onnx-fp32"].status == "ok"
    assert any("bisected beyond prune40" in t for t in search.trace)
    # each fine-tuned build is costly: the mildest level beyond the twins is probed first, not the middle one
    assert [b for b in builder.builds if "-ft" in b][0] == "prune-ft50"


def test_fine_tuning_goes_from_the_mildest_level_when_no_level_holds_without_it(tmp_path):
    drops = {f"prune{int(r * 100)}": 5.0 for r in RATIOS} | {"prune-ft30": 0.2, "prune-ft40": 0.6,
                                                             "prune-ft50": 1.4}
    builder = TwinBuilder(tmp_path, drops)
    search = _search(tmp_path, builder, plan=_plan_with_fine_tuned_twins())
    c = _by_id(search.run())
    assert search.settled["prune"] is None and search.settled["prune-ft"] == "prune-ft40"
    assert builder.started_from["prune-ft40"] == "prune40"  # still built on the twin: its pruning done once
    assert c["prune-ft40@onnx-fp32"].status == "ok"


def test_a_fine_tuned_family_without_twins_probes_its_mildest_level_first(tmp_path):
    from edgeopt.techniques import FineTuneConfig

    specs = [CandidateSpec(id="original@onnx-fp32", structure="original", format="onnx", precision="fp32")]
    for r in (0.3, 0.4, 0.5, 0.6, 0.7):
        specs.append(CandidateSpec(id=f"prune-ft{int(r * 100)}@onnx-fp32", structure=f"prune-ft{int(r * 100)}",
                                   format="onnx", steps=[PruneConfig(ratio=r), FineTuneConfig(epochs=1)],
                                   family="prune-ft", level=r))
    drops = {"prune-ft30": 0.2, "prune-ft40": 0.5, "prune-ft50": 0.9, "prune-ft60": 2.0, "prune-ft70": 4.0}
    builder = TwinBuilder(tmp_path, drops)
    search = _search(tmp_path, builder, plan=Plan(candidates=specs, baseline_id=specs[0].id))
    search.run()
    assert builder.builds[1] == "prune-ft30" and search.settled["prune-ft"] == "prune-ft50"


def test_a_family_without_fine_tuned_twins_is_bisected_as_planned(tmp_path):
    drops = dict(zip([f"prune{int(r * 100)}" for r in RATIOS], (0.1, 0.3, 0.6, 0.9, 1.5, 3.0), strict=True))
    builder = TwinBuilder(tmp_path, drops)
    search = _search(tmp_path, builder, plan=_plan(families=("prune", "factorize")))
    search.run()
    assert not search.base_of and all(v == "original" for v in builder.started_from.values())


def _near_miss_drops(**extra):
    """prune10..40 hold without fine-tuning; prune-ft50, the fine-tuned family's mildest level beyond them,
    misses the budget after its one planned epoch (1.9 pp before fine-tuning, 1.6 after)."""
    return {"prune10": 0.1, "prune20": 0.2, "prune30": 0.4, "prune40": 0.9, "prune50": 1.9, "prune60": 3.0,
            "prune-ft50": 1.6, "prune-ft60": 2.5, "prune-ft70": 4.0, **extra}


def _not_trained_on(tmp_path, builder, plan) -> str:
    """Run the search; assert its near miss was not trained on; return the `train_longer` decision's reason."""
    search = _search(tmp_path, builder, plan=plan)
    search.run()
    assert not [b for b in builder.builds if b.endswith("ep")]
    d = next(d for d in search.decisions if d.technique == "train_longer")
    assert d.decision == "skipped"
    return d.reason


def test_a_near_miss_is_trained_on_while_its_measured_recovery_closes_the_gap(tmp_path):
    builder = TwinBuilder(tmp_path, _near_miss_drops(**{"prune-ft50-2ep": 1.2, "prune-ft50-3ep": 0.8}))
    search = _search(tmp_path, builder, plan=_plan_with_fine_tuned_twins())
    c = _by_id(search.run())
    assert search.settled["prune-ft"] is None
    # each block continues the student the last one left, and the first one within the budget is finished
    assert builder.started_from["prune-ft50-2ep"] == "prune-ft50"
    assert builder.started_from["prune-ft50-3ep"] == "prune-ft50-2ep"
    assert c["prune-ft50-3ep@onnx-fp32"].status == "ok"
    assert c["prune-ft50-2ep@onnx-fp32"].status == "rejected" and "1.20 pp" in c["prune-ft50-2ep@onnx-fp32"].reason
    assert "prune-ft50-4ep" not in builder.builds
    d = next(d for d in search.decisions if d.technique == "train_longer")
    assert d.decision == "applied" and "1.60 pp after 1 epochs, 1.90 pp before" in d.reason
    assert "2 epochs: 1.20 pp; 3 epochs: 0.80 pp" in d.reason


def test_a_rescued_near_miss_has_the_next_level_screened_over_the_budget_trained_on_too(tmp_path):
    """prune settles at 30; prune-ft holds 40 and misses at 50 (1.6 pp) and 60 (2.0 pp). Two epochs rescue
    prune-ft50, so prune-ft60, the next level screened over the budget, is trained on too (its recovery
    measured from its twin, 3.5 pp before fine-tuning) and held: the family's fastest level is chosen from."""
    drops = {"prune10": 0.1, "prune20": 0.2, "prune30": 0.4, "prune40": 1.2, "prune50": 3.0, "prune60": 3.5,
             "prune-ft40": 0.5, "prune-ft50": 1.6, "prune-ft60": 2.0, "prune-ft70": 4.0,
             "prune-ft50-2ep": 0.8, "prune-ft60-2ep": 0.9}
    builder = TwinBuilder(tmp_path, drops)
    search = _search(tmp_path, builder, plan=_plan_with_fine_tuned_twins())
    c = _by_id(search.run())
    assert search.settled["prune-ft"] == "prune-ft40"
    assert c["prune-ft50-2ep@onnx-fp32"].status == "ok" and c["prune-ft60-2ep@onnx-fp32"].status == "ok"
    assert builder.started_from["prune-ft60-2ep"] == "prune-ft60"
    applied = [d.reason for d in search.decisions if d.technique == "train_longer" and d.decision == "applied"]
    assert len(applied) == 2 and applied[1].startswith("prune-ft60 (2.00 pp after 1 epochs, 3.50 pp before)")
    assert "prune-ft70-2ep" not in builder.builds  # never screened: no drop to train on from


def test_a_near_miss_too_far_for_its_recovery_is_not_trained_on(tmp_path):
    builder = TwinBuilder(tmp_path, _near_miss_drops(**{"prune-ft50": 1.8}))  # 0.1 pp recovered, 0.8 pp to go
    assert "3 more such blocks would not close it" in _not_trained_on(tmp_path, builder, _plan_with_fine_tuned_twins())


def test_training_on_stops_at_the_first_block_that_recovers_nothing(tmp_path):
    builder = TwinBuilder(tmp_path, _near_miss_drops(**{"prune-ft50-2ep": 1.6}))
    search = _search(tmp_path, builder, plan=_plan_with_fine_tuned_twins())
    c = _by_id(search.run())
    assert "prune-ft50-3ep" not in builder.builds
    assert c["prune-ft50-2ep@onnx-fp32"].status == "rejected"
    d = next(d for d in search.decisions if d.technique == "train_longer")
    assert d.decision == "rejected" and "recovered nothing" in d.reason


def _plan_fine_tuned_only():
    """prune-ft30..50 and factorize: a fine-tuned family with no un-fine-tuned twins, searched first."""
    from edgeopt.techniques import FineTuneConfig

    specs = [CandidateSpec(id="original@onnx-fp32", structure="original", format="onnx", precision="fp32")]
    for r in (0.3, 0.4, 0.5):
        specs.append(CandidateSpec(id=f"prune-ft{int(r * 100)}@onnx-fp32", structure=f"prune-ft{int(r * 100)}",
                                   format="onnx", steps=[PruneConfig(ratio=r), FineTuneConfig(epochs=1)],
                                   family="prune-ft", level=r))
    specs += [s for s in _plan(families=("factorize",)).candidates if s.structure != "original"]
    return Plan(candidates=specs, baseline_id=specs[0].id)


def test_a_near_miss_with_no_twin_gets_one_block_on_trial_after_the_other_families(tmp_path):
    builder = TwinBuilder(tmp_path, {"prune-ft30": 0.5, "prune-ft40": 1.6, "prune-ft50": 3.0,
                                     "prune-ft40-2ep": 1.3, "prune-ft40-3ep": 0.9})
    search = _search(tmp_path, builder, plan=_plan_fine_tuned_only())
    c = _by_id(search.run())
    # tried on the time the other families left: after every factorize level the search built
    assert builder.builds.index("prune-ft40-2ep") > max(builder.builds.index(b) for b in builder.builds
                                                        if b.startswith("factorize"))
    assert c["prune-ft40-3ep@onnx-fp32"].status == "ok"
    d = next(d for d in search.decisions if d.technique == "train_longer")
    assert d.decision == "applied" and "one block on trial" in d.reason and "3 epochs: 0.90 pp" in d.reason


def test_a_near_miss_with_no_twin_more_than_a_budget_away_is_not_trained_on(tmp_path):
    builder = TwinBuilder(tmp_path, {"prune-ft30": 0.5, "prune-ft40": 2.5, "prune-ft50": 3.0})
    assert "more than the budget itself" in _not_trained_on(tmp_path, builder, _plan_fine_tuned_only())


class PartialNearMissBuilder(TwinBuilder):
    """prune-ft50's screening stops early on 64 of 256 samples reading 1.6 pp; on all of them it loses 1.9 pp,
    as much as its twin before fine-tuning."""

    def torch_screen(self, model, floor):
        from edgeopt.engine.build import Screened

        if model.structure == "prune-ft50":
            return Screened(BASE_ACC - 1.6, 64, 256)
        return super().torch_screen(model, floor)


def test_the_recovery_is_told_by_drops_on_the_whole_split_not_an_early_stopped_screening(tmp_path):
    builder = PartialNearMissBuilder(tmp_path, _near_miss_drops(**{"prune-ft50": 1.9}))
    search = _search(tmp_path, builder, plan=_plan_with_fine_tuned_twins())
    search.run()
    assert search.screened["prune-ft50"] == 1.9 and "prune-ft50" not in search.partial
    assert not [b for b in builder.builds if b.endswith("ep")]
    d = next(d for d in search.decisions if d.technique == "train_longer")
    assert d.decision == "skipped" and "1.90 pp after 1 epochs" in d.reason and "recovered nothing" in d.reason


class UnchangedFineTuningBuilder(TwinBuilder):
    """Every fine-tuning keeps the model as it came (it lowered the held-out score), as the real one records."""

    def build(self, start, spec):
        built = super().build(start, spec)
        if spec.steps and spec.steps[-1].technique == "fine_tune":
            built.records = [{"technique": "fine_tune", "epochs": 0, "kept_unchanged": "it scored lower"}]
        return built


def test_a_near_miss_whose_fine_tuning_was_kept_unchanged_is_not_trained_on(tmp_path):
    builder = UnchangedFineTuningBuilder(tmp_path, _near_miss_drops())
    assert "left it unchanged (it scored lower)" in _not_trained_on(tmp_path, builder, _plan_with_fine_tuned_twins())


class SameLayoutBuilder(TwinBuilder):
    """prune-ft50 comes out with prune40's channel layout (another criterion cut the same channels' count)."""

    def build(self, start, spec):
        built = super().build(start, spec)
        if spec.structure in ("prune40", "prune-ft50"):
            built.model = nn.Linear(4, 99)
            built.model.structure = spec.structure
        return built


def test_a_near_miss_with_the_layout_of_a_level_that_holds_is_not_trained_on(tmp_path):
    builder = SameLayoutBuilder(tmp_path, _near_miss_drops())
    assert "same channel layout as prune40" in _not_trained_on(tmp_path, builder, _plan_with_fine_tuned_twins())


class ShortenedBlockBuilder(TwinBuilder):
    """The second training-on block's fine-tuning ran 150 of its 300 planned steps, to end within the time."""

    def build(self, start, spec):
        built = super().build(start, spec)
        if spec.structure == "prune-ft50-3ep":
            built.records = [{"technique": "fine_tune", "epochs": 1, "steps": 150, "planned_steps": 300,
                              "shortened": "150 of its 300 planned steps, to end within the time left"}]
        return built


def test_a_training_on_block_shortened_to_fit_says_so_in_the_decision(tmp_path):
    """A block named for the epochs it was planned to reach that ran fewer steps must not read as the whole."""
    builder = ShortenedBlockBuilder(tmp_path, _near_miss_drops(**{"prune-ft50-2ep": 1.2, "prune-ft50-3ep": 0.8}))
    search = _search(tmp_path, builder, plan=_plan_with_fine_tuned_twins())
    search.run()
    d = next(d for d in search.decisions if d.technique == "train_longer")
    assert "2 epochs: 1.20 pp; 3 epochs, its last block shortened to 150 of its 300 planned steps: 0.80 pp" \
        in d.reason, d.reason
