"""Levels that cannot give a faster model: channel-pruning levels that remove no larger share of the channels
than a structure another family already holds within the accuracy budget.

A uniform cut (every layer at one ratio, local scope, in one pass) lays out the same channel counts whatever
criterion picks the channels and whatever reconstruction or fine-tuning follows: `prune-l250-ft` runs exactly as
fast as `prune-recon50-ft-48ep`, and a milder ratio keeps more channels in every layer. A global or iterative
schedule at the same ratio removes as many channels in all, spread otherwise. So once a uniform cut at ratio r
on some steps holds the budget, the levels of another family pruning the same steps at a ratio <= r are not
tried: their accuracy could only break a tie. Without this the benchmark Unet screened three criteria at 50 %
(150 s of its 900) after `prune-recon50-ft-48ep` held the budget at 50 %. Levels allocated by a latency table
(`latency_target`) are another measure and are left alone."""

from __future__ import annotations

from edgeopt.decide import policy
from edgeopt.decide.plan import CandidateSpec

LEFT_OUT = "not tried: prunes no larger share of the channels"


def _left_out(search, structure: str) -> bool:
    """Whether an earlier call left the structure out already (its candidates say so)."""
    return all((search.ledger.cands[spec.id].reason or "").startswith(LEFT_OUT)
               for spec in search.ledger.specs[structure])


def cut_of(spec: CandidateSpec) -> tuple[tuple[str, ...], object] | None:
    """(the steps before it, the pruning step) when the structure is one channel pruning on those steps,
    followed by nothing but fine-tuning; None otherwise."""
    at = [i for i, step in enumerate(spec.steps) if step.technique == "prune"]
    if len(at) != 1 or any(step.technique != "fine_tune" for step in spec.steps[at[0] + 1:]):
        return None
    return tuple(step.model_dump_json() for step in spec.steps[:at[0]]), spec.steps[at[0]]


def uniform(prune) -> bool:
    """Whether the cut gives every layer the same ratio in one pass (its channel counts follow from the ratio)."""
    return (prune.scope == "local" and prune.iterative_steps == 1 and prune.layer_ratios is None
            and prune.sensitivity is None and prune.latency_target is None)


def held_cuts(search, family: str | None) -> dict[tuple[str, ...], tuple[float, str]]:
    """Per steps pruned on: (the largest uniform ratio held within the accuracy budget, its structure), from the
    structures outside `family` screened within the budget and finished (a level only screened may yet go
    unfinished: its family's bisection stopped by the time budget)."""
    specs, limit = search.ledger.specs, search.context.max_accuracy_drop + policy.EPS_PP
    held: dict[tuple[str, ...], tuple[float, str]] = {}
    for structure, drop in search.screened.items():
        # a level reached by a climb or a longer training has that level's cut (engine/gradual.py)
        spec = specs[search.reaches.get(structure, structure)][0] if structure in specs else None
        if spec is None or drop is None or drop > limit or (family is not None and spec.family == family):
            continue
        if not any(search.ledger.cands[s.id].status == "ok" for s in specs[structure]):
            continue
        cut = cut_of(spec)
        if cut is not None and uniform(cut[1]) and cut[1].ratio > held.get(cut[0], (0.0, ""))[0]:
            held[cut[0]] = (cut[1].ratio, structure)
    return held


def beyond_held(search, family: str, structures: list[str]) -> list[str]:
    """The levels of `family` (mildest first) that prune a larger share of the channels than any structure of
    another family holding the budget on the same steps; the others are marked "not tried" with why and
    traced."""
    specs, held = search.ledger.specs, held_cuts(search, family)
    kept, left_out = [], []
    for structure in structures:
        if _left_out(search, structure):  # by an earlier call (the family's screening group): said already
            continue
        cut = cut_of(specs[structure][0])
        hold = held.get(cut[0]) if cut is not None and cut[1].latency_target is None else None
        if hold is None or cut[1].ratio > hold[0] + 1e-9:
            kept.append(structure)
            continue
        left_out.append(structure)
        for spec in specs[structure]:
            search.ledger.mark(spec.id, "rejected", (
                f"{LEFT_OUT} ({cut[1].ratio:.0%}) than {hold[1]} ({hold[0]:.0%}), which holds the budget "
                "already: it cannot be faster"))
    if left_out:
        hold = held[cut_of(specs[left_out[0]][0])[0]]
        search.trace.append(f"{family}: {len(left_out)} level(s) up to {specs[left_out[-1]][0].level:g} left out, "
                            f"no faster than {hold[1]}, which holds the budget"
                            + ("" if kept else " (no level beyond it)"))
    return kept
