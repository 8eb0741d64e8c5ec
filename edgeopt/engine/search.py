"""The bounded, measured, resumable search over a Plan.

1. The original model is exported at every (runtime, precision): the baseline and its reduced-precision twins.
2. Families that answer the same question (a screening group: pruning criterion, factorization method) are
   first measured at one common level and only the best are kept (engine/screening.py). Each family left is
   bisected (engine/bisect.py): a structure is built (pruned / factorized / fine-tuned) and its accuracy
   measured in PyTorch on the held-out data.
3. The survivors (the settled level and the margin level) are exported at every precision, verified, and
   their accuracy measured again on the runtime itself.
4. QAT phase: per armed format, quantization-aware training of the structure whose INT8 post-training
   quantization measurably broke the budget (decide/precisions.py: qat_choice).
Stops early once a latency/size budget is met with margin (policy.MARGIN), or when --time-budget runs out.
Every finished candidate is cached under OUT/cache, so a rerun resumes.

A candidate that fails to build, export or verify is data in the report; a configuration error or a missing
backend is the user's to fix and is raised, not recorded."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from edgeopt.config import DeployContext
from edgeopt.decide import policy
from edgeopt.decide.plan import CandidateSpec, Plan
from edgeopt.decide.precisions import qat_choice
from edgeopt.engine.bisect import bisect
from edgeopt.engine.build import Built, new_candidate
from edgeopt.engine.cache import CandidateCache, key
from edgeopt.engine.finish import FATAL, Finishing, why_failed
from edgeopt.engine.screening import Screening, screen_group
from edgeopt.report import Candidate, Decision
from edgeopt.techniques import QATConfig


def _layout(model: nn.Module) -> str:
    shapes = [(n, tuple(p.shape)) for n, p in model.state_dict().items()]
    return hashlib.sha256(repr(shapes).encode()).hexdigest()[:16]


@dataclass
class Search(Finishing):
    plan: Plan
    context: DeployContext
    builder: object  # engine.build.Builder, or a fake with the same verbs in tests
    base_torch_acc: float
    cache: CandidateCache
    cache_parts: tuple
    progress: object
    t_start: float
    quick_latency: Callable[[list[Candidate]], None]
    sessions: dict = field(default_factory=dict)
    stopped: str | None = None
    # called before every structure build with (structure, steps applied, base structure or None): under
    # torchrun, rank 0 tells the other ranks what to build so that they join its DDP fine-tuning
    announce: Callable[[str, list, str | None], None] | None = None
    trace: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.cands = {s.id: new_candidate(s) for s in self.plan.candidates}
        self.specs: dict[str, list[CandidateSpec]] = {}
        for s in self.plan.candidates:
            self.specs.setdefault(s.structure, []).append(s)
        self.built: dict[str, Built | Exception] = {}
        self.build_seconds: dict[str, float] = {}
        self.grace = False  # finishing the best screened structure after the time budget ran out
        self.out_of_time = False  # stopped by --time-budget (not by a met latency/size budget)
        self.finish_seconds: dict[str, float] = {}
        self.screened: dict[str, float | None] = {}
        self.layout_of: dict[str, str] = {}
        self.finished_layouts: dict[str, str] = {}
        self.base_of: dict[str, str] = {}  # structure -> the structure it is built on (QAT)
        self.decisions: list[Decision] = []  # decisions taken on measurements (QAT), added to the report
        self.screenings: list[Screening] = []

    # ---- driver -------------------------------------------------------------------------------------
    def run(self) -> list[Candidate]:
        self.progress.stage("searching", total=len(self.cands))
        self._finish(self.plan.candidates[0].structure)
        families: dict[str, list[str]] = {}
        for structure, specs in self.specs.items():
            if specs[0].family is not None:
                families.setdefault(specs[0].family, []).append(structure)
        for structures in families.values():
            structures.sort(key=lambda s: self.specs[s][0].level)
        screened_out: set[str] = set()
        for fam, structures in families.items():
            if self._check_stop():
                break
            group = self.specs[structures[0]][0].screen
            if group is not None and group not in {g.group for g in self.screenings}:
                screened_out |= self._screen_group(group, families)
            if fam in screened_out:
                continue
            for s in self._bisect(fam, structures):
                self._finish(s)
            self._early_stop()
        self._qat_phase()
        self._finish_best_screened()
        for c in self.cands.values():
            if c.status == "pending":
                c.status = "rejected"
                c.reason = c.reason or self.stopped or "not tried"
        return list(self.cands.values())

    def summary(self) -> dict:
        return {"trace": self.trace, "stopped": self.stopped,
                "screened_drop_pp": {k: v for k, v in self.screened.items()},
                "screening": {g.group: g.summary() for g in self.screenings},
                "structures_built": sum(1 for b in self.built.values() if not isinstance(b, Exception)),
                "build_seconds": dict(self.build_seconds), "finish_seconds": dict(self.finish_seconds)}

    # ---- structures: bisection, screening, building ---------------------------------------------------
    def _failure(self, structure: str) -> str | None:
        b = self.built.get(structure)
        return why_failed(b) if isinstance(b, Exception) else None

    def _bisect(self, fam: str, structures: list[str]) -> list[str]:
        # the margin level leaves room for what a reduced precision loses on top of the structure; a family
        # exported at fp32 only (e.g. no int8/bf16 units here) would only export it to never choose it
        reduced = any(spec.precision != "fp32" for s in structures for spec in self.specs[s])
        out = bisect(fam, structures, self._screen, self.context.max_accuracy_drop,
                     lambda: self.stopped if self._check_stop() else None, self._failure,
                     policy.MARGIN_LEVELS if reduced else 0,
                     first=next((i for i, s in enumerate(structures) if s in self.screened), None))
        self.trace.append(out.trace)
        for s, (status, why) in out.dropped.items():
            for spec in self.specs[s]:
                self._mark(spec.id, status, why)
        return out.kept

    def _screen_group(self, group: str, families: dict[str, list[str]]) -> set[str]:
        """Measure every family of the group at one level; mark the families left out, with the numbers.
        Returns the families left out."""
        members = {f: s for f, s in families.items() if self.specs[s[0]][0].screen == group}
        if len(members) <= policy.SCREEN_KEEP:
            return set()  # nothing to choose between: each family is bisected
        original = _layout(self.builder.net)  # a structure with this layout left the model as it was

        out = screen_group(group, members, lambda s: self.specs[s][0].level, self._screen, self._failure,
                           lambda s: self.layout_of.get(s) == original,
                           lambda: self.stopped if self._check_stop() else None)
        self.screenings.append(out)
        self.decisions.append(out.decision())
        self.trace.append(f"{group}: screened at level {out.level:g}, kept {', '.join(out.kept) or 'none'}")
        for fam, (status, why) in out.dropped.items():
            for s in members[fam]:
                for spec in self.specs[s]:
                    self._mark(spec.id, status if s == out.probes[fam] else "rejected", why)
        return set(out.dropped)

    def _screen(self, structure: str) -> float | None:
        """Accuracy drop (pp) of a structure in PyTorch on the held-out data; None when it cannot be built."""
        if structure in self.screened:
            return self.screened[structure]
        spec = self.specs[structure][0]
        k = key(*self.cache_parts, [s.model_dump() for s in spec.steps])
        hit = self.cache.get("screen", k)
        if hit is not None:
            self.screened[structure], self.layout_of[structure] = hit["drop"], hit["layout"]
            self.trace.append(f"screen {structure}: drop {hit['drop']:.2f} pp (cached)")
            return hit["drop"]
        b = self._build(structure)
        if isinstance(b, Exception):
            self.screened[structure] = None
            self.trace.append(f"screen {structure}: failed ({why_failed(b)})")
            return None
        drop = round(self.base_torch_acc - self.builder.torch_accuracy(b.model), 4)
        self.screened[structure] = drop
        self.cache.put("screen", k, {"drop": drop, "layout": self.layout_of[structure]})
        self.trace.append(f"screen {structure}: drop {drop:.2f} pp")
        return drop

    def _build(self, structure: str) -> Built | Exception:
        if structure not in self.built:
            self.progress.log(f"building {structure}")
            t0 = time.perf_counter()
            spec = self.specs[structure][0]
            base, steps = self.base_of.get(structure), spec.steps
            try:
                start = self.builder.net
                if base is not None:  # built on top of another structure (QAT of a pruned model)
                    built = self._build(base)
                    if isinstance(built, Exception):
                        raise built
                    start, steps = built.model, spec.steps[len(self.specs[base][0].steps):]
                if self.announce is not None:
                    self.announce(structure, steps, base)
                b = self.builder.build(start, spec.model_copy(update={"steps": steps}))
                if base is not None:
                    b.records = self.built[base].records + b.records
                self.layout_of[structure] = _layout(b.model)
            except FATAL:
                raise
            except Exception as e:  # one candidate's failure is data in the report, not a crash
                b = e
            self.built[structure] = b
            self.build_seconds[structure] = round(time.perf_counter() - t0, 2)  # where a search's time goes
        return self.built[structure]

    # ---- QAT phase: only where post-training INT8 measurably broke the budget ---------------------------
    def _qat_phase(self) -> None:
        base = self.cands[self.plan.baseline_id]
        budget = self.context.max_accuracy_drop
        for fmt in self.plan.qat_formats:
            if self._check_stop() or base.accuracy is None:
                return
            rows = []
            for structure, specs in list(self.specs.items()):
                got = {s.precision: self.cands[s.id] for s in specs if s.format == fmt}
                f, q = got.get("fp32"), got.get("int8")
                if f and q and f.status == "ok":
                    rows.append((structure, f.macs or 0, f.accuracy, q.status, q.accuracy, q.reason))
            structure, drop = qat_choice(rows, base.accuracy, budget)
            if structure is None:
                self.decisions.append(Decision(technique=f"qat@{fmt}", decision="skipped", reason=drop))
                continue
            spec = self.specs[structure][0]
            name = f"{structure}-qat"
            qspec = CandidateSpec(
                id=f"{name}@{fmt}-int8", structure=name, format=fmt, precision="int8",
                steps=[*spec.steps, QATConfig(epochs=self.plan.qat_epochs)],
                reason=f"INT8 PTQ of {structure} failed the {budget} pp budget ({drop}): quantization-aware "
                       "training (fake quantization, distilled from the original), exported as INT8 Q/DQ")
            self.base_of[name] = structure
            self.specs[name] = [qspec]
            self.cands[qspec.id] = new_candidate(qspec)
            self.decisions.append(Decision(technique=f"qat@{fmt}", decision="applied", reason=qspec.reason))
            self.trace.append(f"qat: {qspec.id} (PTQ: {drop})")
            self._finish(name)

    # ---- stopping -------------------------------------------------------------------------------------
    def _mark(self, cid: str, status: str, reason: str) -> None:
        c = self.cands[cid]
        if c.status == "pending":
            c.status, c.reason = status, reason
            self.progress.advance()

    def _finish_best_screened(self) -> None:
        """The time budget ran out before any compressed candidate was finished: export and measure the
        structure with the fewest MACs already built and screened within the accuracy budget, so the run offers
        its best find rather than only the original."""
        if not self.out_of_time:
            return
        original = self.plan.candidates[0].structure
        if any(self.cands[spec.id].status == "ok" for s, specs in self.specs.items() if s != original
               for spec in specs):
            return  # a compressed candidate was finished in time: nothing to add
        limit = self.context.max_accuracy_drop + policy.EPS_PP
        ready = [s for s, drop in self.screened.items() if drop is not None and drop <= limit
                 and not isinstance(self.built.get(s), (Exception, type(None)))
                 and all(self.cands[spec.id].status in ("pending", "rejected") and self.cands[spec.id].latency_ms
                         is None for spec in self.specs[s])]
        if not ready:
            return
        best = min(ready, key=lambda s: (self.built[s].macs, self.built[s].params))
        self.trace.append(f"time budget spent: finishing {best}, the structure with the fewest MACs screened "
                          "within the accuracy budget")
        self.grace = True
        try:
            for spec in self.specs[best]:
                self.cands[spec.id].status, self.cands[spec.id].reason = "pending", ""
            self._finish(best)
        finally:
            self.grace = False

    def _check_stop(self) -> bool:
        if self.grace:
            return False
        budget = self.context.time_budget_s
        if not self.stopped and budget and time.perf_counter() - self.t_start > budget:
            self.stopped = f"not tried: --time-budget of {budget:g} s exhausted"
            self.out_of_time = True
            self.trace.append(self.stopped)
        return self.stopped is not None

    def _early_stop(self) -> None:
        """Once a candidate within the accuracy budget meets the latency/size budget with margin, stop."""
        ctx = self.context
        if not (ctx.latency_budget_ms or ctx.size_budget_mb):
            return
        base = self.cands[self.plan.baseline_id]
        ok = [c for c in self.cands.values() if c.status == "ok" and c.accuracy is not None
              and base.accuracy is not None and base.accuracy - c.accuracy <= ctx.max_accuracy_drop + policy.EPS_PP]
        if ctx.latency_budget_ms:
            self.quick_latency([c for c in ok if c.latency_ms is None])
        for c in ok:
            lat_ok = not ctx.latency_budget_ms or (c.latency_ms is not None
                                                   and c.latency_ms.p50 <= policy.MARGIN * ctx.latency_budget_ms)
            size_ok = not ctx.size_budget_mb or (c.shipped_bytes is not None
                                                 and c.shipped_bytes / 1e6 <= policy.MARGIN * ctx.size_budget_mb)
            if lat_ok and size_ok:
                self.stopped = f"not tried: budget already met with margin by {c.id}"
                self.trace.append(self.stopped)
                return
