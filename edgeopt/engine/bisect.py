"""Bisection of one family of structures (prune-l2 at rising ratios, factorize-tucker at falling energies...)
against the accuracy budget, and the real reason each level left out was left out.

Accuracy falls with the level, so log2(levels) screenings find the most aggressive level within budget. The
search keeps that level and policy.MARGIN_LEVELS milder ones (reduced precisions lose some accuracy on top),
and one milder level at least where the settled one used most of the budget (the test split judges again)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from edgeopt.decide import policy


@dataclass
class Outcome:
    kept: list[str]  # the settled level first, then the margin level(s)
    settled: str | None  # the most aggressive level within budget; None when even the mildest breaks it
    dropped: dict[str, tuple[str, str]] = field(default_factory=dict)  # level -> (status, reason)
    trace: str = ""


def bisect(family: str, levels: list[str], screen: Callable[[str], float | None], budget: float,
           stopped: Callable[[], str | None], failure: Callable[[str], str | None],
           margin_levels: int = policy.MARGIN_LEVELS, first: int | None = None) -> Outcome:
    """`levels` mildest first; `screen(level)` is its PyTorch accuracy drop in pp (None when it could not be
    built: `failure(level)` says why); `stopped()` the reason the search stopped, if it did. `margin_levels`
    milder levels are kept beside the settled one (0 when no reduced precision will lose accuracy on top).
    `first`: index of the first probe instead of the middle (a level already measured, e.g. by a screening)."""
    lo, hi = -1, len(levels)  # invariant: lo within budget (-1 = the original), hi over budget
    drops: dict[str, float | None] = {}
    while hi - lo > 1 and not stopped():
        mid = first if first is not None and lo == -1 and hi == len(levels) else (lo + hi) // 2
        drops[levels[mid]] = drop = screen(levels[mid])
        if drop is not None and drop <= budget + policy.EPS_PP:
            lo = mid
        else:
            hi = mid
    near = lo >= 0 and (drops[levels[lo]] or 0.0) > policy.NEAR_BUDGET_SHARE * budget
    margin = max(margin_levels, 1) if near else margin_levels
    kept = [levels[i] for i in range(lo, lo - margin - 1, -1) if i >= 0]
    settled = levels[lo] if lo >= 0 else None
    stop = stopped() if hi - lo > 1 else None  # asked only where a level was left unscreened
    bound = levels[hi] if hi < len(levels) else None  # the level the settled one is bounded by
    unbuilt = bound is not None and bound in drops and drops[bound] is None
    if stop is None and unbuilt and (failure(bound) or "").startswith("not tried: "):
        stop = failure(bound)  # the time ran out inside its build: it was never shown to break the budget
    unfinished = stop is not None  # the search stopped before the bisection settled
    if settled is not None:
        what = settled
    elif unfinished:  # not "breaks the budget": no level was shown to
        what = f"none ({stop.removeprefix('not tried: ')})"
    elif unbuilt:
        what = f"none ({bound} could not be built)"
    else:
        what = f"none (even the mildest level tried, {levels[0]}, breaks the budget)"
    out = Outcome(kept=kept, settled=settled,
                  trace=f"{family}: bisection kept {what}" + (f", margin {', '.join(kept[1:])}" if kept[1:] else "")
                  + (f" (its drop {drops[levels[lo]]:.2f} pp is near the budget: the test split may reject it)"
                     if near and kept[1:] and margin_levels == 0 else "")
                  + (f"; {stop.removeprefix('not tried: ')} before it settled" if unfinished and settled else ""))
    for i, level in enumerate(levels):
        if level not in kept:
            out.dropped[level] = _why_dropped(level, i, lo, hi, levels, drops, budget, stop, failure)
    return out


def _why_dropped(level: str, i: int, lo: int, hi: int, levels: list[str], drops: dict, budget: float,
                 stop: str | None, failure: Callable[[str], str | None]) -> tuple[str, str]:
    if level in drops and drops[level] is None:
        why = failure(level) or "unknown error"
        if why.startswith("not tried: "):  # the time budget ran out inside its build: not a failure
            return "rejected", why
        return "failed", f"build failed: {why}"
    if level in drops:
        drop = drops[level]
        if drop > budget + policy.EPS_PP:
            return "rejected", f"not tried: PyTorch accuracy drop {drop:.2f} pp > budget {budget} pp (screening)"
        return "rejected", (f"not tried: within budget in screening (PyTorch drop {drop:.2f} pp), but the "
                            f"bisection kept the more aggressive {levels[lo]}")
    if stop and hi - lo > 1:  # the bisection did not finish: this level was never screened
        return "rejected", stop
    if i < lo:
        return "rejected", (f"not tried: milder than {levels[lo]}, which holds the budget (accuracy falls with "
                            "the level, so the bisection skipped it)")
    broke = levels[hi] if hi < len(levels) else None
    why = f"not tried: more aggressive than {broke}, which already breaks the budget"
    if broke is not None and drops.get(broke) is None:
        unbuilt = failure(broke) or ""
        why = (f"not tried: more aggressive than {broke}, which was not tried ({unbuilt.removeprefix('not tried: ')})"
               if unbuilt.startswith("not tried: ") else f"not tried: more aggressive than {broke}, which could not "
                                                         "be built")
    return "rejected", why
