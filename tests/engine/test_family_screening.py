"""The screening stage of the search, with the fake builder of test_search.py: every family of a screening group
is measured at one common level, the best policy.SCREEN_KEEP are bisected, the others are rejected with the
measured numbers, and the report's decisions and the search summary carry them."""

from test_search import BASE_ACC, RATIOS, FakeBuilder, _by_id, _search
from torch import nn

from edgeopt.decide import policy
from edgeopt.decide.plan import CandidateSpec, Plan
from edgeopt.engine.family_screening import common_probes
from edgeopt.techniques import PruneConfig

CRITERIA = ("l2", "fpgm", "energy", "l1")


def _plan(criteria=CRITERIA, group="prune-criterion", precisions=("fp32",)):
    specs = [CandidateSpec(id=f"original@onnx-{p}", structure="original", format="onnx", precision=p)
             for p in precisions]
    for crit in criteria:
        for r in RATIOS:
            name = f"prune-{crit}{int(r * 100)}"
            specs += [CandidateSpec(id=f"{name}@onnx-{p}", structure=name, format="onnx", precision=p,
                                    steps=[PruneConfig(ratio=r, importance=crit)], family=f"prune-{crit}",
                                    level=r, screen=group) for p in precisions]
    return Plan(candidates=specs, baseline_id=specs[0].id)


def _drops(at30: dict[str, float], rest: float = 0.1) -> dict[str, float]:
    """Drop of every structure: `at30[crit]` at the common level (30 %), `rest` below it, 5 pp above it."""
    out = {}
    for crit in CRITERIA:
        for r in RATIOS:
            out[f"prune-{crit}{int(r * 100)}"] = rest if r < 0.3 else at30.get(crit, rest) if r == 0.3 else 5.0
    return out


def test_screening_keeps_the_best_measured_criteria_and_rejects_the_others_with_numbers(tmp_path):
    assert policy.SCREEN_KEEP == 2  # the numbers below assume it
    builder = FakeBuilder(tmp_path, _drops({"l2": 0.8, "fpgm": 0.5, "energy": 3.1, "l1": 2.0}))
    search = _search(tmp_path, builder, plan=_plan())
    result = search.run()
    c = _by_id(result)
    # one probe per criterion at the common level (the middle of the ladder), then only the kept are bisected
    probes = [b for b in builder.builds if b.endswith("30")]
    assert probes == ["prune-l230", "prune-fpgm30", "prune-energy30", "prune-l130"]
    assert not any(b.startswith(("prune-energy", "prune-l1")) and not b.endswith("30") for b in builder.builds)
    assert builder.builds.count("prune-l230") == 1  # the probe is reused by the bisection, not rebuilt
    assert c["prune-l230@onnx-fp32"].status == "ok"
    # l2 holds 30 %: fpgm, kept too, is bisected beyond it only (a uniform 30 % cut lays out the same channel counts
    # whatever the criterion, so fpgm at 30 % or less could not be faster)
    assert c["prune-fpgm30@onnx-fp32"].reason.startswith(
        "not tried: prunes no larger share of the channels (30%) than prune-l230 (30%)"), c["prune-fpgm30@onnx-fp32"]
    assert {"prune-fpgm40", "prune-fpgm50", "prune-fpgm60"} & set(builder.builds)
    assert "prune-fpgm: 3 level(s) up to 0.3 left out, no faster than prune-l230, which holds the budget" \
        in search.trace
    why = c["prune-energy30@onnx-fp32"].reason
    assert c["prune-energy30@onnx-fp32"].status == "rejected"
    assert why.startswith("criterion screening: energy lost to fpgm: drop 3.10 pp vs 0.50 pp"), why
    assert c["prune-energy10@onnx-fp32"].reason == why  # every level of a screened-out family says why
    assert "l1 lost to fpgm: drop 2.00 pp" in c["prune-l160@onnx-fp32"].reason
    decision = next(d for d in search.decisions if d.technique == "prune_criterion")
    assert decision.decision == "applied"
    for text in ("fpgm 0.50 pp", "l2 0.80 pp", "l1 2.00 pp", "energy 3.10 pp", "kept fpgm, l2"):
        assert text in decision.reason, decision.reason
    summary = result.summary()["screening"]["prune-criterion"]
    assert summary["kept"] == ["prune-fpgm", "prune-l2"] and summary["level"] == 0.3
    assert summary["drop_pp"]["prune-energy"] == 3.1
    assert all(x.status != "pending" for x in c.values())


def test_ties_go_to_the_simpler_family_listed_first(tmp_path):
    builder = FakeBuilder(tmp_path, _drops({"l2": 0.4, "fpgm": 0.4, "energy": 0.4, "l1": 0.4}))
    search = _search(tmp_path, builder, plan=_plan())
    c = _by_id(search.run())
    assert search.screenings[0].kept == ["prune-l2", "prune-fpgm"]
    assert "energy lost to l2" in c["prune-energy30@onnx-fp32"].reason


def test_a_family_that_fails_or_changes_nothing_is_left_out_with_the_reason(tmp_path):
    class Unchanged(FakeBuilder):
        def build(self, start, spec):
            built = super().build(start, spec)
            if spec.structure == "prune-l130":  # the original's layout: the criterion pruned nothing
                built.model = nn.Linear(4, 2)
                built.model.structure = spec.structure
            return built

    builder = Unchanged(tmp_path, _drops({"l2": 0.8, "fpgm": 0.9, "l1": 0.0}),
                        errors={"prune-energy30": RuntimeError("no calibration batches")})
    search = _search(tmp_path, builder, plan=_plan())
    c = _by_id(search.run())
    assert search.screenings[0].kept == ["prune-l2", "prune-fpgm"]  # l1's 0.0 pp is not a win: it did nothing
    failed = c["prune-energy30@onnx-fp32"]
    assert failed.status == "failed" and "could not be built: RuntimeError: no calibration batches" in failed.reason
    assert c["prune-energy50@onnx-fp32"].status == "rejected" and "could not be built" in c[
        "prune-energy50@onnx-fp32"].reason
    assert "l1 changed nothing" in c["prune-l130@onnx-fp32"].reason
    decision = next(d for d in search.decisions if d.technique == "prune_criterion")
    assert "energy could not be built" in decision.reason and "l1 changed nothing" in decision.reason


def test_a_group_with_no_more_families_than_kept_is_bisected_without_screening(tmp_path):
    drops = _drops({"l2": 2.0, "fpgm": 3.0})
    drops["prune-l220"] = 2.0  # l2 holds 10 % only: fpgm is bisected beyond it
    builder = FakeBuilder(tmp_path, drops)
    search = _search(tmp_path, builder, plan=_plan(criteria=("l2", "fpgm")))
    c = _by_id(search.run())
    assert search.screenings == [] and not any(d.technique == "prune_criterion" for d in search.decisions)
    assert c["prune-fpgm20@onnx-fp32"].status == "ok"  # fpgm bisected too, despite its 3 pp at 30 %


def test_the_time_budget_stops_the_screening_and_says_so(tmp_path, monkeypatch):
    from edgeopt.engine import ledger

    clock = [0.0]
    monkeypatch.setattr(ledger.time, "perf_counter", lambda: clock[0])
    builder = FakeBuilder(tmp_path, _drops({}), clock=clock)
    # the original and two probes (10 s each) fit in the search's share of 44 s (a quarter is kept for
    # finishing); a third would end past it, so it is not started
    search = _search(tmp_path, builder, plan=_plan(), time_budget_s=44)
    c = _by_id(search.run())
    assert builder.builds == ["original", "prune-l230", "prune-fpgm30"]
    assert "stopped by the time budget (--time-budget of 44 s" in c["prune-energy30@onnx-fp32"].reason
    assert "the next build would take about 10 s" in c["prune-energy30@onnx-fp32"].reason
    assert clock[0] <= 44 * 0.75
    decision = next(d for d in search.decisions if d.technique == "prune_criterion")
    assert "not screened (search stopped): energy, l1" in decision.reason
    assert all(x.status != "pending" for x in c.values())


def test_the_common_level_is_the_middle_of_the_longest_ladder_and_single_levels_join_it():
    families = {"factorize-tucker": ["t98", "t95", "t90", "t80"], "factorize-tucker-vbmf": ["vbmf"],
                "factorize-cp": ["c98", "c95", "c90", "c80"]}
    levels = {"t98": 0.02, "t95": 0.05, "t90": 0.1, "t80": 0.2, "vbmf": 0.05,
              "c98": 0.02, "c95": 0.05, "c90": 0.1, "c80": 0.2}
    level, probes = common_probes(families, levels.get)
    assert level == 0.05 and probes == {"factorize-tucker": "t95", "factorize-tucker-vbmf": "vbmf",
                                        "factorize-cp": "c95"}


def test_screening_results_are_cached_for_a_rerun(tmp_path):
    from edgeopt.engine.cache import CandidateCache

    drops = _drops({"l2": 0.8, "fpgm": 0.5, "energy": 3.1, "l1": 2.0})
    first = _search(tmp_path, FakeBuilder(tmp_path, drops), plan=_plan())
    first.cache = CandidateCache(tmp_path, enabled=True)
    first.run()
    builder = FakeBuilder(tmp_path, drops)
    again = _search(tmp_path, builder, plan=_plan())
    again.cache = CandidateCache(tmp_path, enabled=True)
    c = _by_id(again.run())
    assert "prune-energy30" not in builder.builds  # its drop came from the cache
    assert "energy lost to fpgm: drop 3.10 pp" in c["prune-energy30@onnx-fp32"].reason
    assert c["original@onnx-fp32"].accuracy == BASE_ACC


def test_a_family_with_its_own_ladder_is_bisected_from_its_screened_level(tmp_path):
    """Reconstruction's ladder differs from the criteria's: its probe (the common 30 %) is not its middle, and the
    bisection starts from that measured level instead of building the middle one as well."""
    plan = _plan(criteria=("l2", "fpgm", "energy"))
    recon = (0.2, 0.3, 0.4, 0.5, 0.6)
    for r in recon:
        name = f"prune-recon{int(r * 100)}"
        plan.candidates.append(CandidateSpec(id=f"{name}@onnx-fp32", structure=name, format="onnx",
                                             family="prune-recon", level=r, screen="prune-criterion",
                                             steps=[PruneConfig(ratio=r, importance="recon", reconstruct=True)]))
    drops = {**_drops({"l2": 0.8, "fpgm": 2.0, "energy": 3.0}),
             **{f"prune-recon{int(r * 100)}": 0.0 if r <= 0.5 else 5.0 for r in recon}}
    builder = FakeBuilder(tmp_path, drops)
    search = _search(tmp_path, builder, plan=plan)
    c = _by_id(search.run())
    assert search.screenings[0].kept == ["prune-recon", "prune-l2"]
    assert [b for b in builder.builds if b.startswith("prune-recon")] == ["prune-recon30", "prune-recon50",
                                                                         "prune-recon60"]
    assert c["prune-recon50@onnx-fp32"].status == "ok"
