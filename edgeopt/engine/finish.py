"""The finishing step of a search: turn one structure into measured candidates. For each of its precisions,
restore from the cache or export, verify and evaluate on the runtime; an OpenVINO INT8 candidate that breaks
the accuracy budget is retried with NNCF accuracy control. Its collaborators are handed in (engine/ledger.py:
the candidates, the structures built, the stop clock; the builder, the cache): it never calls the search.

The work on one structure (export every precision from its one ONNX graph, verify, calibrate and quantize,
evaluate, retry with accuracy control) is `finish_structure`, a function of a `Job` that reads nothing else of
the search, so that it runs in this process or, with --cluster, as a Ray task (the builder's `finish_job`,
engine/cluster.py) with the same outcome. What needs the search (the cache, the time budget, twin layouts,
builds) stays with the `Finisher`, which hands out the jobs and takes their records back."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edgeopt.config import DeployContext
from edgeopt.decide import policy
from edgeopt.decide.plan import CandidateSpec
from edgeopt.engine.build import Built, to_cache
from edgeopt.engine.cache import CandidateCache, key
from edgeopt.engine.ledger import FATAL, TIME_STOP, Builds, Ledger, StopClock, layout, why_failed
from edgeopt.errors import TimeBudgetError
from edgeopt.formats.base import Session
from edgeopt.report import Candidate, Decision
from edgeopt.techniques import TECHNIQUES


@dataclass
class Job:
    """Finishing `specs` of one structure: what that needs of the search, copied, so that it runs anywhere.
    `cands`: copies of all the structure's candidates (an INT8 retry reads its fp32 twin's accuracy); `tags`:
    each spec's cache key (in its artifact's name); `base_accuracy`: the baseline's, when the baseline is not
    among `cands`; `screened`: the structure's PyTorch drop (pp); `size_wanted`: the compressed artifact size is
    read; `seconds_left`: the search's time (None: no limit), for a job run elsewhere; `forecast_s`: what
    finishing each spec is expected to take (as its format and precision took on the structures before), so
    that one that cannot end within `seconds_left` is not started."""

    structure: str
    specs: list[CandidateSpec]
    cands: dict[str, Candidate]
    tags: dict[str, str]
    baseline_id: str
    base_accuracy: float | None
    budget: float
    screened: float | None
    size_wanted: bool
    seconds_left: float | None = None
    forecast_s: dict[str, float] = field(default_factory=dict)

    def key(self) -> str:
        """Everything the outcome depends on (not the time left): a job run ahead of the search is taken only
        when it is the one the search asks for."""
        ids = [s.id for s in self.specs]
        return json.dumps([self.structure, ids, self.tags, self.base_accuracy, self.budget, self.screened,
                           self.size_wanted, {c: [v.status, v.accuracy] for c, v in self.cands.items()}],
                          sort_keys=True, default=str)


@dataclass
class Done:
    """What a job did: its candidates finished (`cands`, by id; `stopped`: those the time budget left pending,
    with why: stopped, or would not have ended in time), the seconds each took and where they went
    (`phases`), the decisions taken (accuracy control, in order) and the runtime session of every ok candidate
    (empty as a job's result travels: the taker loads them)."""

    cands: dict[str, Candidate]
    stopped: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    phases: dict[str, dict[str, float]] = field(default_factory=dict)
    decisions: list[Decision] = field(default_factory=list)
    sessions: dict[str, Session] = field(default_factory=dict)


def finish_structure(builder, built: Built, job: Job, stopped: Callable[[], str | None] | None = None) -> Done:
    """Export, verify and evaluate every spec of `job` on `built` (INT8 over budget retried with accuracy
    control), one after another until `stopped` gives a reason to stop (default: the job's time is up). The
    artifacts go under builder.out_dir; one candidate's failure is recorded in it, a FATAL error raised."""
    if stopped is None:
        deadline = None if job.seconds_left is None else time.perf_counter() + job.seconds_left

        def stopped() -> str | None:
            return f"not tried: {TIME_STOP}" if deadline is not None and time.perf_counter() > deadline else None
    work = _Work(builder, built, job, stopped)
    for spec in job.specs:
        if why := stopped() or work.wont_fit(spec):
            work.done.stopped[spec.id] = why
            continue
        t0 = time.perf_counter()
        cand = job.cands[spec.id]
        work.export_and_evaluate(cand, spec, tag=job.tags[spec.id])
        work.accuracy_control(cand, spec, tag=job.tags[spec.id])
        work.done.seconds[spec.id] = round(time.perf_counter() - t0, 2)
    work.done.cands = {s.id: job.cands[s.id] for s in job.specs if s.id not in work.done.stopped}
    return work.done


class _Work:
    """finish_structure's verbs on one job."""

    def __init__(self, builder, built: Built, job: Job, stopped: Callable[[], str | None]):
        self.builder, self.built, self.job, self.stopped = builder, built, job, stopped
        self.done = Done(cands={})
        self.t0 = time.perf_counter()

    def seconds_left(self) -> float | None:
        """The search's time left (None: no limit), from the job's own start."""
        return None if self.job.seconds_left is None else self.job.seconds_left - (time.perf_counter() - self.t0)

    def wont_fit(self, spec: CandidateSpec) -> str | None:
        """Why `spec` is not started: its forecast exceeds the search's time left. An export is not interrupted
        halfway, so one started with too little left overruns the budget by its whole length (an OpenVINO INT8
        export of a detector: 20-25 s on 2 cores)."""
        need, left = self.job.forecast_s.get(spec.id), self.seconds_left()
        if not need or left is None or need <= left:
            return None
        return (f"not tried: {TIME_STOP} (finishing it would take about {need:.0f} s, as {spec.format} "
                f"{spec.precision} took before; {max(left, 0.0):.0f} s of the search's share left)")

    def base_accuracy(self) -> float | None:
        base = self.job.cands.get(self.job.baseline_id)
        return base.accuracy if base is not None else self.job.base_accuracy

    def spent(self, cid: str, phase: str, t0: float, seconds: float | None = None) -> None:
        _add_phase(self.done.phases, cid, phase, time.perf_counter() - t0 if seconds is None else seconds)

    def accuracy_control(self, cand: Candidate, spec: CandidateSpec, tag: str = "") -> None:
        """An OpenVINO INT8 candidate that breaks the accuracy budget is quantized again with NNCF's accuracy
        control, which keeps the most sensitive layers in float until the drop fits what the structure left
        of the budget. Needs labelled evaluation data; skipped once the time budget is spent."""
        base, budget = self.base_accuracy(), self.job.budget
        if (spec.format != "openvino" or spec.precision != "int8" or base is None
                or not getattr(self.builder, "labelled", False)):
            return
        if cand.status == "ok" and cand.accuracy is not None and base - cand.accuracy > budget + policy.EPS_PP:
            ptq = f"PTQ INT8 lost {base - cand.accuracy:.2f} pp"
        elif cand.status == "failed" and "differ from PyTorch" in cand.reason:
            ptq = "PTQ INT8 failed verification"
        else:
            return
        fp32 = next((c for c in self.job.cands.values() if c.format == spec.format and c.precision == "fp32"), None)
        # the structure's own loss: its fp32 twin's, or before that is finished (a bisection's check at INT8)
        # its PyTorch drop
        lost = base - fp32.accuracy if fp32 and fp32.accuracy is not None else self.job.screened or 0.0
        left = budget - lost
        tech = f"accuracy_control@{spec.id}"
        stop = None if left < 0 else self.stopped() or self._too_long(cand.id)
        if left < 0 or stop:
            why = stop or f"the fp32 structure alone exceeds the {budget} pp budget"
            self.done.decisions.append(Decision(technique=tech, decision="skipped", reason=f"{ptq}; {why}"))
            return
        before = cand.model_copy(deep=True)
        # its own artifact name: the PTQ artifact stays intact if the retry fails
        retry = spec.model_copy(update={"id": f"{spec.id}-ac"})
        info = self.export_and_evaluate(cand, retry, max_drop_pp=round(left, 4), tag=tag)
        if cand.status != "ok" or info is None:
            why = cand.reason
            for name in Candidate.model_fields:
                setattr(cand, name, getattr(before, name))
            self.done.decisions.append(Decision(technique=tech, decision="failed", reason=f"{ptq}; retry: {why}"))
            return
        layers = info.get("float_layers", [])
        cand.accuracy_control = {**info, "ptq": ptq}
        self.done.decisions.append(Decision(technique=tech, decision="applied", reason=(
            f"{ptq}; NNCF accuracy control (max drop {left:.2f} pp) kept {len(layers)} layer(s) in float"
            + (f": {', '.join(layers[:5])}" + (" ..." if len(layers) > 5 else "") if layers else "")
            + f"; now {base - cand.accuracy:.2f} pp")))

    def _too_long(self, cid: str) -> str | None:
        """Why accuracy control would not end within the search's share: forecast at policy.AC_COST_FACTOR
        times the candidate's PTQ."""
        time_left = self.seconds_left()
        need = policy.AC_COST_FACTOR * sum(self.done.phases.get(cid, {}).values())
        if time_left is None or need <= time_left:
            return None
        return (f"{TIME_STOP}: accuracy control would take about {need:.0f} s ({policy.AC_COST_FACTOR:g}x its "
                f"PTQ), {max(time_left, 0.0):.0f} s of the search's share left")

    def export_and_evaluate(self, cand: Candidate, spec: CandidateSpec, max_drop_pp: float | None = None,
                            tag: str = "") -> dict | None:
        """Export, verify and evaluate; returns the accuracy-control record when `max_drop_pp` asked for it.
        `tag` (the cache key) goes into the artifact's file name: the candidate's id alone would be the same for
        every model and data written into one out dir."""
        b = self.built
        cand.params, cand.macs = b.params, b.macs
        for rec in b.records:
            for step in cand.steps:
                if step.technique == rec["technique"]:
                    step.params["record"] = {k: v for k, v in rec.items() if k != "technique"}
        cid = cand.id  # an accuracy-control retry (its own spec id) counts as the candidate's
        t0 = time.perf_counter()
        try:
            ac = {} if max_drop_pp is None else {"max_drop_pp": max_drop_pp}
            result, session = self.builder.export(b, spec, name=f"{spec.id}-{tag[:12]}" if tag else None, **ac)
        except FATAL:
            raise
        except Exception as e:
            cand.status, cand.reason = "failed", why_failed(e)
            self.spent(cid, "export", t0)
            return None
        took = result.info.get("seconds", {})  # the export's own split (export, verify), when it gives one
        for phase, sec in took.items():
            self.spent(cid, phase if max_drop_pp is None else f"accuracy control {phase}", t0, sec)
        self.spent(cid, "export" if max_drop_pp is None else "accuracy control export", t0,
                   time.perf_counter() - t0 - sum(took.values()))
        cand.artifact = str(result.path.relative_to(self.builder.out_dir))
        cand.size_bytes = result.size_bytes
        if self.job.size_wanted:  # deflating big artifacts costs seconds
            cand.size_compressed_bytes = result.compressed_size_bytes()
        cand.precision_executed = session.precision_executed
        cand.int8_mac_fraction = getattr(session, "info", {}).get("int8_mac_fraction")
        cand.exporter = result.exporter
        cand.verification = result.info.get("verification")
        t0 = time.perf_counter()
        try:
            scored = self.builder.evaluate(session)
            cand.accuracy, cand.metric = scored
            cand.metrics = getattr(scored, "metrics", None) or None
        except FATAL:
            raise
        except Exception as e:
            cand.status, cand.reason = "failed", f"evaluation failed: {why_failed(e)}"
            return None
        finally:
            self.spent(cid, "evaluate" if max_drop_pp is None else "accuracy control evaluate", t0)
        cand.status = "ok"
        self.done.sessions[cand.id] = session
        return result.info.get("accuracy_control")


def _add_phase(phases: dict[str, dict[str, float]], cid: str, phase: str, seconds: float) -> None:
    got = phases.setdefault(cid, {})
    got[phase] = round(got.get(phase, 0.0) + seconds, 3)


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

    def finish(self, structure: str, specs: list[CandidateSpec] | None = None) -> None:
        """Finish the pending candidates of `structure` (only `specs` of it, when given)."""
        todo: list[CandidateSpec] = []
        took: dict[str, float] = {}
        for spec in self.ledger.specs[structure] if specs is None else specs:
            if self.ledger.cands[spec.id].status != "pending":
                continue  # finished already (the baseline, finished first)
            if self.clock.check():
                self.ledger.mark(spec.id, "rejected", self.clock.reason)
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
        took = sorted(sum(t for phase, t in phases.items() if phase != "build" and not phase.startswith("accuracy"))
                      for cid, phases in self.phases.items()
                      if (c := self.ledger.cands.get(cid)) is not None and not c.from_cache
                      and c.format == spec.format and c.precision == spec.precision)
        return took[len(took) // 2] if took else None

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
                else finish_structure(self.builder, built, job, self.clock.stopped))
        for spec in job.specs:
            if spec.id in done.stopped:
                self.clock.check()
                self.ledger.mark(spec.id, "rejected", self.clock.reason or done.stopped[spec.id])
                continue
            cand, got = self.ledger.cands[spec.id], done.cands[spec.id]
            for name in [*Candidate.model_fields, *(got.model_extra or {})]:  # extras: accuracy_control
                setattr(cand, name, getattr(got, name))
            for phase, sec in done.phases.get(spec.id, {}).items():
                _add_phase(self.phases, spec.id, phase, sec)
            self.seconds[spec.id] = round(took.get(spec.id, 0.0) + done.seconds.get(spec.id, 0.0), 2)
            if spec.id in done.sessions:
                self.sessions[spec.id] = done.sessions[spec.id]
            if self.cache.enabled:
                self.cache.put("cand", job.tags[spec.id], to_cache(cand, self.builder.out_dir))
            self.progress.advance()
        self.decisions.extend(done.decisions)

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
        t0 = time.perf_counter()
        b = self.builds.get(spec.structure)
        _add_phase(self.phases, spec.id, "build", time.perf_counter() - t0)
        if isinstance(b, TimeBudgetError):  # ended halfway by the time budget: not a failure, not cached
            cand.status, cand.reason = "rejected", str(b)
            return True
        if isinstance(b, Exception):
            cand.status, cand.reason = "failed", why_failed(b)
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
