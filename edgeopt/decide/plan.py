"""The decision layer: deploy context + target profile + model summary -> Plan.

Pure: no backend imports, no measurement. It encodes FIELD_NOTES' decision table; every candidate says
why it was proposed and every technique left out says why. The pipeline then proves or rejects each
candidate by measurement — the planner proposes, it does not promise."""

from __future__ import annotations

from pydantic import BaseModel, Field

from edgeopt.config import DeployContext, ModelSummary
from edgeopt.decide.precisions import allowed as _allowed
from edgeopt.decide.precisions import budget_kind, precision_pairs
from edgeopt.decide.retrain import from_scratch_structures, qat_formats, sparse_structures
from edgeopt.decide.toolbox import architecture_decision, depth_structures
from edgeopt.report import Decision, Step
from edgeopt.targets import TargetProfile
from edgeopt.techniques import TECHNIQUES

# Prune ratio ladders, searched by bisection against measured accuracy (FIELD_NOTES: "no retraining: mild
# pruning, ratio chosen by measured accuracy"; "retraining allowed: aggressive structured pruning + KD").
# A tight accuracy budget (<= 0.5 pp) starts lower and climbs in smaller steps; a loose one (>= 2 pp) reaches
# further.
RATIOS = {
    (False, "tight"): (0.05, 0.1, 0.15, 0.2, 0.25, 0.3),
    (False, "normal"): (0.1, 0.15, 0.2, 0.3, 0.4, 0.5),
    (False, "loose"): (0.1, 0.2, 0.3, 0.4, 0.5, 0.6),
    (True, "tight"): (0.2, 0.3, 0.4, 0.5, 0.6),
    (True, "normal"): (0.3, 0.4, 0.5, 0.6, 0.7),
    (True, "loose"): (0.3, 0.5, 0.6, 0.7, 0.8),
}
# Energy kept by the low-rank factorization (higher = milder): energy-preserving without retraining.
ENERGIES = {False: (0.98, 0.95, 0.9, 0.8), True: (0.95, 0.9, 0.8, 0.6)}
# Magnitude (L2) and geometric-median (FPGM) criteria: cheap, need no labels, and rank differently enough
# that the better one for a given model is found by measurement rather than assumed.
CRITERIA_NO_LABELS = ("l2", "fpgm")


class CandidateSpec(BaseModel):
    id: str
    structure: str  # key of the model-stage steps: candidates sharing it share one pruned model
    steps: list[Step] = Field(default_factory=list)
    format: str  # backend (format) name: onnx, openvino, tensorrt
    precision: str = "fp32"
    reason: str = ""
    # structures of one family are ordered by `level` (more aggressive = higher); accuracy is expected to fall
    # with the level, which is what lets the search bisect instead of trying every level
    family: str | None = None
    level: float = 0.0


class Plan(BaseModel):
    candidates: list[CandidateSpec]
    baseline_id: str
    decisions: list[Decision] = Field(default_factory=list)
    measure_locally: bool = True
    notes: list[str] = Field(default_factory=list)
    qat_formats: list[str] = Field(default_factory=list)  # formats whose INT8 may be retried with QAT
    qat_epochs: int = 2

    def to_text(self) -> str:
        lines = [f"{len(self.candidates)} candidates (baseline: {self.baseline_id}); latency "
                 f"{'measured on this machine' if self.measure_locally else 'estimated (roofline)'}"]
        lines += [f"  - {c.id}: {c.reason}" for c in self.candidates]
        lines += ["decisions:"] + [f"  - {d.technique}: {d.decision} — {d.reason}" for d in self.decisions]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# format name -> runtime name, kept here so the planner stays free of backend imports
FORMAT_OF_RUNTIME = {"onnxruntime": "onnx", "openvino": "openvino", "tensorrt": "tensorrt"}
PRECISIONS_OF_FORMAT = {"onnx": ("fp32",), "openvino": ("fp32", "bf16"), "tensorrt": ("fp32", "fp16", "int8")}


def runs_here(target: TargetProfile, local: TargetProfile) -> bool:
    """Whether latency measured on this machine stands for the target's."""
    if target.detected:
        return True
    return (target.kind == local.kind == "cpu" and target.arch == local.arch
            and set(target.isa_features) <= set(local.isa_features))


def channel_rounding(target: TargetProfile, summary: ModelSummary, decisions: list[Decision]) -> int | None:
    """The target's channel multiple, unless the model is so narrow that rounding would force huge steps
    (a 32-channel layer rounded to 16 can only keep 16 or 32): then no rounding, and say so."""
    wanted = multiple = target.channel_multiple
    if multiple <= 1:
        return None
    narrow = summary.min_channels
    while narrow is not None and multiple > 1 and narrow < 4 * multiple:
        multiple //= 2  # keep steps of at most 25% of the narrowest layer
    if multiple <= 1:
        decisions.append(Decision(
            technique="channel_rounding", decision="skipped",
            reason=f"{target.name} prefers multiples of {wanted}, but the narrowest layer has {narrow} "
                   "channels: any rounding would force huge pruning steps"))
        return None
    why = f"kept channels rounded to multiples of {multiple} for {target.name}"
    if multiple != wanted:
        why += f" (the target prefers {wanted}; the narrowest layer has only {narrow} channels)"
    decisions.append(Decision(technique="channel_rounding", decision="applied", reason=why))
    return multiple


def plan(context: DeployContext, target: TargetProfile, summary: ModelSummary, local: TargetProfile,
         installed_runtimes: list[str], has_calib_data: bool = False,
         precisions_of_format: dict[str, tuple[str, ...]] | None = None, has_train_data: bool = False,
         sensitivity: dict[str, float] | None = None) -> Plan:
    """`sensitivity`: per-layer accuracy drops measured by `--sensitivity` (sensitive layers pruned less)."""
    precisions_of_format = precisions_of_format or PRECISIONS_OF_FORMAT
    decisions: list[Decision] = []
    notes: list[str] = []
    if context.techniques:
        for t in context.techniques:
            TECHNIQUES.canonical(t)  # unknown technique names are errors, with did-you-mean
    here = runs_here(target, local)
    if here and not target.detected:
        notes.append(f"{target.name} is measured on this machine ({local.description}), whose ISA is a "
                     "superset of the target's: treat speedups as an upper bound")

    # 1. runtimes, in the target's order of preference, that can run here
    wanted = context.runtimes or target.runtimes
    runtimes: list[str] = []
    for rt in wanted:
        if rt not in FORMAT_OF_RUNTIME:
            decisions.append(Decision(technique=f"runtime:{rt}", decision="skipped", reason="unknown runtime"))
        elif here and rt not in installed_runtimes:
            decisions.append(Decision(technique=f"runtime:{rt}", decision="skipped",
                                      reason="not installed or no device for it on this machine"))
        else:
            runtimes.append(rt)
    if not here:
        # the artifacts are built here and deployed there; latency is estimated from the target profile
        first = runtimes[0] if runtimes else "onnxruntime"
        # TensorRT engines are specific to the GPU (and TensorRT version) they are built on: they are always
        # built on the device, from the ONNX exported here
        if (FORMAT_OF_RUNTIME.get(first) not in precisions_of_format or first not in installed_runtimes
                or first == "tensorrt"):
            notes.append(f"{first} artifacts are not built on this machine: exporting ONNX, from which "
                         f"{first} builds its engine on the device")
            first = "onnxruntime"
        runtimes = [first]
        notes.append(f"{target.name} is not this machine: latencies are roofline estimates")
    if not runtimes:
        runtimes = ["onnxruntime"]

    pairs = precision_pairs(context, target, runtimes, precisions_of_format, decisions, FORMAT_OF_RUNTIME,
                            calibrated=has_calib_data or context.calib_random)
    structures = [("original", [], "unchanged model", None, 0.0)]
    finetune = _finetune_step(context, has_train_data, decisions)
    structures += _prune_structures(context, target, summary, has_calib_data, finetune, decisions, sensitivity)
    structures += _factorize_structures(context, target, summary, finetune, decisions)
    structures += sparse_structures(context, target, finetune, decisions)
    structures += from_scratch_structures(context, target, has_train_data, decisions)
    structures += depth_structures(context, target, summary, has_calib_data, finetune, decisions)
    architecture_decision(context, decisions)
    qat = qat_formats(context, pairs, has_train_data, decisions)

    candidates: list[CandidateSpec] = []
    for name, steps, why, family, level in structures:
        for fmt, prec, pwhy in pairs:
            candidates.append(CandidateSpec(id=f"{name}@{fmt}-{prec}", structure=name, steps=steps,
                                            format=fmt, precision=prec, reason=f"{why}; {pwhy}",
                                            family=family, level=level))
    kind = budget_kind(context.max_accuracy_drop)
    decisions.append(Decision(
        technique="search", decision="applied",
        reason=f"{kind} accuracy budget ({context.max_accuracy_drop} pp): each family's ratio/energy is "
               "bisected against accuracy measured on held-out data; survivors are exported at every "
               "precision and measured on the runtime" + (
                   f"; stop early once p50 <= {MARGIN:.0%} of {context.latency_budget_ms} ms"
                   if context.latency_budget_ms else "") + (
                   f"; stop early once size <= {MARGIN:.0%} of {context.size_budget_mb} MB"
                   if context.size_budget_mb else "")))
    return Plan(candidates=candidates, baseline_id=candidates[0].id, decisions=decisions, measure_locally=here,
                notes=notes, qat_formats=qat, qat_epochs=context.epochs)


MARGIN = 0.8  # a budget counts as "met with margin" at 80% of it: measurement noise stays inside the budget


def _finetune_step(context, has_train_data: bool, decisions) -> Step | None:
    if not context.retrain:
        decisions.append(Decision(technique="fine_tune", decision="skipped",
                                  reason="no retraining allowed: pruning capped at the ratio that measured "
                                         "accuracy allows; BN re-estimation and PTQ only"))
        return None
    if "fine_tune" not in TECHNIQUES or not _allowed(context, "fine_tune"):
        decisions.append(Decision(technique="fine_tune", decision="skipped",
                                  reason="fine-tuning not registered or excluded by --techniques"))
        return None
    if not has_train_data:
        decisions.append(Decision(technique="fine_tune", decision="skipped",
                                  reason="retraining allowed, but no training data was given"))
        return None
    decisions.append(Decision(technique="fine_tune", decision="applied",
                              reason="retraining allowed: every pruned/factorized model is fine-tuned with "
                                     "Hinton distillation from the original, so the search may go further"))
    return Step(technique="fine_tune", params={"epochs": context.epochs})


def _prune_structures(context, target, summary, has_calib_data, finetune, decisions, sensitivity=None
                      ) -> list[tuple]:
    round_to = channel_rounding(target, summary, decisions)
    if not _allowed(context, "prune"):
        decisions.append(Decision(technique="prune", decision="skipped", reason="excluded by --techniques"))
        return []
    if summary.prunable_groups == 0:
        why = "; ".join(summary.unprunable) or "no prunable channel groups found"
        decisions.append(Decision(technique="prune", decision="skipped", reason=why))
        return []
    ratios = RATIOS[(bool(finetune), budget_kind(context.max_accuracy_drop))]
    recal = has_calib_data and _allowed(context, "bn_recalibrate")
    out = []
    for crit in CRITERIA_NO_LABELS:
        for r in ratios:
            params = {"ratio": r, "importance": crit, "round_to": round_to}
            if sensitivity:
                params["sensitivity"] = sensitivity
            steps = [Step(technique="prune", params=params)]
            if recal:
                steps.append(Step(technique="bn_recalibrate", params={}))
            if finetune:
                steps.append(finetune.model_copy(deep=True))
            name = f"prune-{crit}{int(round(r * 100))}" + ("-ft" if finetune else "")
            out.append((name, steps, f"structured {crit.upper()} pruning at {r:.0%}" +
                        (" + distillation fine-tuning" if finetune else ""), f"prune-{crit}", r))
    goal = ("smaller weights and fewer MACs" if context.goal == "size" else
            f"dense {target.kind.upper()} kernels run faster")
    decisions.append(Decision(
        technique="prune", decision="applied",
        reason=f"structured channel pruning physically shrinks layers, so {goal}; ratios "
               f"{ratios[0]:.0%}..{ratios[-1]:.0%} " +
               ("(retraining recovers accuracy)" if finetune else
                "(no retraining: capped where measured accuracy allows)") +
               ("; per-layer ratios from the measured sensitivity (sensitive layers pruned less)"
                if sensitivity else "")))
    if recal:
        decisions.append(Decision(technique="bn_recalibrate", decision="applied",
                                  reason="pruning shifts activation statistics; BN re-estimated on unlabeled "
                                         "calibration data"))
    else:
        decisions.append(Decision(technique="bn_recalibrate", decision="skipped",
                                  reason="no calibration data given (random data would corrupt BN)"))
    return out


def _factorize_structures(context, target, summary, finetune, decisions) -> list[tuple]:
    if "factorize" not in TECHNIQUES:
        decisions.append(Decision(technique="factorize", decision="skipped",
                                  reason="no factorization technique registered in this version"))
        return []
    if not _allowed(context, "factorize"):
        decisions.append(Decision(technique="factorize", decision="skipped", reason="excluded by --techniques"))
        return []
    if target.kind == "gpu" and context.goal == "latency":
        decisions.append(Decision(technique="factorize", decision="skipped",
                                  reason="on GPUs a conv split into three smaller ones costs more launches "
                                         "than the MACs it saves; pruning and fp16/int8 pay off first"))
        return []
    if not (summary.layers.get("conv", 0) or summary.layers.get("linear", 0)):
        decisions.append(Decision(technique="factorize", decision="skipped", reason="no conv/linear layers"))
        return []
    out = []
    for e in ENERGIES[bool(finetune)]:
        steps = [Step(technique="factorize", params={"method": "tucker", "energy": e})]
        if finetune:
            steps.append(finetune.model_copy(deep=True))
        out.append((f"factorize-tucker{int(round(e * 100))}" + ("-ft" if finetune else ""), steps,
                    f"Tucker-2 factorization keeping {e:.0%} of each conv's energy", "factorize-tucker", 1 - e))
    decisions.append(Decision(
        technique="factorize", decision="applied",
        reason=f"{'size goal' if context.goal == 'size' else 'CPU latency goal'}: low-rank Tucker/SVD "
               "factorization of large layers cuts MACs and weights; energy kept chosen by measured accuracy"))
    return out
