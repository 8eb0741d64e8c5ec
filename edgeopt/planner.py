"""The decision layer: deploy context + target profile + model summary -> Plan.

Pure: no backend imports, no measurement. It encodes FIELD_NOTES' decision table; every candidate says
why it was proposed and every technique left out says why. The pipeline then proves or rejects each
candidate by measurement — the planner proposes, it does not promise."""

from __future__ import annotations

from pydantic import BaseModel, Field

from edgeopt.config import DeployContext, ModelSummary
from edgeopt.report import Decision, Step
from edgeopt.targets import TargetProfile
from edgeopt.techniques import TECHNIQUES

# Prune ratios tried without retraining: mild, since accuracy cannot be recovered (FIELD_NOTES: "no
# retraining: mild pruning, ratio chosen by measured accuracy").
RATIOS_NO_RETRAIN = (0.1, 0.15, 0.2, 0.3, 0.4, 0.5)
RATIOS_RETRAIN = (0.3, 0.5, 0.7)
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


class Plan(BaseModel):
    candidates: list[CandidateSpec]
    baseline_id: str
    decisions: list[Decision] = Field(default_factory=list)
    measure_locally: bool = True
    notes: list[str] = Field(default_factory=list)

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


def _allowed(context: DeployContext, technique: str) -> bool:
    if context.techniques is None:
        return True
    return TECHNIQUES.canonical(technique) in {TECHNIQUES.canonical(t) for t in context.techniques}


def plan(context: DeployContext, target: TargetProfile, summary: ModelSummary, local: TargetProfile,
         installed_runtimes: list[str], has_calib_data: bool = False,
         precisions_of_format: dict[str, tuple[str, ...]] | None = None) -> Plan:
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
        if FORMAT_OF_RUNTIME.get(first) not in precisions_of_format:
            notes.append(f"{first} artifacts cannot be built on this machine: exporting ONNX, from which "
                         f"{first} builds its engine on the device")
            first = "onnxruntime"
        runtimes = [first]
        notes.append(f"{target.name} is not this machine: latencies are roofline estimates")
    if not runtimes:
        runtimes = ["onnxruntime"]

    # 2. precisions per runtime: what the backend can produce AND the target's hardware accelerates
    pairs: list[tuple[str, str, str]] = []  # (format, precision, why)
    for rt in runtimes:
        fmt = FORMAT_OF_RUNTIME[rt]
        for prec in precisions_of_format.get(fmt, ("fp32",)):
            if prec == "fp32":
                pairs.append((fmt, prec, f"{rt} fp32: the reference precision"))
            elif prec not in target.precisions:
                decisions.append(Decision(technique=f"quantize:{prec}@{rt}", decision="skipped",
                                          reason=f"{target.name} has no {prec} hardware support"))
            elif not _allowed(context, "quantize"):
                decisions.append(Decision(technique=f"quantize:{prec}@{rt}", decision="skipped",
                                          reason="excluded by --techniques"))
            else:
                pairs.append((fmt, prec, f"{rt} {prec}: {target.name} accelerates {prec}; kept only if "
                                         "measured faster than fp32 within the accuracy budget"))

    # 3. structures: the original model, then structured pruning at several ratios
    structures: list[tuple[str, list[Step], str]] = [("original", [], "unchanged model")]
    round_to = channel_rounding(target, summary, decisions)
    if not _allowed(context, "prune"):
        decisions.append(Decision(technique="prune", decision="skipped", reason="excluded by --techniques"))
    elif summary.prunable_groups == 0:
        why = "; ".join(summary.unprunable) or "no prunable channel groups found"
        decisions.append(Decision(technique="prune", decision="skipped", reason=why))
    else:
        ratios = RATIOS_RETRAIN if context.retrain else RATIOS_NO_RETRAIN
        recal = has_calib_data and _allowed(context, "bn_recalibrate")
        for crit in CRITERIA_NO_LABELS:
            for r in ratios:
                steps = [Step(technique="prune", params={"ratio": r, "importance": crit, "round_to": round_to})]
                if recal:
                    steps.append(Step(technique="bn_recalibrate", params={}))
                structures.append((f"prune-{crit}{int(round(r * 100))}", steps,
                                   f"structured {crit.upper()} pruning at {r:.0%}"))
        decisions.append(Decision(
            technique="prune", decision="applied",
            reason=f"structured channel pruning physically shrinks layers, so dense {target.kind.upper()} "
                   f"kernels run faster; "
                   + ("ratios up to 70% since retraining is allowed" if context.retrain else
                      "no retraining: ratios capped at 50% and kept only where measured accuracy allows")))
        if recal:
            decisions.append(Decision(technique="bn_recalibrate", decision="applied",
                                      reason="pruning shifts activation statistics; BN re-estimated on "
                                             "unlabeled calibration data"))
        else:
            decisions.append(Decision(technique="bn_recalibrate", decision="skipped",
                                      reason="no calibration data given (random data would corrupt BN)"))
    if context.retrain:
        decisions.append(Decision(technique="fine_tune", decision="skipped",
                                  reason="retraining was requested, but this version has no fine-tuning "
                                         "loop yet: candidates are searched without retraining"))
    sparse = bool(target.sparse_support)
    decisions.append(Decision(
        technique="unstructured_pruning", decision="rejected",
        reason=(f"{target.name} supports {', '.join(target.sparse_support)} sparsity only with retraining; "
                "not proposed here" if sparse else
                "dense kernels gain nothing from zeroed weights: no latency benefit on this target")))

    candidates: list[CandidateSpec] = []
    for name, steps, why in structures:
        for fmt, prec, pwhy in pairs:
            candidates.append(CandidateSpec(id=f"{name}@{fmt}-{prec}", structure=name, steps=steps,
                                            format=fmt, precision=prec, reason=f"{why}; {pwhy}"))
    baseline = candidates[0]
    return Plan(candidates=candidates, baseline_id=baseline.id, decisions=decisions, measure_locally=here,
                notes=notes)
