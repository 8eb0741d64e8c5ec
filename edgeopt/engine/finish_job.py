"""One structure finished: export every precision of its candidates from its one ONNX graph, verify, calibrate
and quantize, evaluate on the runtime, and retry an OpenVINO INT8 that breaks the accuracy budget with NNCF
accuracy control. `finish_structure` is a function of a `Job`, which copies what it needs of the search, and
returns a `Done`: it reads nothing else of the search, so that it runs in this process or, with --cluster, as a
Ray task (engine/cluster_finish.py) with the same outcome. The search's side (which jobs, the cache, the time
budget, twin layouts) is engine/finish.py's `Finisher`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edgeopt.decide import policy
from edgeopt.decide.plan import CandidateSpec
from edgeopt.engine.build import Built
from edgeopt.engine.ledger import FATAL, TIME_STOP, fail
from edgeopt.formats.base import Session
from edgeopt.report import Candidate, Decision


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
        add_phase(self.done.phases, cid, phase, time.perf_counter() - t0 if seconds is None else seconds)

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
        elif cand.status == "failed" and cand.failure == "verification":
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
            fail(cand, e, "export")
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
            fail(cand, e, "evaluation", prefix="evaluation failed: ")
            return None
        finally:
            self.spent(cid, "evaluate" if max_drop_pp is None else "accuracy control evaluate", t0)
        cand.status = "ok"
        self.done.sessions[cand.id] = session
        return result.info.get("accuracy_control")


def add_phase(phases: dict[str, dict[str, float]], cid: str, phase: str, seconds: float) -> None:
    got = phases.setdefault(cid, {})
    got[phase] = round(got.get(phase, 0.0) + seconds, 3)
