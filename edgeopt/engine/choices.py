"""Choices the retraining steps made by measurement inside a candidate (which distillation kind, which
rewinding point, what sparsity training did to the BatchNorm scales), lifted from the step records into
report decisions with their numbers, one decision per kind of choice."""

from __future__ import annotations

from edgeopt.report import Candidate, Decision

SHOWN = 4  # candidates quoted per decision; the rest are counted


def _records(candidates: list[Candidate], technique: str):
    seen: set[str] = set()
    for c in candidates:
        if not c.steps:
            continue
        structure = c.id.split("@")[0]
        for s in c.steps:
            rec = s.params.get("record") if isinstance(s.params, dict) else None
            if s.technique == technique and isinstance(rec, dict) and structure not in seen:
                seen.add(structure)
                yield structure, rec


def _listing(items: list[str]) -> str:
    more = len(items) - SHOWN
    return "; ".join(items[:SHOWN]) + (f"; and {more} more (each candidate's record)" if more > 0 else "")


def _kind_decision(candidates: list[Candidate]) -> Decision | None:
    items, metric = [], None
    for structure, rec in _records(candidates, "fine_tune"):
        screen = rec.get("kind_screen")
        if not screen:
            continue
        metric = screen.get("metric", metric)
        scores = ", ".join(f"{k} {v:.2f}" for k, v in sorted(screen["scores"].items(), key=lambda kv: -kv[1]))
        items.append(f"{structure}: {screen['chosen']} ({scores})")
    if not items:
        return None
    return Decision(technique="distillation_kind", decision="applied", reason=(
        f"distillation kind chosen per candidate by one-epoch probes scored ({metric}) on a slice held out of the "
        f"training data: {_listing(items)}"))


def _rewind_decision(candidates: list[Candidate]) -> Decision | None:
    items = []
    for structure, rec in _records(candidates, "imp"):
        lmc = rec.get("rewind_auto")
        if not lmc:
            continue
        barriers = ", ".join(f"epoch {k}: {v['barrier_pp']:.2f} pp" for k, v in lmc.get("barriers", {}).items())
        chosen = (f"rewound to epoch {lmc['chosen_epoch']}" if lmc.get("chosen_epoch") is not None
                  else "learning-rate rewinding (no epoch was stable)")
        items.append(f"{structure}: {chosen} (barriers {barriers}; stable below {lmc.get('threshold_pp')} pp)")
    if not items:
        return None
    return Decision(technique="imp_rewind", decision="applied", reason=(
        "IMP rewinding point chosen by linear mode connectivity (the earliest epoch from which two runs with "
        f"different data orders stay in one basin): {_listing(items)}"))


def _slimming_decision(candidates: list[Candidate]) -> Decision | None:
    items = []
    for structure, rec in _records(candidates, "slimming"):
        before, after = rec.get("gamma_before") or {}, rec.get("gamma_after") or {}
        if not after:
            continue
        g0, g1 = before.get("mean_abs_gamma", 0.0), after.get("mean_abs_gamma", 0.0)
        z0, z1 = before.get("share_below_0.01", 0.0), after.get("share_below_0.01", 0.0)
        items.append(f"{structure}: mean |gamma| {g0:.3f} -> {g1:.3f}, under 0.01 {100 * z0:.0f}% -> {100 * z1:.0f}%")
    if not items:
        return None
    return Decision(technique="slimming_training", decision="applied", reason=(
        f"sparsity training with an L1 penalty on BatchNorm scales before BN-scale pruning: {_listing(items)}"))


def measured_choices(candidates: list[Candidate]) -> list[Decision]:
    found = (_kind_decision(candidates), _rewind_decision(candidates), _slimming_decision(candidates))
    return [d for d in found if d is not None]
