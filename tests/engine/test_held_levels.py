"""Levels that cannot give a faster model are not tried: once a uniform channel cut at ratio r holds the accuracy
budget (finished), another family's levels pruning the same steps at a ratio <= r are left out with the reason,
and a screening group screens what is left (the benchmark Unet screened three criteria at 50 % for 150 s after
`prune-recon50-ft-48ep` held 50 %)."""

from types import SimpleNamespace

from test_search import RATIOS, FakeBuilder, _by_id, _search

from edgeopt.decide.plan import CandidateSpec, Plan
from edgeopt.engine.held_levels import LEFT_OUT, beyond_held, held_cuts
from edgeopt.techniques import FineTuneConfig, PruneConfig
from edgeopt.techniques.pruning.depth_technique import DepthConfig

CRITERIA = ("l2", "fpgm", "energy")


def _plan():
    specs = [CandidateSpec(id="original@onnx-fp32", structure="original", format="onnx", precision="fp32")]
    families = [("prune-recon", dict(reconstruct=True), None)] + [(f"prune-{c}", dict(importance=c), "prune-criterion")
                                                                   for c in CRITERIA]
    for fam, fields, group in families:
        for r in RATIOS:
            name = f"{fam}{int(r * 100)}"
            specs.append(CandidateSpec(id=f"{name}@onnx-fp32", structure=name, format="onnx", precision="fp32",
                                       steps=[PruneConfig(ratio=r, **fields)], family=fam, level=r, screen=group))
    return Plan(candidates=specs, baseline_id=specs[0].id)


def test_a_screening_group_screens_only_beyond_the_cut_already_held(tmp_path):
    # reconstruction holds 50 %; every criterion would hold up to 60 % (so only speed could tell them apart)
    drops = {f"prune-recon{int(r * 100)}": 0.2 if r <= 0.5 else 3.0 for r in RATIOS}
    drops |= {f"prune-{c}{int(r * 100)}": 0.1 if r < 0.6 else 0.5 for c in CRITERIA for r in RATIOS}
    builder = FakeBuilder(tmp_path, drops)
    search = _search(tmp_path, builder, plan=_plan())
    c = _by_id(search.run())
    assert c["prune-recon50@onnx-fp32"].status == "ok"
    criteria = [b for b in builder.builds if not b.startswith(("original", "prune-recon"))]
    assert criteria and all(b.endswith("60") for b in criteria), builder.builds  # nothing at 50 % or milder
    why = c["prune-l230@onnx-fp32"].reason
    assert why == (f"{LEFT_OUT} (30%) than prune-recon50 (50%), which holds the budget already: it cannot be "
                   "faster"), why
    assert all(c[f"prune-{crit}{int(r * 100)}@onnx-fp32"].reason.startswith(LEFT_OUT)
               for crit in CRITERIA for r in RATIOS if r <= 0.5)
    assert "prune-l2: 5 level(s) up to 0.5 left out, no faster than prune-recon50, which holds the budget" \
        in search.trace
    assert search.screenings[0].level == 0.6  # the group screened where a faster model could still be
    assert all(x.status != "pending" for x in c.values())


def _spec(name, steps, family):
    return CandidateSpec(id=f"{name}@onnx-fp32", structure=name, format="onnx", precision="fp32", steps=steps,
                         family=family, level=0.5)


def _fake_search(specs, screened, ok):
    cands = {s.id: SimpleNamespace(status="ok" if s.structure in ok else "pending", reason="") for s in specs}

    def mark(cid, status, reason):
        cands[cid].status, cands[cid].reason = status, reason

    return SimpleNamespace(ledger=SimpleNamespace(specs={s.structure: [s] for s in specs}, cands=cands, mark=mark),
                           screened=screened, context=SimpleNamespace(max_accuracy_drop=1.0), trace=[], reaches={})


def test_only_a_finished_uniform_cut_on_the_same_steps_holds_a_level():
    tune = FineTuneConfig(epochs=16)
    depth = DepthConfig(blocks=2)
    recon = _spec("recon50-ft-48ep", [PruneConfig(ratio=0.5, reconstruct=True), tune, tune, tune], None)
    global_cut = _spec("global60", [PruneConfig(ratio=0.6, scope="global")], "prune-l2-global")
    screened_only = _spec("fpgm70", [PruneConfig(ratio=0.7, importance="fpgm")], "prune-fpgm")
    over = _spec("taylor80", [PruneConfig(ratio=0.8, importance="taylor")], "prune-taylor")
    l2_50 = _spec("l250-ft", [PruneConfig(ratio=0.5), tune], "prune-l2")
    l2_55 = _spec("l255", [PruneConfig(ratio=0.55)], "prune-l2")
    stacked = _spec("depth2+l240", [depth, PruneConfig(ratio=0.4)], "prune-l2-on-depth")
    lat = _spec("lat40", [PruneConfig(ratio=0.3, latency_target=0.4)], "prune-lat")
    global_40 = _spec("global40", [PruneConfig(ratio=0.4, scope="global")], "prune-l2-global")
    specs = [recon, global_cut, screened_only, over, l2_50, l2_55, stacked, lat, global_40]
    search = _fake_search(specs, {"recon50-ft-48ep": 0.93, "global60": 0.2, "fpgm70": 0.4, "taylor80": 1.5},
                          ok={"recon50-ft-48ep", "global60", "taylor80"})
    # a global cut is not uniform (its channel counts do not follow from the ratio), fpgm70 is not finished,
    # taylor80 breaks the budget: the 50 % reconstruction is what holds
    assert held_cuts(search, "prune-l2") == {(): (0.5, "recon50-ft-48ep")}
    assert beyond_held(search, "prune-l2", ["l250-ft", "l255"]) == ["l255"]  # fine-tuning changes no layout
    assert search.ledger.cands["l250-ft@onnx-fp32"].reason.startswith(LEFT_OUT)
    assert beyond_held(search, "prune-l2-on-depth", ["depth2+l240"]) == ["depth2+l240"]  # other steps pruned
    assert beyond_held(search, "prune-lat", ["lat40"]) == ["lat40"]  # a latency table's widths: another measure
    # a global 40 % cut removes no more channels in all than the uniform 50 % one
    assert beyond_held(search, "prune-l2-global", ["global40"]) == []
    assert beyond_held(search, "prune-l2", ["l250-ft", "l255"]) == ["l255"]  # said once
    assert sum("prune-l2:" in t for t in search.trace) == 1, search.trace
