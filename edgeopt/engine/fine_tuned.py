"""Fine-tuned families: where a family's every level ends with fine-tuning, a build trains (about 300 steps: 85-120 s
on 2 cores for the benchmark's classifiers, 225-320 s for its Unet and YOLOv8n, against 5-30 s for a
reconstruction), so a time budget affords one or two of them and the search spends them where they can pay:

- levels with un-fine-tuned twins (the same steps without the final fine-tuning, in a family bisected before)
  are built on their twins, the pruning and reconstruction done once, and only the levels beyond the one the
  twins settled at are bisected: up to it a twin is as fast and already holds the budget without retraining;
- the bisection probes the mildest level left first, not the middle one (the middle probes that ran lost
  5.8-6.9 pp: YOLOv8n's prune-recon50-ft, DeiT's depth3-ft).

Both rules read one predicate, `fine_tuned`. A fine-tuning that cannot end before the search's deadline is
shortened to the steps that can, leaving time to screen and finish it, when they are at least half of it, else it
stops seconds in (training/loop.py) and the builds start no other with less time left (engine/ledger.py: Builds).
A shortened build is not the structure its name describes: it is measured and may be chosen in this run, but it is
never cached as the structure (`shortened`), so a run with more time trains it whole."""

from __future__ import annotations

from edgeopt.decide.plan import CandidateSpec


def fine_tuned(spec: CandidateSpec) -> bool:
    """Whether the structure's last step fine-tunes it (its build trains: the costly kind)."""
    return bool(spec.steps) and spec.steps[-1].technique == "fine_tune"


def shortened(records: list[dict]) -> str | None:
    """Why a build's fine-tuning ran fewer steps than planned (to end within the time left), when it did."""
    return next((r["shortened"] for r in records if r.get("technique") == "fine_tune" and r.get("shortened")),
                None)


def first_probe(specs: dict[str, list[CandidateSpec]], structures: list[str], screened: dict) -> int | None:
    """The index of the level the bisection of `structures` (mildest first) probes first: a level already
    screened (by a family screening), else the mildest one of a fine-tuned family; None: the middle one."""
    first = next((i for i, s in enumerate(structures) if s in screened), None)
    if first is None and all(fine_tuned(specs[s][0]) for s in structures):
        return 0
    return first


def beyond_twins(search, fam: str, structures: list[str]) -> list[str]:
    """The levels of family `fam` (mildest first) left to bisect once its twins are known (module doc); the
    others are marked with why. Sets `search.builds.base_of` for every level with a twin."""
    specs = search.ledger.specs
    by_steps = {tuple(st.model_dump_json() for st in sp[0].steps): name for name, sp in specs.items()}
    twin_of = {}
    for s in structures:
        if not fine_tuned(specs[s][0]):
            return structures
        twin = by_steps.get(tuple(st.model_dump_json() for st in specs[s][0].steps[:-1]))
        if twin is not None and twin != s and specs[twin][0].family is not None:
            twin_of[s] = twin
    families = {specs[t][0].family for t in twin_of.values()}
    if len(families) != 1:
        return structures
    twins = families.pop()
    for s, twin in twin_of.items():
        search.builds.base_of[s] = twin
    held = search.settled.get(twins)
    if held is None:  # not bisected, or even its mildest level broke the budget: every level is fine-tuned
        return structures
    floor = specs[held][0].level
    kept = [s for s in structures if specs[s][0].level > floor + 1e-9]
    for s in structures:
        if s not in kept:
            for spec in specs[s]:
                search.ledger.mark(spec.id, "rejected", (
                    f"not tried: no faster than {held}, which holds the budget without fine-tuning: "
                    f"fine-tuning is tried only beyond it"))
    search.trace.append(f"{fam}: built on the {twins} levels; bisected beyond {held}, where {twins} settled"
                        + ("" if kept else " (no level beyond it)"))
    return kept
