"""The bounded, measured, resumable search over a Plan.

1. The original model is exported at every (runtime, precision): the baseline and its reduced-precision twins.
2. Each family of structures (prune-l2 at rising ratios, factorize-tucker at falling energies ...) is
   bisected: a structure is built (pruned / factorized / fine-tuned) and its accuracy measured in PyTorch on
   the held-out data; within budget -> try a more aggressive level, over -> a milder one. Accuracy falls
   with the level, so log2(levels) builds find the most aggressive level within budget.
3. The survivors (that level, and the next milder one as margin for reduced precisions) are exported at every
   precision, verified, and their accuracy measured again on the runtime itself.
Stops early once a latency/size budget is met with margin, or when --time-budget runs out. Every finished
candidate is cached under OUT/cache, so a rerun resumes."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeopt.config import DeployContext
from edgeopt.decide.plan import MARGIN, CandidateSpec, Plan
from edgeopt.engine.build import (
    Built,
    build_structure,
    evaluate_candidate,
    export_candidate,
    from_cache,
    new_candidate,
    to_cache,
)
from edgeopt.engine.cache import CandidateCache, key
from edgeopt.engine.search_qat import qat_phase
from edgeopt.errors import EdgeOptError
from edgeopt.inputs.data import Batches, DataSplits
from edgeopt.measure.accuracy import score, torch_predictions
from edgeopt.report import Candidate, Decision


def _why(e: Exception) -> str:
    if isinstance(e, EdgeOptError):
        return str(e)
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"


def _layout(model: nn.Module) -> str:
    shapes = [(n, tuple(p.shape)) for n, p in model.state_dict().items()]
    return hashlib.sha256(repr(shapes).encode()).hexdigest()[:16]


@dataclass
class Search:
    plan: Plan
    context: DeployContext
    net: nn.Module
    example: torch.Tensor
    splits: DataSplits
    eval_b: Batches
    batch: int
    reference: np.ndarray | None  # the original model's predictions, for fidelity when there are no labels
    base_torch_acc: float
    out_dir: Path
    threads: int | None
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
        self.screened: dict[str, float | None] = {}
        self.layout_of: dict[str, str] = {}
        self.finished_layouts: dict[str, str] = {}
        self.base_of: dict[str, str] = {}  # structure -> the structure it is built on (QAT)
        self.decisions: list[Decision] = []  # decisions taken on measurements (QAT), added to the report

    # ---- driver -------------------------------------------------------------------------------------
    def run(self) -> list[Candidate]:
        self.progress.stage("searching", total=len(self.cands))
        self._finish(self.plan.candidates[0].structure)
        families: dict[str, list[str]] = {}
        for structure, specs in self.specs.items():
            if specs[0].family is not None:
                families.setdefault(specs[0].family, []).append(structure)
        for fam, structures in families.items():
            structures.sort(key=lambda s: self.specs[s][0].level)
            if self._check_stop():
                break
            for s in self._bisect(fam, structures):
                self._finish(s)
            self._early_stop()
        qat_phase(self)
        for c in self.cands.values():
            if c.status == "pending":
                c.status = "rejected"
                c.reason = c.reason or self.stopped or "not tried"
        return list(self.cands.values())

    def summary(self) -> dict:
        return {"trace": self.trace, "stopped": self.stopped,
                "screened_drop_pp": {k: v for k, v in self.screened.items()},
                "structures_built": sum(1 for b in self.built.values() if not isinstance(b, Exception))}

    # ---- bisection on one family ----------------------------------------------------------------------
    def _bisect(self, fam: str, structures: list[str]) -> list[str]:
        budget = self.context.max_accuracy_drop
        lo, hi = -1, len(structures)  # invariant: lo within budget (-1 = the original), hi over budget
        while hi - lo > 1 and not self._check_stop():
            mid = (lo + hi) // 2
            drop = self._screen(structures[mid])
            if drop is not None and drop <= budget + 1e-9:
                lo = mid
            else:
                hi = mid
        keep = [structures[i] for i in (lo, lo - 1) if i >= 0]
        settled = structures[lo] if lo >= 0 else "none (even the mildest level breaks the budget)"
        self.trace.append(f"{fam}: bisection kept {settled}" + (f", margin {keep[1]}" if len(keep) > 1 else ""))
        for s in structures:
            if s in keep:
                continue
            drop = self.screened.get(s, "unscreened")
            if s in self.built and isinstance(self.built[s], Exception):
                why = f"build failed: {_why(self.built[s])}"
                status = "failed"
            elif drop is None or drop == "unscreened":
                why, status = (self.stopped or f"not tried: bisection on {fam} settled on {settled}"), "rejected"
            else:
                why, status = (f"not tried: PyTorch accuracy drop {drop:.2f} pp > budget {budget} pp "
                               "(screening)"), "rejected"
            for spec in self.specs[s]:
                self._mark(spec.id, status, why)
        return keep

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
            self.trace.append(f"screen {structure}: failed ({_why(b)})")
            return None
        acc, _ = score(torch_predictions(b.model, self.eval_b, self.batch), self.eval_b, self.reference)
        drop = round(self.base_torch_acc - acc, 4)
        self.screened[structure] = drop
        self.cache.put("screen", k, {"drop": drop, "layout": self.layout_of[structure]})
        self.trace.append(f"screen {structure}: drop {drop:.2f} pp")
        return drop

    def _build(self, structure: str) -> Built | Exception:
        if structure not in self.built:
            self.progress.log(f"building {structure}")
            spec = self.specs[structure][0]

            def tick(epoch: int, epochs: int, loss: float) -> None:
                self.progress.log(f"fine-tuning {structure}: epoch {epoch}/{epochs}, loss {loss:.3f}")

            base, steps = self.base_of.get(structure), spec.steps
            try:
                start = self.net
                if base is not None:  # built on top of another structure (QAT of a pruned model)
                    built = self._build(base)
                    if isinstance(built, Exception):
                        raise built
                    start, steps = built.model, spec.steps[len(self.specs[base][0].steps):]
                if self.announce is not None:
                    self.announce(structure, steps, base)
                b = build_structure(start, self.example, spec.model_copy(update={"steps": steps}),
                                    self.splits.calib, self.splits.train, tick, teacher=self.net)
                if base is not None:
                    b.records = self.built[base].records + b.records
                self.layout_of[structure] = _layout(b.model)
            except Exception as e:  # one candidate's failure is data in the report, not a crash
                b = e
            self.built[structure] = b
        return self.built[structure]

    # ---- export + verify + evaluate every precision of one structure ----------------------------------
    def _finish(self, structure: str) -> None:
        for spec in self.specs[structure]:
            if self._check_stop():
                self._mark(spec.id, "rejected", self.stopped)
                continue
            self._finish_one(spec)
            self.progress.advance()
        if structure in self.layout_of:
            self.finished_layouts.setdefault(self.layout_of[structure], structure)

    def _finish_one(self, spec: CandidateSpec) -> None:
        cand = self.cands[spec.id]
        twin = self.finished_layouts.get(self.layout_of.get(spec.structure, ""))
        if twin is not None and twin != spec.structure:
            cand.status, cand.reason = "rejected", f"not tried: same channel layout as {twin}"
            return
        k = key(*self.cache_parts, [s.model_dump() for s in spec.steps], cand.runtime, spec.precision)
        entry = self.cache.get("cand", k)
        if entry is not None:
            try:
                restored, session = from_cache(cand, entry, self.out_dir, self.threads)
            except Exception:  # an unreadable cached artifact is rebuilt
                restored, session = False, None
            if restored:
                if session is not None:
                    self.sessions[cand.id] = session
                return
        b = self._build(spec.structure)
        twin = self.finished_layouts.get(self.layout_of.get(spec.structure, ""))
        if isinstance(b, Exception):
            cand.status, cand.reason = "failed", _why(b)
        elif twin is not None and twin != spec.structure:
            cand.status, cand.reason = "rejected", f"not tried: same channel layout as {twin}"
            return
        else:
            self._export_and_evaluate(cand, spec, b)
        self.cache.put("cand", k, to_cache(cand))

    def _export_and_evaluate(self, cand: Candidate, spec: CandidateSpec, b: Built) -> None:
        cand.params, cand.macs = b.params, b.macs
        for rec in b.records:
            for step in cand.steps:
                if step.technique == rec["technique"]:
                    step.params["record"] = {k: v for k, v in rec.items() if k != "technique"}
        verify_inputs = self.splits.calib.inputs()[:1] if self.splits.calib is not None else None
        if verify_inputs and verify_inputs[0].shape[0] != self.batch:
            verify_inputs = [verify_inputs[0][:self.batch]] if verify_inputs[0].shape[0] >= self.batch else None
        try:
            calib = self.splits.calib
            if calib is None and self.context.calib_random:
                calib = "random"  # asked for explicitly; the report says so (see pipeline)
            result, session = export_candidate(b, self.example, spec, self.out_dir / "artifacts", self.threads,
                                               calib, verify_inputs)
        except Exception as e:
            cand.status, cand.reason = "failed", _why(e)
            return
        cand.artifact = str(result.path.relative_to(self.out_dir))
        cand.size_bytes = result.size_bytes
        if self.context.goal == "size" or self.context.size_budget_mb:  # deflating big artifacts costs seconds
            cand.size_compressed_bytes = result.compressed_size_bytes()
        cand.precision_executed = session.precision_executed
        cand.int8_mac_fraction = session.info.get("int8_mac_fraction")
        cand.exporter = result.exporter
        cand.verification = result.info.get("verification")
        try:
            cand.accuracy, cand.metric = evaluate_candidate(session.run, self.eval_b, self.batch, self.reference)
        except Exception as e:
            cand.status, cand.reason = "failed", f"evaluation failed: {_why(e)}"
            return
        cand.status = "ok"
        self.sessions[cand.id] = session

    # ---- stopping -------------------------------------------------------------------------------------
    def _mark(self, cid: str, status: str, reason: str) -> None:
        c = self.cands[cid]
        if c.status == "pending":
            c.status, c.reason = status, reason
            self.progress.advance()

    def _check_stop(self) -> bool:
        budget = self.context.time_budget_s
        if not self.stopped and budget and time.perf_counter() - self.t_start > budget:
            self.stopped = f"not tried: --time-budget of {budget:g} s exhausted"
            self.trace.append(self.stopped)
        return self.stopped is not None

    def _early_stop(self) -> None:
        """Once a candidate within the accuracy budget meets the latency/size budget with margin, stop."""
        ctx = self.context
        if not (ctx.latency_budget_ms or ctx.size_budget_mb):
            return
        base = self.cands[self.plan.baseline_id]
        ok = [c for c in self.cands.values() if c.status == "ok" and c.accuracy is not None
              and base.accuracy is not None and base.accuracy - c.accuracy <= ctx.max_accuracy_drop + 1e-9]
        if ctx.latency_budget_ms:
            self.quick_latency([c for c in ok if c.latency_ms is None])
        for c in ok:
            lat_ok = not ctx.latency_budget_ms or (c.latency_ms is not None
                                                   and c.latency_ms.p50 <= MARGIN * ctx.latency_budget_ms)
            size_ok = not ctx.size_budget_mb or (c.shipped_bytes is not None
                                                 and c.shipped_bytes / 1e6 <= MARGIN * ctx.size_budget_mb)
            if lat_ok and size_ok:
                self.stopped = f"not tried: budget already met with margin by {c.id}"
                self.trace.append(self.stopped)
                return
