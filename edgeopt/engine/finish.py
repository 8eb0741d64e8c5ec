"""The finishing step of a search: turn one structure into measured candidates. For each of its precisions,
restore from the cache or export, verify and evaluate on the runtime; an OpenVINO INT8 candidate that breaks
the accuracy budget is retried with NNCF accuracy control. Its collaborators are handed in (engine/ledger.py:
the candidates, the structures built, the stop clock; the builder, the cache): it never calls the search."""

from __future__ import annotations

import time

from edgeopt.config import DeployContext
from edgeopt.decide import policy
from edgeopt.decide.plan import CandidateSpec
from edgeopt.engine.build import Built, to_cache
from edgeopt.engine.cache import CandidateCache, key
from edgeopt.engine.ledger import FATAL, Builds, Ledger, StopClock, why_failed
from edgeopt.formats.base import Session
from edgeopt.report import Candidate, Decision
from edgeopt.techniques import TECHNIQUES


class Finisher:
    """Finishes structures: exports, verifies and evaluates their candidates, kept in `ledger`. Records the
    runtime session of every ok candidate (`sessions`, for the latency measurement and the test split), the
    seconds each candidate took (`seconds`), and its decisions (accuracy control) into `decisions`, the
    search's list, so that the report keeps every decision in the order it was taken."""

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
        for spec in self.ledger.specs[structure] if specs is None else specs:
            if self.ledger.cands[spec.id].status != "pending":
                continue  # finished already (the baseline, finished first)
            if self.clock.check():
                self.ledger.mark(spec.id, "rejected", self.clock.reason)
                continue
            t0 = time.perf_counter()
            self._finish_one(spec)  # builds if needed, exports, verifies, evaluates, measures
            self.seconds[spec.id] = round(time.perf_counter() - t0, 2)
            self.progress.advance()
        if structure in self.builds.layout_of:
            self.finished_layouts.setdefault(self.builds.layout_of[structure], structure)

    def _twin(self, spec: CandidateSpec) -> str | None:
        twin = self.finished_layouts.get(self.builds.layout_of.get(spec.structure, ""))
        return twin if twin is not None and twin != spec.structure else None

    def _finish_one(self, spec: CandidateSpec) -> None:
        cand = self.ledger.cands[spec.id]
        if self._twin(spec):
            cand.status, cand.reason = "rejected", f"not tried: same channel layout as {self._twin(spec)}"
            return
        k = key(*self.cache_parts, [s.model_dump() for s in spec.steps], spec.format, cand.runtime, spec.precision)
        entry = self.cache.get("cand", k)
        if entry is not None:
            try:
                restored, session = self.builder.restore(cand, entry)
            except Exception:  # an unreadable cached artifact is rebuilt
                restored, session = False, None
            if restored:
                if session is not None:
                    self.sessions[cand.id] = session
                return
        t0 = time.perf_counter()
        b = self.builds.get(spec.structure)
        self._spent(spec.id, "build", t0)
        if isinstance(b, Exception):
            cand.status, cand.reason = "failed", why_failed(b)
        elif self._twin(spec):
            cand.status, cand.reason = "rejected", f"not tried: same channel layout as {self._twin(spec)}"
            return
        elif why := self._negligible(spec.structure, b):
            cand.status, cand.reason = "rejected", why
            return
        else:
            self._export_and_evaluate(cand, spec, b, tag=k)
            self._accuracy_control(cand, spec, b, tag=k)
        if self.cache.enabled:
            self.cache.put("cand", k, to_cache(cand, self.builder.out_dir))

    def _spent(self, cid: str, phase: str, t0: float, seconds: float | None = None) -> None:
        """Add the time since `t0` (or `seconds`) to the candidate's phase: where a search's time goes."""
        took = time.perf_counter() - t0 if seconds is None else seconds
        phases = self.phases.setdefault(cid, {})
        phases[phase] = round(phases.get(phase, 0.0) + took, 3)

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

    def _accuracy_control(self, cand: Candidate, spec: CandidateSpec, b: Built, tag: str = "") -> None:
        """An OpenVINO INT8 candidate that breaks the accuracy budget is quantized again with NNCF's accuracy
        control, which keeps the most sensitive layers in float until the drop fits what the structure left
        of the budget. Needs labelled evaluation data; skipped once the time budget is spent."""
        base, budget = self.ledger.baseline, self.context.max_accuracy_drop
        if (spec.format != "openvino" or spec.precision != "int8" or base.accuracy is None
                or not getattr(self.builder, "labelled", False)):
            return
        if cand.status == "ok" and cand.accuracy is not None and base.accuracy - cand.accuracy > budget + policy.EPS_PP:
            ptq = f"PTQ INT8 lost {base.accuracy - cand.accuracy:.2f} pp"
        elif cand.status == "failed" and "differ from PyTorch" in cand.reason:
            ptq = "PTQ INT8 failed verification"
        else:
            return
        fp32 = self.ledger.find(spec.structure, spec.format, "fp32")
        # the structure's own loss: its fp32 twin's, or before that is finished (a bisection's check at INT8)
        # its PyTorch drop
        lost = (base.accuracy - fp32.accuracy if fp32 and fp32.accuracy is not None
                else self.screened.get(spec.structure) or 0.0)
        left = budget - lost
        tech = f"accuracy_control@{spec.id}"
        if left < 0 or self.clock.check():
            why = self.clock.reason or f"the fp32 structure alone exceeds the {budget} pp budget"
            self.decisions.append(Decision(technique=tech, decision="skipped", reason=f"{ptq}; {why}"))
            return
        before = cand.model_copy(deep=True)
        # its own artifact name: the PTQ artifact stays intact if the retry fails
        retry = spec.model_copy(update={"id": f"{spec.id}-ac"})
        info = self._export_and_evaluate(cand, retry, b, max_drop_pp=round(left, 4), tag=tag)
        if cand.status != "ok" or info is None:
            why = cand.reason
            for name in Candidate.model_fields:
                setattr(cand, name, getattr(before, name))
            self.decisions.append(Decision(technique=tech, decision="failed", reason=f"{ptq}; retry: {why}"))
            return
        layers = info.get("float_layers", [])
        cand.accuracy_control = {**info, "ptq": ptq}
        self.decisions.append(Decision(technique=tech, decision="applied", reason=(
            f"{ptq}; NNCF accuracy control (max drop {left:.2f} pp) kept {len(layers)} layer(s) in float"
            + (f": {', '.join(layers[:5])}" + (" ..." if len(layers) > 5 else "") if layers else "")
            + f"; now {base.accuracy - cand.accuracy:.2f} pp")))

    def _export_and_evaluate(self, cand: Candidate, spec: CandidateSpec, b: Built,
                             max_drop_pp: float | None = None, tag: str = "") -> dict | None:
        """Export, verify and evaluate; returns the accuracy-control record when `max_drop_pp` asked for it.
        `tag` (the cache key) goes into the artifact's file name: the candidate's id alone would be the same for
        every model and data written into one out dir."""
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
            self._spent(cid, "export", t0)
            return None
        took = result.info.get("seconds", {})  # the export's own split (export, verify), when it gives one
        for phase, sec in took.items():
            self._spent(cid, phase if max_drop_pp is None else f"accuracy control {phase}", t0, sec)
        self._spent(cid, "export" if max_drop_pp is None else "accuracy control export", t0,
                    time.perf_counter() - t0 - sum(took.values()))
        cand.artifact = str(result.path.relative_to(self.builder.out_dir))
        cand.size_bytes = result.size_bytes
        if self.context.goal == "size" or self.context.size_budget_mb:  # deflating big artifacts costs seconds
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
            self._spent(cid, "evaluate" if max_drop_pp is None else "accuracy control evaluate", t0)
        cand.status = "ok"
        self.sessions[cand.id] = session
        return result.info.get("accuracy_control")
