"""The finishing step of a search: turn structures into measured candidates. The `Finisher` settles what needs
no export (restored from the cache, a twin of a layout finished already, a failed build, a structure that
compresses too little), hands the rest of a structure to one `Job` (engine/finish_job.py: export, verify,
evaluate, accuracy control), run here or by the builder's `finish_job` (a Ray task), and takes its records back
into the ledger. It also forecasts what finishing a candidate takes, from what the ones finished so far took, and
so which candidates of a structure fit the time left. Its collaborators are handed in (engine/ledger.py: the
candidates, the structures built, the stop clock; the builder, the cache): it never calls the search."""

from __future__ import annotations

import time

from edgeopt.config import DeployContext
from edgeopt.decide import policy
from edgeopt.decide.plan import CandidateSpec
from edgeopt.engine.build import Built, to_cache
from edgeopt.engine.cache import CandidateCache, key
from edgeopt.engine.fine_tuned import shortened
from edgeopt.engine.finish_job import Job, add_phase, finish_structure
from edgeopt.engine.ledger import Builds, Ledger, StopClock, fail, layout
from edgeopt.errors import TimeBudgetError
from edgeopt.formats.base import Session
from edgeopt.report import Candidate, Decision
from edgeopt.techniques import TECHNIQUES


class Finisher:
    """Finishes structures: exports, verifies and evaluates their candidates, kept in `ledger`. Records the
    runtime session of every ok candidate (`sessions`, for the latency measurement and the test split), the
    seconds each candidate took (`seconds`), and its decisions (accuracy control) into `decisions`, the
    search's list, so that the report keeps every decision in the order it was taken. The export work of a
    structure is one `Job`: run here, or by the builder's `finish_job` when it has one (a Ray task)."""

    def __init__(self, ledger: Ledger, builds: Builds, clock: StopClock, builder, cache: CandidateCache,
                 cache_parts: tuple, context: DeployContext, decisions: list[Decision], progress):
        self.ledger, self.builds, self.clock, self.builder = ledger, builds, clock, builder
        self.cache, self.cache_parts, self.context = cache, cache_parts, context
        self.decisions, self.progress = decisions, progress
        self.sessions: dict[str, Session] = {}
        self.seconds: dict[str, float] = {}
        self.phases: dict[str, dict[str, float]] = {}  # candidate -> phase (build, export, verify...) -> seconds
        self.finished_layouts: dict[str, str] = {}  # channel layout -> the first structure finished with it
        self.screened: dict[str, float | None] = {}  # structure -> PyTorch drop (pp), the search's screening
        # (format, precision) -> why it is not finished on a compressed structure (the precision screens on the
        # original): applied to the structures a climb or a longer training adds later, too
        self.ruled_out: dict[tuple[str, str], str] = {}

    def finish(self, structure: str, specs: list[CandidateSpec] | None = None) -> None:
        """Finish the pending candidates of `structure` (only `specs` of it, when given)."""
        todo: list[CandidateSpec] = []
        took: dict[str, float] = {}
        for spec in self.ledger.specs[structure] if specs is None else specs:
            if self.ledger.cands[spec.id].status != "pending":
                continue  # finished already (the baseline, finished first)
            if self.clock.finishing_stopped():
                self.ledger.mark(spec.id, "rejected", self.clock.reason)
                continue
            if why := self.ruled_out_why(spec):
                self.ledger.mark(spec.id, "rejected", why)
                continue
            t0 = time.perf_counter()
            settled = self._settle(spec)  # restored, a twin, a failed build, not worth it; else built
            took[spec.id] = time.perf_counter() - t0
            if settled:
                self.seconds[spec.id] = round(took[spec.id], 2)
                self.progress.advance()
            else:
                todo.append(spec)
        if todo:
            self._run(self.job(structure, todo), took)
        if structure in self.builds.layout_of:
            self.finished_layouts.setdefault(self.builds.layout_of[structure], structure)

    def ruled_out_why(self, spec: CandidateSpec) -> str | None:
        """Why a precision screen keeps `spec` from being finished (never the original's)."""
        return None if spec.structure == self.ledger.original else self.ruled_out.get((spec.format, spec.precision))

    def tag(self, spec: CandidateSpec) -> str:
        """The candidate's cache key."""
        return key(*self.cache_parts, [s.model_dump() for s in spec.steps], spec.format,
                   self.ledger.cands[spec.id].runtime, spec.precision)

    def job(self, structure: str, specs: list[CandidateSpec], screened: float | None = None) -> Job:
        """The job finishing `specs` of `structure` now (`screened`: its PyTorch drop when the search has not
        screened it yet)."""
        cands = {s.id: self.ledger.cands[s.id].model_copy(deep=True) for s in self.ledger.specs[structure]}
        left = self.clock.left("search")
        return Job(structure=structure, specs=list(specs), cands=cands, tags={s.id: self.tag(s) for s in specs},
                   baseline_id=self.ledger.baseline_id, base_accuracy=self.ledger.baseline.accuracy,
                   budget=self.context.max_accuracy_drop,
                   screened=self.screened.get(structure, screened),
                   size_wanted=self.context.goal == "size" or bool(self.context.size_budget_mb),
                   seconds_left=None if left is None or self.clock.in_grace else max(left, 0.0),
                   forecast_s={s.id: f for s in specs if (f := self.forecast(s)) is not None})

    def forecast(self, spec: CandidateSpec) -> float | None:
        """What finishing `spec` should take: the median of what exporting, verifying and evaluating took the
        candidates finished so far at its format and precision (the original's first among them; builds, accuracy
        control and restores from the cache left out); None before any."""
        took = sorted(self._took(cid, accuracy_control=False) for cid in self.phases
                      if (c := self.ledger.cands.get(cid)) is not None and not c.from_cache
                      and c.format == spec.format and c.precision == spec.precision)
        return took[len(took) // 2] if took else None

    def _took(self, cid: str, accuracy_control: bool = True) -> float:
        """Seconds candidate `cid` took to finish, its build left out (and its accuracy control, unless asked)."""
        return sum(t for phase, t in self.phases[cid].items()
                   if phase != "build" and (accuracy_control or not phase.startswith("accuracy")))

    def expected_seconds(self, spec: CandidateSpec) -> float:
        """Seconds finishing `spec` of a structure already built should take, accuracy control included: what
        the original's candidate at the same format and precision took (the longest of the original's otherwise;
        0 when none was timed)."""
        twin = self.ledger.find(self.ledger.original, spec.format, spec.precision)
        if twin is not None and twin.id in self.phases:
            return self._took(twin.id)
        return max((self._took(s.id) for s in self.ledger.specs[self.ledger.original] if s.id in self.phases),
                   default=0.0)

    def fitting(self, structure: str, quick_latency) -> list[CandidateSpec]:
        """The candidates of `structure` whose finish fits in the time left before the budget's tail: all of
        them when they fit, else the precisions the original ran fastest at first (timed by `quick_latency`,
        the search's latency of finished candidates given their sessions), as many as fit. Each precision left
        out is traced as a cut."""
        specs = [s for s in self.ledger.specs[structure] if not self.ruled_out_why(s)]
        left = self.clock.left("finish")
        if left is None or sum(self.expected_seconds(s) for s in specs) <= left:
            return specs
        original = [c for c in (self.ledger.find(self.ledger.original, s.format, s.precision) for s in specs)
                    if c is not None and c.status == "ok" and c.latency_ms is None and c.id in self.sessions]
        quick_latency(original, self.sessions)

        def speed(spec: CandidateSpec) -> float:
            c = self.ledger.find(self.ledger.original, spec.format, spec.precision)
            return c.latency_ms.p50 if c is not None and c.latency_ms is not None else float("inf")

        kept: list[CandidateSpec] = []
        for spec in sorted(specs, key=speed):
            cost = self.expected_seconds(spec)
            if cost <= left:
                kept.append(spec)
                left -= cost
            else:
                self.clock.cut(f"{spec.id} not finished (~{cost:.0f} s expected, {max(left, 0):.0f} s left)")
        return [s for s in specs if s in kept]

    def exportable(self, structure: str, built: Built) -> list[CandidateSpec]:
        """The pending candidates of a built structure that finishing it would export (none cached, not a
        twin of the original, not negligible): what a cluster may finish ahead of the search."""
        specs = [s for s in self.ledger.specs[structure] if self.ledger.cands[s.id].status == "pending"]
        twin = self.finished_layouts.get(layout(built.model))
        if (not specs or (twin is not None and twin != structure) or self._negligible(structure, built)
                or any(self.cache.get("cand", self.tag(s)) is not None for s in specs)):
            return []
        return specs

    def _run(self, job: Job, took: dict[str, float]) -> None:
        """Run the job (here, or where the builder's finish_job runs it) and take its records."""
        built = self.builds.get(job.structure)
        runner = getattr(self.builder, "finish_job", None)
        done = (runner(built, job) if runner is not None
                else finish_structure(self.builder, built, job, self.clock.finishing_stopped))
        for spec in job.specs:
            if spec.id in done.stopped:
                self.clock.check()
                self.ledger.mark(spec.id, "rejected", self.clock.reason or done.stopped[spec.id])
                continue
            cand, got = self.ledger.cands[spec.id], done.cands[spec.id]
            for name in [*Candidate.model_fields, *(got.model_extra or {})]:  # extras: accuracy_control
                setattr(cand, name, getattr(got, name))
            for phase, sec in done.phases.get(spec.id, {}).items():
                add_phase(self.phases, spec.id, phase, sec)
            self.seconds[spec.id] = round(took.get(spec.id, 0.0) + done.seconds.get(spec.id, 0.0), 2)
            if spec.id in done.sessions:
                self.sessions[spec.id] = done.sessions[spec.id]
            # a build whose fine-tuning was shortened to fit the time is not the structure the key names
            if self.cache.enabled and not self._shortened(job.structure):
                self.cache.put("cand", job.tags[spec.id], to_cache(cand, self.builder.out_dir))
            self.progress.advance()
        self.decisions.extend(done.decisions)

    def _shortened(self, structure: str) -> bool:
        built = self.builds.ready(structure)
        return built is not None and shortened(built.records) is not None

    def _twin(self, spec: CandidateSpec) -> str | None:
        twin = self.finished_layouts.get(self.builds.layout_of.get(spec.structure, ""))
        return twin if twin is not None and twin != spec.structure else None

    def _settle(self, spec: CandidateSpec) -> bool:
        """Settle a candidate without exporting it when it can be (a twin's, restored from the cache, its build
        failed, not worth it): True when settled; else its structure is built for the export."""
        cand = self.ledger.cands[spec.id]
        if self._twin(spec):
            cand.status, cand.reason = "rejected", f"not tried: same channel layout as {self._twin(spec)}"
            return True
        entry = self.cache.get("cand", self.tag(spec))
        if entry is not None:
            try:
                restored, session = self.builder.restore(cand, entry)
            except Exception:  # an unreadable cached artifact is rebuilt
                restored, session = False, None
            if restored:
                if session is not None:
                    self.sessions[cand.id] = session
                return True
        if self.clock.builds_only and spec.structure not in self.builds.built:  # the builds stopped before it
            cand.status, cand.reason = "rejected", self.clock.reason or ""
            return True
        t0 = time.perf_counter()
        b = self.builds.get(spec.structure)
        add_phase(self.phases, spec.id, "build", time.perf_counter() - t0)
        if isinstance(b, TimeBudgetError):  # ended halfway by the time budget: not a failure, not cached
            cand.status, cand.reason = "rejected", str(b)
            return True
        if isinstance(b, Exception):
            fail(cand, b, "build")
            if self.cache.enabled:
                self.cache.put("cand", self.tag(spec), to_cache(cand, self.builder.out_dir))
            return True
        if self._twin(spec):
            cand.status, cand.reason = "rejected", f"not tried: same channel layout as {self._twin(spec)}"
            return True
        if why := self._negligible(spec.structure, b):
            cand.status, cand.reason = "rejected", why
            return True
        return False

    def _negligible(self, structure: str, b: Built) -> str | None:
        """Why a compressed structure is not worth exporting and measuring: it removes under policy.MIN_GAIN of
        the original's MACs and of its parameters (e.g. a factorization that only found the classifier head)."""
        base = self.ledger.baseline
        if structure == self.ledger.original or structure in self.builds.base_of or not (base.macs
                                                                                        and base.params):
            return None
        if not all(TECHNIQUES.get(st.technique).shrinks for st in self.ledger.specs[structure][0].steps):
            return None  # sparse weights, another architecture: MACs and parameters do not say what it gains
        macs, params = 1 - b.macs / base.macs, 1 - b.params / base.params
        if max(macs, params) >= policy.MIN_GAIN:
            return None
        return (f"not tried: compresses too little to be worth measuring ({100 * macs:.2f} % fewer MACs, "
                f"{100 * params:.2f} % fewer parameters; under {100 * policy.MIN_GAIN:g} %)")
