"""Climbing a family gradually: its next level is cut from the most aggressive level it holds, as that model is,
not from the original.

A fine-tuned level is built from the original: pruned (or its blocks removed), then trained about 300 steps. Once
a level holds the accuracy budget, the next one rebuilt from the original throws that training away, and starts
from a cut that lost far more: the benchmark Unet's `prune-recon50` lost 8.68 pp before fine-tuning and 1.94 after
its 300 steps, while `prune-recon40-ft` held at 0.45. Cut from the level held, the next level removes only the
channels (or blocks) between the two, on a model already trained to run without the rest, and its fine-tuning
continues that training: gradual pruning, the schedule that reaches deep cuts with the least loss, one level per
build (the Unet's 50 % cut from `prune-recon40-ft`: 2.71 pp before fine-tuning, 0.75 after). So a fine-tuned family
that can be climbed probes its mildest level, and once it holds, the search climbs from it (Search._search_family):
the next level's increment (the extra channels, reconstructed on the held model's outputs, or the extra blocks,
re-solved), then the same fine-tuning. The increment before fine-tuning (`...-cut`) is screened too, as the level's
un-fine-tuned twin: where the fine-tuned level misses the budget, it is trained on (engine/train_longer.py) by the
recovery those two measure; where the cut alone holds the budget and its fine-tuning cannot run in the time left
(or loses), the cut is finished itself (the Unet's 60 % cut from its 50 % level lost 0.73 pp, against 8.68 from the
original). A level that holds is finished and the climb goes on from it; one that cannot be rescued ends it.

A family without fine-tuning is bisected as planned (its builds are cheap) and then climbed the same way, by cuts
alone, each reconstructed on the last one's outputs: the Unet's 50 % cut from its 40 % level lost 2.48 pp, 8.68
from the original; ConvNeXt-atto's 50 % 1.20 against 1.93, its third block removed after two 1.61 against 4.35.

A channel increment reaches exactly the layout the level would have from the original (every layer's width as
the level's cut gives it; checked after the build, else the family is bisected as planned): it runs as fast as
that level and is named after it, `<level>-from-<held level>`. A depth increment removes as many more blocks,
chosen on the held model."""

from __future__ import annotations

from edgeopt.decide import policy
from edgeopt.decide.plan import CandidateSpec
from edgeopt.engine.fine_tuned import fine_tuned
from edgeopt.engine.held_levels import cut_of, uniform
from edgeopt.engine.train_longer import train_longer
from edgeopt.report import Decision

TWIN_REASON = ("the cut before fine-tuning: screened to tell what the fine-tuning recovers, finished only where it "
               "holds the budget and the fine-tuned level does not")


def _depth_of(spec: CandidateSpec):
    """The depth step when the structure is one depth pruning (first) followed by nothing but fine-tuning."""
    at = [i for i, st in enumerate(spec.steps) if st.technique == "depth_prune"]
    if len(at) != 1 or at[0] != 0 or any(st.technique != "fine_tune" for st in spec.steps[1:]):
        return None
    return spec.steps[0]


def climbs(spec: CandidateSpec) -> bool:
    """Whether a family of such levels can be climbed: one uniform channel cut of the original, or one depth
    pruning of it, fine-tuned or not."""
    cut = cut_of(spec)
    if cut is not None:
        return not cut[0] and uniform(cut[1])
    return _depth_of(spec) is not None


def amount(spec: CandidateSpec) -> float | None:
    """How much a climbable level removes: its channel cut's ratio, or its depth pruning's blocks."""
    cut = cut_of(spec)
    if cut is not None:
        return cut[1].ratio
    depth = _depth_of(spec)
    return float(depth.blocks) if depth is not None else None


def _kind(spec: CandidateSpec) -> str:
    return "channels" if cut_of(spec) is not None else "depth"


def climb_start(search, structures: list[str]) -> str | None:
    """The most aggressive structure of another family that holds the budget (finished, a candidate ok) and
    that the family `structures` (mildest first, fine-tuned) can climb from: a level of the same kind (a uniform
    channel cut, or a depth pruning) removing less than the family's mildest level. A fine-tuned family climbs
    from it rather than rebuilding its mildest level from the original: the benchmark Unet's
    `prune-recon40-from-prune-recon30` held, which left out `prune-recon40-ft`, and `prune-recon50-ft` rebuilt
    from the original lost 1.94 pp."""
    specs = search.ledger.specs
    first = specs[structures[0]][0]
    kind, floor = _kind(first), amount(first)
    best: tuple[float, str] | None = None
    for structure in specs:
        level = level_of(search, structure)
        spec = specs[level][0]
        if level in structures or not climbs(spec) or _kind(spec) != kind or amount(spec) >= floor:
            continue
        if climbable(search, structure) is not None and (best is None or amount(spec) > best[0]):
            best = (amount(spec), structure)
    return best[1] if best else None


def _next_level(search, structures: list[str], top: str) -> str | None:
    """The family's mildest level removing more than `top` (a level of it, or of its kind from another)."""
    have = amount(search.ledger.specs[level_of(search, top)][0])
    return next((s for s in structures if amount(search.ledger.specs[s][0]) > have + 1e-9), None)


def climbable(search, structure: str | None) -> str | None:
    """The structure, when a climb can start from it: a level of a family that can be climbed, or a structure
    reaching one, built and finished with a candidate that holds."""
    if structure is None or not climbs(search.ledger.specs[level_of(search, structure)][0]):
        return None
    ok = any(search.ledger.cands[s.id].status == "ok" for s in search.ledger.specs[structure])
    return structure if ok and search.builds.ready(structure) is not None else None


def level_of(search, structure: str) -> str:
    """The family level a structure realizes: itself, or the level a climb or a longer training reached."""
    return search.reaches.get(structure, structure)


def climb(search, fam: str, structures: list[str], top: str) -> bool:
    """Climb the family `fam` (its levels `structures`, mildest first) from `top`, a structure holding the budget
    (module doc). Records a `gradual` decision with each step's drop, or why it stopped. False when it could
    not start: no level beyond `top`, or the increment to the next one could not be worked out (nothing built)."""
    limit, start = search.context.max_accuracy_drop + policy.EPS_PP, top
    steps: list[str] = []
    while True:
        nxt = _next_level(search, structures, top)
        if nxt is None:
            return _end(search, fam, start, top, steps, "no level beyond it")
        why = search._stopped_before_build()
        if why:
            return _end(search, fam, start, top, steps, why.removeprefix("not tried: "))
        try:
            widths = target_widths(search, nxt) if cut_of(search.ledger.specs[nxt][0]) is not None else None
            inc = increment(search, top, nxt, widths)
        except Exception as e:  # the increment could not be worked out: the family is left where it is
            _end(search, fam, start, top, steps, f"the increment to {nxt} could not be worked out ({e})")
            return bool(steps)
        twin, tuned = _add(search, top, nxt, inc)
        before = search.screen(twin)
        mismatch = _layout_mismatch(search, twin, widths)
        if mismatch:
            for s in (twin, tuned) if tuned else (twin,):
                _reject(search, s, f"not tried: the increment from {top} {mismatch}")
            _end(search, fam, start, top, steps, f"the increment to {nxt} {mismatch}")
            return bool(steps)
        if before is None:
            why = (search.builds.failure(twin) or "not built").removeprefix("not tried: ")
            if tuned:
                _reject(search, tuned, f"not tried: {why}")
            return _end(search, fam, start, top, steps, f"{twin}: {why}")
        if tuned is None:  # a level without fine-tuning: the cut is the level
            steps.append(f"{twin}: {before:.2f} pp")
            if before > limit:
                _reject(search, twin, f"not tried: PyTorch accuracy drop {before:.2f} pp > budget "
                                      f"{search.context.max_accuracy_drop} pp (screening)")
                return _end(search, fam, start, top, steps, f"{twin} breaks the budget")
            search.finisher.finish(twin)
            search.compressed_finished()
            top = twin
            continue
        drop = search.screen(tuned)
        if drop is not None and drop <= limit:
            _reject(search, twin, f"not tried: {TWIN_REASON}")
            steps.append(f"{tuned}: {before:.2f} pp cut, {drop:.2f} pp fine-tuned")
            search.finisher.finish(tuned)
            search.compressed_finished()
            top = tuned
            continue
        tuned_why = (f"{drop:.2f} pp fine-tuned" if drop is not None else
                     (search.builds.failure(tuned) or "not built").removeprefix("not tried: "))
        if before <= limit:  # the cut holds without fine-tuning (its fine-tuning could not run, or lost)
            _reject(search, tuned, f"not tried: {tuned_why}" if drop is None else
                    f"not tried: PyTorch accuracy drop {drop:.2f} pp, more than {twin}'s {before:.2f} pp")
            steps.append(f"{twin}: {before:.2f} pp, within the budget without fine-tuning ({tuned}: {tuned_why})")
            search.finisher.finish(twin)
            search.compressed_finished()
            top = twin
            continue
        if drop is None:
            _reject(search, twin, f"not tried: {TWIN_REASON}")
            return _end(search, fam, start, top, steps, f"{tuned}: {tuned_why}")
        steps.append(f"{tuned}: {before:.2f} pp cut, {drop:.2f} pp fine-tuned")
        _reject(search, tuned, f"not tried: PyTorch accuracy drop {drop:.2f} pp > budget "
                               f"{search.context.max_accuracy_drop} pp (screening)")
        rescued = train_longer(search, tuned)
        _reject(search, twin, f"not tried: {TWIN_REASON}")
        if rescued is None:
            return _end(search, fam, start, top, steps, f"{tuned} missed the budget, and training it on did not "
                                                        "rescue it")
        steps.append(f"{rescued}: within the budget")
        top = rescued


def increment(search, top: str, level: str, widths: dict[str, int] | None) -> object:
    """The step that takes `top`'s model to the family level `level`: the channels `level`'s cut removes beyond
    `top`'s (per-layer ratios to its exact `widths`), or the blocks it removes beyond `top`'s."""
    specs = search.ledger.specs
    want, have = specs[level][0], specs[level_of(search, top)][0]
    depth = _depth_of(want)
    if depth is not None:
        more = depth.blocks - _depth_of(have).blocks
        if more < 1:
            raise ValueError(f"{level} removes no more blocks than {top}")
        return depth.model_copy(update={"blocks": more})
    from edgeopt.techniques.pruning.model_families import qkv_attention
    from edgeopt.techniques.pruning.prune import channel_table

    model = search.builds.ready(top).model
    # a fused qkv loses whole heads, floor(ratio x heads) of them: its ratio is set half a head above the count
    names = {q: n for n, q in model.named_modules()}
    heads = {names[m.qkv]: m.num_heads for m in qkv_attention(model)}
    ratios = {}
    for name, width in channel_table(model).items():
        goal = widths.get(name, width)
        if goal > width:
            raise ValueError(f"{top} is narrower than {level} at {name} ({width} < {goal} channels)")
        if goal < width and name in heads:
            h = heads[name]
            ratios[name] = round((h - goal * h // width + 0.5) / h, 6)
        elif goal < width:
            ratios[name] = round(1.0 - (goal + 0.5) / width, 6)  # int(width * (1 - r)) == goal, rounding aside
    if not ratios:
        raise ValueError(f"{level} removes no more channels than {top}")
    return cut_of(want)[1].model_copy(update={"ratio": 0.0, "layer_ratios": ratios, "max_layer_ratio": 0.99})


def target_widths(search, level: str) -> dict[str, int]:
    """Every layer's width in the level's cut from the original: read from the level (or its twin, the same
    cut) where it was built, else from a dry run of its cut (`Builder.cut_widths`)."""
    from edgeopt.techniques.pruning.prune import channel_table

    for s in (level, search.base_of.get(level)):
        built = search.builds.ready(s) if s is not None else None
        if built is not None and cut_of(search.ledger.specs[s][0]) is not None:
            return channel_table(built.model)
    return search.builder.cut_widths(cut_of(search.ledger.specs[level][0])[1])


def _add(search, top: str, level: str, inc) -> tuple[str, str | None]:
    """The increment's structures, built on `top`, with the level's candidates (formats, precisions): for a
    fine-tuned level `<level>-from-<the level top reaches>` and its un-fine-tuned twin (`...-cut`), for one
    that is not the cut alone (`<level>-from-...`, no twin)."""
    ledger = search.ledger
    name = f"{level}-from-{level_of(search, top)}"
    tuned = name if fine_tuned(ledger.specs[level][0]) else None
    twin = f"{name}-cut" if tuned else name
    base, last = ledger.specs[top][0].steps, ledger.specs[level][0].steps[-1]
    made = [(twin, [*base, inc], TWIN_REASON if tuned else f"{level} cut from {top}, which holds the budget "
                                                          "(gradual: fewer channels or blocks removed at once)")]
    if tuned:
        made.append((tuned, [*base, inc, last], f"{level} cut from {top}, which holds the budget, and fine-tuned "
                                                "(gradual: the training it had carries on)"))
    for structure, steps, why in made:
        ledger.add_structure([CandidateSpec(
            id=f"{structure}@{s.format}-{s.precision}", structure=structure, format=s.format, precision=s.precision,
            steps=steps, reason=f"{why}; {s.reason.split('; ', 1)[-1]}") for s in ledger.specs[level]])
        search.reaches[structure] = level
    search.builds.base_of[twin] = top
    if tuned:
        search.builds.base_of[tuned] = twin
    search.trace.append(f"gradual: {tuned or twin} on {top}")
    return twin, tuned


def _layout_mismatch(search, twin: str, widths: dict[str, int] | None) -> str | None:
    """Why the channel increment's result is not the level's layout ("reached ..."), None when it is (or when it
    is a depth increment, or was not built)."""
    built = search.builds.ready(twin)
    if built is None or widths is None:
        return None
    from edgeopt.techniques.pruning.prune import channel_table

    got = channel_table(built.model)
    off = [n for n, w in widths.items() if got.get(n, w) != w]
    return (f"reached another layout ({len(off)} layers differ, e.g. {off[0]}: {got[off[0]]} channels, not "
            f"{widths[off[0]]})") if off else None


def _reject(search, structure: str, why: str) -> None:
    for s in search.ledger.specs[structure]:
        search.ledger.mark(s.id, "rejected", why)


def _end(search, fam: str, start: str, top: str, steps: list[str], why: str) -> bool:
    """Record how the climb of `fam` from `start` went: "applied" when it finished a level beyond it; nothing
    when there was no level to climb to. Returns whether anything was built."""
    if not steps and why == "no level beyond it":
        return False
    reason = (f"{fam} climbed from {start}, the level it held: " + "".join(s + "; " for s in steps)
              + f"stopped at {top}: {why}")
    search.decisions.append(Decision(technique="gradual", decision="applied" if top != start else "skipped",
                                     reason=reason))
    search.trace.append(f"gradual: {reason}")
    return True
