"""The bounded, measured, resumable search over a Plan.

1. The original model is exported at every (runtime, precision): the baseline and its reduced-precision twins.
2. Families that answer the same question (a screening group: pruning criterion, factorization method) are
   first measured at one common level and only the best are kept (engine/family_screening.py). Each family
   left is bisected (engine/bisect.py): a structure is built (pruned / factorized / fine-tuned) and its accuracy
   measured in PyTorch on the held-out data.
3. The survivors (the settled level and the margin level) are exported at every precision, verified, and
   their accuracy measured again on the runtime itself.
4. A fine-tuned family that holds a level climbs from it: the next level is cut from the model held and
   fine-tuned (engine/gradual.py); a near miss is trained on while its measured recovery closes the gap
   (engine/train_longer.py); the fastest structure gets another technique's family stacked on it
   (engine/stacking.py).
5. QAT phase (engine/qat_phase.py): per armed format, quantization-aware training of the structure whose INT8
   post-training quantization measurably broke the budget (decide/precisions.py: qat_choice).
Stops early once a latency/size budget is met with margin (policy.MARGIN), or when --time-budget runs out.
Every finished candidate is cached under OUT/cache, so a rerun resumes.

A candidate that fails to build, export or verify is data in the report; a configuration error or a missing
backend is the user's to fix and is raised, not recorded. `Search.run` returns a SearchResult: the candidates,
the trace, the decisions taken on measurements and the runtime sessions of the ok candidates."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edgeopt.config import DeployContext
from edgeopt.decide import policy
from edgeopt.decide.plan import Plan
from edgeopt.engine.bisect import bisect
from edgeopt.engine.cache import CandidateCache, key
from edgeopt.engine.family_screening import Screening, screen_group
from edgeopt.engine.fine_tuned import beyond_twins, fine_tuned, first_probe, shortened
from edgeopt.engine.finish import Finisher
from edgeopt.engine.gradual import climb, climb_start, climbable, climbs
from edgeopt.engine.held_levels import beyond_held
from edgeopt.engine.ledger import Builds, Ledger, StopClock, layout, why_failed
from edgeopt.engine.precision_checks import (
    check,
    checks_probes,
    judge_by_float,
    rule_out_failed_verification,
    rule_out_precisions,
    rule_out_trailing_int8,
)
from edgeopt.engine.qat_phase import qat_phase
from edgeopt.engine.stacking import ready, stack
from edgeopt.engine.train_longer import has_twin, near_miss, next_miss, train_longer
from edgeopt.errors import TimeBudgetError, WontFitError
from edgeopt.formats.base import Session
from edgeopt.report import Candidate, Decision


@dataclass
class SearchResult:
    """What a search found: every planned candidate (and each one it added, QAT) with its status and reason,
    in plan order; the trace; the decisions it took on measurements, in the order taken; and the runtime
    session of every ok candidate, for the latency measurement and the test split."""

    candidates: list[Candidate]
    trace: list[str]
    decisions: list[Decision]
    sessions: dict[str, Session]
    stopped: str | None = None
    screened: dict[str, float | None] = field(default_factory=dict)  # structure -> PyTorch drop (pp)
    screenings: list[Screening] = field(default_factory=list)
    structures_built: int = 0
    build_seconds: dict[str, float] = field(default_factory=dict)
    finish_seconds: dict[str, float] = field(default_factory=dict)
    clock: StopClock | None = None  # the time budget: what is left of it for the final measurement
    phases: dict[str, dict[str, float]] = field(default_factory=dict)  # candidate -> phase -> seconds
    screen_seconds: float = 0.0  # PyTorch accuracy of the structures screened
    after_budget: set[str] = field(default_factory=set)  # candidates finished after the search's share

    def profile(self) -> dict[str, float]:
        """Where the search's time went, by phase: structures built, screened in PyTorch, exported (per
        format), verified, evaluated, retried with accuracy control, finished after the time budget."""
        fmt = {c.id: c.format for c in self.candidates}
        out = {"build": round(sum(self.build_seconds.values()), 3), "screen": round(self.screen_seconds, 3)}
        for cid, phases in self.phases.items():
            for phase, sec in phases.items():
                if phase == "build":
                    continue  # every build is in build_seconds already
                name = ("finish after the budget" if cid in self.after_budget
                        else f"export {fmt.get(cid)}" if phase == "export" else phase)
                out[name] = round(out.get(name, 0.0) + sec, 3)
        return out

    def summary(self) -> dict:
        """report.json's model.search."""
        budget = self.clock.summary() if self.clock is not None else None
        return {"trace": self.trace, "stopped": self.stopped, **({"time_budget": budget} if budget else {}),
                "screened_drop_pp": dict(self.screened),
                "screening": {g.group: g.summary() for g in self.screenings},
                "structures_built": self.structures_built,
                "build_seconds": dict(self.build_seconds), "finish_seconds": dict(self.finish_seconds),
                "profile": self.profile()}


@dataclass
class Search:
    plan: Plan
    context: DeployContext
    builder: object  # engine.build.Builder, or a fake with the same verbs in tests
    base_torch_acc: float
    cache: CandidateCache
    cache_parts: tuple
    progress: object
    t_start: float
    # latency of some finished candidates now, given their runtime sessions (for the early stop)
    quick_latency: Callable[[list[Candidate], dict[str, Session]], None]
    # called before every structure build with (structure, steps applied, base structure or None): under
    # torchrun, rank 0 tells the other ranks what to build so that they join its DDP fine-tuning
    announce: Callable[[str, list, str | None], None] | None = None
    # family-parallel work (engine/cluster.py, --cluster): builds and screens every family's levels ahead of the
    # walk below, which then decides on the same numbers; None: one after another, here
    executor: object | None = None
    # given the seconds the baseline's evaluation on the selection part took: (the seconds the tail of the run
    # should take, why), kept back for it instead of its share of --time-budget where less; None: its share
    tail_forecast: Callable[[float], tuple[float, str]] | None = None

    def __post_init__(self):
        self._fresh()

    def _fresh(self) -> None:
        """The state of one run: what the search has done so far, and its collaborators (made when the run
        starts, so that they see the cache and builder the search holds then)."""
        self.trace: list[str] = []
        self.decisions: list[Decision] = []  # decisions taken on measurements (screening, QAT, accuracy control)
        self.screened: dict[str, float | None] = {}
        self.settled: dict[str, str | None] = {}  # family -> the level its bisection kept
        self.partial: dict[str, tuple[int, int]] = {}  # structure -> (seen, total): a screening stopped early
        self.reaches: dict[str, str] = {}  # structure added by a climb or a longer training -> the level it reaches
        self.screenings: list[Screening] = []
        self.screen_seconds = 0.0
        self.after_budget: set[str] = set()
        self.float_wins: set[str] = set()  # formats whose probes are not checked at INT8 (precision_checks.py)
        self.ledger = Ledger(self.plan, self.progress)
        self.clock = StopClock(self.context.time_budget_s, self.t_start, self.trace)
        self.builds = Builds(self.builder, self.ledger, self.progress, self.announce, until=self.clock.deadline,
                             after_build=self._after_build)
        self.finisher = Finisher(self.ledger, self.builds, self.clock, self.builder, self.cache, self.cache_parts,
                                 self.context, self.decisions, self.progress)
        self.finisher.screened = self.screened

    @property
    def stopped(self) -> str | None:
        return self.clock.reason

    @property
    def base_of(self) -> dict[str, str]:
        return self.builds.base_of

    # ---- driver -------------------------------------------------------------------------------------
    def run(self) -> SearchResult:
        self._fresh()
        ledger = self.ledger
        self.progress.stage("searching", total=len(ledger.cands))
        # the baseline first, whatever the time budget says: a run never ends with nothing measured
        with self.clock.grace():
            self.finisher.finish(ledger.original, [s for s in ledger.specs[ledger.original]
                                                   if s.id == ledger.baseline_id])
        self._forecast_tail()
        self.finisher.finish(ledger.original)  # its other precisions, as the time budget allows
        rule_out_precisions(self)
        self.float_wins = judge_by_float(self)
        rule_out_trailing_int8(self)
        rule_out_failed_verification(self)
        families: dict[str, list[str]] = {}
        for structure, specs in ledger.specs.items():
            if specs[0].family is not None:
                families.setdefault(specs[0].family, []).append(structure)
        for structures in families.values():
            structures.sort(key=lambda s: ledger.specs[s][0].level)
        screened_out: set[str] = set()
        # (family, near miss, its levels): near misses with no drop before fine-tuning to tell their recovery by
        untwinned: list[tuple[str, str, list[str]]] = []
        stacked = False
        if self.executor is not None:
            self.executor.prefetch(self, families)
        for fam, structures in families.items():
            if self._stopped_before_build():
                self.trace.append(f"{fam}: not started, {self.clock.reason.removeprefix('not tried: ')}")
                continue
            group = ledger.specs[structures[0]][0].screen
            if group is not None and group not in {g.group for g in self.screenings}:
                screened_out |= self._screen_group(group, families)
            if fam in screened_out:
                continue
            structures = beyond_held(self, fam, beyond_twins(self, fam, structures))
            missed = self._search_family(fam, structures) if structures else None
            if missed is not None:  # its recovery is unknown: tried on the time the other families leave
                untwinned.append((fam, missed, structures))
            self._early_stop()
            if not stacked and ready(self, families, self.settled):  # before the rest spend the time
                stack(self, families, self.settled)
                stacked = True
        if not stacked:
            stack(self, families, self.settled)  # says why nothing was stacked
        for fam, missed, structures in sorted(untwinned, key=lambda u: self.screened[u[1]]):
            if not self._stopped_before_build() and climbable(self, rescued := train_longer(self, missed)):
                climb(self, fam, structures, rescued)
        qat_phase(self)
        self._finish_best_screened()
        for c in ledger.cands.values():
            if c.status == "pending":
                c.status = "rejected"
                c.reason = c.reason or self.clock.reason or "not tried"
        return SearchResult(
            candidates=list(ledger.cands.values()), trace=self.trace, decisions=self.decisions,
            sessions=self.finisher.sessions, stopped=self.clock.reason, screened=self.screened,
            screenings=self.screenings, structures_built=self.builds.count(), build_seconds=self.builds.seconds,
            finish_seconds=self.finisher.seconds, clock=self.clock, phases=self.finisher.phases,
            screen_seconds=self.screen_seconds, after_budget=self.after_budget)

    def _search_family(self, fam: str, structures: list[str]) -> str | None:
        """Bisect one family's levels (mildest first), then climb from the level held (engine/gradual.py) or
        train its near miss on. A fine-tuned family that can be climbed probes its mildest level first: once it
        holds, each next level is cut from the model held and fine-tuned, and the levels rebuilt from the
        original would throw that training away (the benchmark Unet spent 140 s of 600 on `prune-recon60-ft` and
        `prune-recon50-ft` from the original after `prune-recon40-ft` held); where the probe misses, or the
        family cannot be climbed from it after all, its levels are bisected as planned (the probe is not built
        again). Returns a near miss with no un-fine-tuned twin, to be trained on once every family was
        searched."""
        specs = self.ledger.specs
        climbing = all(fine_tuned(specs[s][0]) and climbs(specs[s][0]) for s in structures)
        climbed, again = False, True
        if climbing:
            # from a level another family holds, or from the family's mildest level once it holds
            top = climb_start(self, structures)
            from_start = top is not None
            if not from_start:
                self._finish_kept(self.bisect_family(fam, structures, climb_first=True))
                top = climbable(self, self.settled.get(fam))
            climbed = top is not None and climb(self, fam, structures, top)
            if climbed:
                for spec in (spec for s in structures for spec in specs[s]):  # the pending ones
                    self.ledger.mark(spec.id, "rejected", (
                        f"not tried: {fam} is climbed from {top}, which holds the budget: each next level is cut "
                        "from the last one held (the gradual decision says how far)"))
            # a probe that missed said it all; one that held (or a start) that cannot be climbed from: bisected
            again = not climbed and (from_start or self.settled.get(fam) is not None)
        if again:
            self._finish_kept(self.bisect_family(fam, structures))
            top = climbable(self, self.settled.get(fam))
            climbed = not climbing and top is not None and climb(self, fam, structures, top)
        missed = near_miss(self, structures)
        if missed is None or climbed or self._stopped_before_build():
            return None
        if has_twin(self, missed):
            self._train_longer_from(fam, missed, structures)
            return None
        return missed

    def _finish_kept(self, kept: list[str]) -> None:
        for s in kept:
            self.finisher.finish(s)
            self.compressed_finished()

    def _train_longer_from(self, fam: str, missed: str, structures: list[str]) -> None:
        """Train the near miss `missed` on; where a block of it holds the budget, the family is climbed from
        that block (engine/gradual.py), or where its levels cannot be, the family's next level screened over the
        budget is trained on the same way (its measured recovery decides), and so on: the family's speed is in
        its most aggressive level, and a level rescued says the next may be too."""
        while (rescued := train_longer(self, missed)) is not None:
            if climbable(self, rescued) is not None and climb(self, fam, structures, rescued):
                return
            missed = next_miss(self, structures, missed)
            if missed is None or not has_twin(self, missed) or self._stopped_before_build():
                return

    def _forecast_tail(self) -> None:
        """The tail kept back from --time-budget, forecast from the baseline's evaluation (not restored from
        the cache: its timings are of another run)."""
        base = self.ledger.cands.get(self.ledger.baseline_id)
        evaluate_s = self.finisher.phases.get(self.ledger.baseline_id, {}).get("evaluate")
        if self.tail_forecast is not None and base is not None and not base.from_cache and evaluate_s is not None:
            self.clock.forecast_tail(*self.tail_forecast(evaluate_s))

    # ---- structures: bisection, screening -------------------------------------------------------------
    def bisect_family(self, fam: str, structures: list[str], climb_first: bool = False) -> list[str]:
        """Bisect one family's structures (mildest first) against the accuracy budget; mark the levels left
        out with why, record the level it settled at. Returns the structures kept (settled, then margin).
        `climb_first`: stop once the first level probed holds, leaving the others pending (the family is then
        climbed from it, engine/gradual.py)."""
        specs = self.ledger.specs
        # the margin level leaves room for what a reduced precision loses on top of the structure; a family
        # exported at fp32 only (e.g. no int8/bf16 units here) would only export it to never choose it
        live = [spec for s in structures for spec in specs[s] if self.ledger.cands[spec.id].status == "pending"]
        reduced = any(spec.precision != "fp32" for spec in live)
        checked = checks_probes(self, structures)
        first = first_probe(specs, structures, self.screened)
        judged = (lambda s: check(self, s)) if checked else self.screen
        held: list[str] = []
        climbs_from = f"not tried: {fam} climbs from the first level it holds"

        def judge(s: str) -> float | None:
            drop = judged(s)
            if climb_first and drop is not None and drop <= self.context.max_accuracy_drop + policy.EPS_PP:
                held.append(s)
            return drop

        out = bisect(fam, structures, judge, self.context.max_accuracy_drop,
                     lambda: self._stopped_before_build() or (climbs_from if held else None), self.builds.failure,
                     policy.MARGIN_LEVELS if reduced and not checked else 0, first=first)
        self.trace.append(out.trace)
        self.settled[fam] = out.settled
        for s, (status, why) in out.dropped.items():
            if why == climbs_from:
                continue
            if "PyTorch accuracy drop" in why:
                why += self._partial_note(s)
            for spec in specs[s]:
                self.ledger.mark(spec.id, status, why)
        return out.kept

    def _screen_group(self, group: str, families: dict[str, list[str]]) -> set[str]:
        """Measure every family of the group at one level; mark the families left out, with the numbers.
        Returns the families left out."""
        specs = self.ledger.specs
        members = {f: beyond_held(self, f, s) for f, s in families.items() if specs[s[0]][0].screen == group}
        gone = {f for f, s in members.items() if not s}  # every level no faster than one held already
        members = {f: s for f, s in members.items() if s}
        if len(members) <= policy.SCREEN_KEEP:
            return gone  # nothing to choose between: each family is bisected
        original = layout(self.builder.net)  # a structure with this layout left the model as it was

        out = screen_group(group, members, lambda s: specs[s][0].level, self.screen, self.builds.failure,
                           lambda s: self.builds.layout_of.get(s) == original, self._stopped_before_build)
        self.screenings.append(out)
        self.decisions.append(out.decision())
        self.trace.append(f"{group}: screened at level {out.level:g}, kept {', '.join(out.kept) or 'none'}")
        for fam, (status, why) in out.dropped.items():
            why += self._partial_note(out.probes[fam])
            for s in members[fam]:
                for spec in specs[s]:
                    self.ledger.mark(spec.id, status if s == out.probes[fam] else "rejected", why)
        return set(out.dropped) | gone

    def _stopped_before_build(self) -> str | None:
        """Why the search stopped, or stops before the next structure: its build and screening, as long as the
        ones so far took (the original's build, which has no steps, left out), would not fit the time left."""
        secs = [t for s, t in self.builds.seconds.items() if s != self.ledger.original]
        step = sum(secs) / len(secs) + self.screen_seconds / max(1, len(self.screened)) if secs else None
        return self.clock.stopped_before(step)

    def screen(self, structure: str) -> float | None:
        """Accuracy drop (pp) of a structure in PyTorch on the held-out data; None when it cannot be built."""
        if structure in self.screened:
            return self.screened[structure]
        spec = self.ledger.specs[structure][0]
        k = key(*self.cache_parts, [s.model_dump() for s in spec.steps])
        budget = self.context.max_accuracy_drop + policy.EPS_PP
        hit = self.cache.get("screen", k)
        # a screening stopped early only proves its structure over the budget it was run for
        if hit is not None and not (hit.get("seen") and hit.get("at_least", 0.0) <= budget):
            self.screened[structure], self.builds.layout_of[structure] = hit["drop"], hit["layout"]
            if hit.get("seen"):
                self.partial[structure] = (hit["seen"], hit["total"])
            self.trace.append(f"screen {structure}: drop {hit['drop']:.2f} pp (cached)")
            return hit["drop"]
        b = self.builds.get(structure)
        if isinstance(b, WontFitError):  # its fine-tuning cannot end in time; cheaper structures still can
            self.trace.append(f"screen {structure}: {b}")
            return None
        if isinstance(b, TimeBudgetError):  # not a failure: the search's share ran out inside the build
            self.clock.out_of_time = True
            if not self.clock.reason:
                self.clock.stop(str(b))
            return None
        if isinstance(b, Exception):
            self.screened[structure] = None
            self.trace.append(f"screen {structure}: failed ({why_failed(b)})")
            return None
        t0 = time.perf_counter()
        got = self.builder.torch_screen(b.model, self.base_torch_acc - budget)
        drop = round(self.base_torch_acc - got.accuracy, 4)
        self.screen_seconds += time.perf_counter() - t0
        self.screened[structure] = drop
        entry = {"drop": drop, "layout": self.builds.layout_of[structure]}
        if got.partial:
            self.partial[structure] = (got.seen, got.total)
            # the least the whole split can lose
            entry.update(seen=got.seen, total=got.total, at_least=round(self.base_torch_acc - got.best_whole, 4))
        cut = shortened(b.records)
        if cut is None:
            self.cache.put("screen", k, entry)
        self.trace.append(f"screen {structure}: drop {drop:.2f} pp" + self._partial_note(structure)
                          + (f" (fine-tuned {cut}; not cached)" if cut else ""))
        return drop

    def _partial_note(self, structure: str) -> str:
        """Where a screening stopped early, on how many samples its drop was measured."""
        if structure not in self.partial:
            return ""
        seen, total = self.partial[structure]
        return f" (on the first {seen} of {total} samples: over the budget whatever the others give)"

    # ---- stopping -------------------------------------------------------------------------------------
    def _finish_best_screened(self) -> None:
        """The time budget ran out before any compressed candidate was finished: export and measure the
        structure with the fewest MACs already built and screened within the accuracy budget, so the run offers
        its best find rather than only the original."""
        if not self.clock.out_of_time:
            return
        ledger = self.ledger
        if any(ledger.cands[spec.id].status == "ok" for s, specs in ledger.specs.items() if s != ledger.original
               for spec in specs):
            return  # a compressed candidate was finished in time: nothing to add
        limit = self.context.max_accuracy_drop + policy.EPS_PP
        ready = [s for s, drop in self.screened.items() if drop is not None and drop <= limit
                 and self.builds.ready(s) is not None
                 and all(ledger.cands[spec.id].status in ("pending", "rejected")
                         and ledger.cands[spec.id].latency_ms is None for spec in ledger.specs[s])]
        if not ready:
            return
        best = min(ready, key=lambda s: (self.builds.ready(s).macs, self.builds.ready(s).params))
        specs = self.finisher.fitting(best, self.quick_latency)
        if not specs:
            return
        self.trace.append(f"time budget spent: finishing {best}, the structure with the fewest MACs screened "
                          "within the accuracy budget")
        with self.clock.grace():
            for spec in specs:
                ledger.cands[spec.id].status, ledger.cands[spec.id].reason = "pending", ""
            self.finisher.finish(best, specs)
        self.after_budget |= {spec.id for spec in specs}

    def compressed_finished(self) -> None:
        """Once a compressed candidate is finished, the share of the time budget kept for finishing one after
        the search is no longer needed: the search may use it."""
        ledger = self.ledger
        if any(ledger.cands[spec.id].status == "ok" for s, specs in ledger.specs.items() if s != ledger.original
               for spec in specs):
            self.clock.reserve_finish = False

    def _after_build(self, structure: str) -> float:
        """Seconds `structure` should take once built: its screening (as the ones so far took) and the finish of
        its candidates still pending (as the original's took)."""
        screen = self.screen_seconds / len(self.screened) if self.screened else 0.0
        return screen + sum(self.finisher.expected_seconds(spec) for spec in self.ledger.specs[structure]
                            if self.ledger.cands[spec.id].status == "pending"
                            and not self.finisher.ruled_out_why(spec))

    def _early_stop(self) -> None:
        """Once a candidate within the accuracy budget meets the latency/size budget with margin, stop."""
        ctx = self.context
        if not (ctx.latency_budget_ms or ctx.size_budget_mb):
            return
        base = self.ledger.baseline
        ok = [c for c in self.ledger.cands.values() if c.status == "ok" and c.accuracy is not None
              and base.accuracy is not None and base.accuracy - c.accuracy <= ctx.max_accuracy_drop + policy.EPS_PP]
        if ctx.latency_budget_ms:
            self.quick_latency([c for c in ok if c.latency_ms is None], self.finisher.sessions)
        for c in ok:
            lat_ok = not ctx.latency_budget_ms or (c.latency_ms is not None
                                                   and c.latency_ms.p50 <= policy.MARGIN * ctx.latency_budget_ms)
            size_ok = not ctx.size_budget_mb or (c.shipped_bytes is not None
                                                 and c.shipped_bytes / 1e6 <= policy.MARGIN * ctx.size_budget_mb)
            if lat_ok and size_ok:
                self.clock.stop(f"not tried: budget already met with margin by {c.id}")
                return

