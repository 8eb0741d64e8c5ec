"""Stacking: a second family's levels applied on top of the fastest structure the search found.

Each family is searched from the original model, to the most aggressive level the accuracy budget allows on its
own. Families of different techniques act on different things: depth pruning removes whole blocks and their
per-call dispatch, channel pruning thins the layers that stay, factorization splits large layers. A winner that
used little of the budget leaves the rest unused (a Unet's two blocks removed lost 0.05 pp of a 1 pp budget, and
its channels were never pruned on top). So, while time remains, the fastest compressed candidate within the
budget (all of them timed afresh, side by side) gives the base structure, and the family of another technique
that was fastest on its own is bisected again on top of it, at its levels up to the one it settled at alone (a
level that broke the budget alone would break it on top of another). Each composite is built from the base's
built model (the base's steps, then the family's), screened, checked and finished like any other structure,
and chosen on the same measurements."""

from __future__ import annotations

from edgeopt.decide import policy
from edgeopt.decide.plan import CandidateSpec
from edgeopt.report import Decision

# steps that follow a structure's own technique and do not make it another one
_SUPPORT_STEPS = frozenset({"fine_tune", "bn_recalibrate"})


def techniques_of(spec: CandidateSpec) -> frozenset[str]:
    """The compression techniques a structure applies (its fine-tuning and BN re-estimation left out)."""
    return frozenset(s.technique for s in spec.steps) - _SUPPORT_STEPS


def ready(search, families: dict[str, list[str]], settled: dict[str, str | None]) -> bool:
    """Whether families of two techniques have each settled at a level within the budget: what stacking
    needs, checked after each family so that it runs before the remaining families spend the time budget."""
    kinds = {techniques_of(search.ledger.specs[level][0]) for fam, level in settled.items()
             if level is not None and fam in families}
    return len(kinds) >= 2


def stack(search, families: dict[str, list[str]], settled: dict[str, str | None]) -> None:
    """Bisect the fastest other-technique family on top of the fastest compressed candidate (module doc).
    `families`: family -> its structures, mildest first; `settled`: family -> the level its own bisection kept.
    Adds the composite structures to the search's ledger, with a `stack` decision saying what was stacked or
    why nothing was."""
    ledger, clock = search.ledger, search.clock
    base_acc = ledger.baseline.accuracy
    if base_acc is None:
        return
    if clock.check():
        _skip(search, clock.reason.removeprefix("not tried: "))
        return
    limit = search.context.max_accuracy_drop + policy.EPS_PP
    ok = [c for c in ledger.cands.values() if c.status == "ok" and c.structure != ledger.original
          and c.accuracy is not None and base_acc - c.accuracy <= limit and c.id in search.finisher.sessions]
    if not ok:
        _skip(search, "no compressed candidate within the accuracy budget to build on")
        return
    search.quick_latency(ok, search.finisher.sessions)
    timed = [c for c in ok if c.latency_ms is not None]
    if not timed:
        _skip(search, "no compressed candidate could be timed")
        return
    best = min(timed, key=lambda c: c.latency_ms.p50)
    base, kinds = best.structure, techniques_of(ledger.specs[best.structure][0])
    options = []
    for fam, level in settled.items():
        if level is None or techniques_of(ledger.specs[level][0]) & kinds or base in families.get(fam, ()):
            continue
        own = [c.latency_ms.p50 for c in timed if c.structure in families[fam]]
        if own:
            options.append((min(own), fam))
    if not options:
        _skip(search, f"no family of another technique than {best.id}'s has a finished candidate within the "
                      "budget on its own")
        return
    _, fam = min(options)
    pairs = [s for s in ledger.specs[base] if ledger.cands[s.id].status == "ok"]
    base_steps = ledger.specs[base][0].steps
    ladder = families[fam][: families[fam].index(settled[fam]) + 1]
    name_of = {level: f"{base}+{level}" for level in ladder}
    for level in ladder:
        own = ledger.specs[level][0]
        ledger.add_structure([CandidateSpec(
            id=f"{name_of[level]}@{s.format}-{s.precision}", structure=name_of[level], format=s.format,
            precision=s.precision, steps=[*base_steps, *own.steps], family=f"{fam} on {base}", level=own.level,
            reason=f"{level} on top of {base} (stacked: {base} was the fastest within budget, "
                   f"{best.accuracy_drop or 0.0:.2f} pp used); {s.reason.split('; ', 1)[-1]}") for s in pairs])
        search.builds.base_of[name_of[level]] = base
    search.decisions.append(Decision(
        technique="stack", decision="applied",
        reason=f"{fam} bisected again on top of {base} ({best.id}: {best.latency_ms.p50:.3f} ms p50, "
               f"{best.accuracy_drop or 0.0:.2f} pp of the {search.context.max_accuracy_drop} pp budget used), at its "
               f"levels up to {settled[fam]}, where it settled alone"))
    search.trace.append(f"stack: {fam} on top of {base}")
    for s in search.bisect_family(f"{fam} on {base}", [name_of[level] for level in ladder]):
        search.finisher.finish(s)


def _skip(search, why: str) -> None:
    search.decisions.append(Decision(technique="stack", decision="skipped", reason=why))
    search.trace.append(f"stack: skipped ({why})")
