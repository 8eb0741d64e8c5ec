"""Screening of a group of families that answer the same question (which pruning criterion, scope and schedule?
which factorization method?): each family is measured at ONE common level, the families are ranked by their
PyTorch accuracy drop on the held-out data, and only the best policy.SCREEN_KEEP go on to the bisection.

Bisecting every family costs log2(levels) builds each; screening costs one build per family, and that build is
the bisection's first probe (the ladder's middle level), so the kept families lose nothing. Pure logic, like
engine/bisect.py: the search passes the measuring and the failure lookups in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from edgeopt.decide import policy
from edgeopt.report import Decision


@dataclass
class Screening:
    group: str  # e.g. "prune-criterion"
    level: float  # the common level the families were measured at
    probes: dict[str, str]  # family -> the structure measured for it
    drops: dict[str, float | None] = field(default_factory=dict)  # family -> PyTorch drop (pp); None: no result
    failed: dict[str, str] = field(default_factory=dict)  # family -> why it has no usable result
    kept: list[str] = field(default_factory=list)  # best first
    # family -> (status of its probe structure, reason for every structure of the family)
    dropped: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def noun(self) -> str:  # "prune-criterion" -> "criterion"
        return self.group.rsplit("-", 1)[-1]

    def label(self, family: str) -> str:  # "prune-l2-global" -> "l2-global"
        return family.split("-", 1)[1] if "-" in family else family

    def _measured(self, fam: str) -> str:
        if fam in self.failed:
            return f"{self.label(fam)} {self.failed[fam]} ({self.probes[fam]})"
        return f"{self.label(fam)} {self.drops[fam]:.2f} pp ({self.probes[fam]})"

    def decision(self) -> Decision:
        rest = [f for f in self.drops if f not in self.kept]  # best first; no usable result last
        order = self.kept + sorted(rest, key=lambda f: (f in self.failed, self.drops[f] or 0.0))
        measured = "; ".join(self._measured(f) for f in order)
        unscreened = [self.label(f) for f in self.probes if f not in self.drops]
        return Decision(
            technique=self.group.replace("-", "_"), decision="applied" if self.kept else "rejected",
            reason=f"{self.noun} screening at one level, PyTorch accuracy drop on held-out data: {measured}; "
                   + (f"kept {', '.join(self.label(f) for f in self.kept)} for the bisection"
                      if self.kept else "no family gave a usable result")
                   + (f"; not screened (search stopped): {', '.join(unscreened)}" if unscreened else ""))

    def summary(self) -> dict:
        return {"level": self.level, "probes": self.probes, "drop_pp": self.drops, "failed": self.failed,
                "kept": self.kept}


def common_probes(families: dict[str, list[str]], level_of: Callable[[str], float]) -> tuple[float, dict[str, str]]:
    """The common level (the middle of the longest ladder: the bisection's first probe) and, per family, its
    structure at the level nearest to it. `families`: family -> structures, mildest first."""
    longest = max(families.values(), key=len)
    level = level_of(longest[policy.screen_index(len(longest))])
    return level, {f: min(levels, key=lambda s: abs(level_of(s) - level)) for f, levels in families.items()}


def screen_group(group: str, families: dict[str, list[str]], level_of: Callable[[str], float],
                 screen: Callable[[str], float | None], failure: Callable[[str], str | None],
                 unchanged: Callable[[str], bool], stopped: Callable[[], str | None]) -> Screening:
    """`families` in the planner's order (simplest first: it breaks ties); `screen(structure)` its PyTorch drop
    (None: could not be built, `failure` says why); `unchanged(structure)`: it left the model as it was (e.g.
    no layer large enough to factorize), which would win any accuracy ranking while compressing nothing."""
    level, probes = common_probes(families, level_of)
    out = Screening(group=group, level=level, probes=probes)
    for fam, s in probes.items():
        if stopped():
            break
        out.drops[fam] = drop = screen(s)
        if drop is None:
            out.failed[fam] = f"could not be built: {failure(s) or 'unknown error'}"
        elif unchanged(s):
            out.failed[fam] = "changed nothing (no layer it applies to)"
    order = list(families)
    usable = [f for f in out.drops if f not in out.failed]
    ranked = sorted(usable, key=lambda f: (round(out.drops[f] / policy.SCREEN_TIE_PP), order.index(f)))
    out.kept = ranked[:policy.SCREEN_KEEP]
    best = ranked[0] if ranked else None
    for fam in out.drops:
        if fam in out.kept:
            continue
        if fam in out.failed:
            status = "failed" if out.drops[fam] is None else "rejected"
            why = f"{out.noun} screening: {out.label(fam)} {out.failed[fam]} at {probes[fam]}"
        else:
            status = "rejected"
            why = (f"{out.noun} screening: {out.label(fam)} lost to {out.label(best)}: drop "
                   f"{out.drops[fam]:.2f} pp vs {out.drops[best]:.2f} pp ({probes[fam]} vs {probes[best]}); "
                   f"the best {policy.SCREEN_KEEP} were bisected")
        out.dropped[fam] = (status, why)
    return out
