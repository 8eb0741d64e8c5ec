"""Which precisions the planner proposes (L3, pure: no backend imports): the (format, precision) pairs a
target's hardware makes worth measuring, and the formats whose INT8 may be retried with QAT."""

from __future__ import annotations

from edgeopt.config import DeployContext
from edgeopt.decide import policy
from edgeopt.report import Decision
from edgeopt.techniques import TECHNIQUES, allowed


def _needed_support(prec: str) -> str:
    return "int8" if prec.startswith("int8") else prec  # int8, int8_weights, int8_dynamic: all need int8 units


# --- weight-only INT8 (size goals) --------------------------------------------------------------------------
WEIGHT_ONLY = "int8w"  # int8 weights dequantized at run time: ~4x smaller artifact, float compute


def weight_only_pair(context, rt: str, fmt: str, decisions) -> tuple[str, str, str] | None:
    """Weight-only INT8 needs no int8 compute units and no calibration data: worth proposing whenever size
    counts (size goal or size budget), on any hardware; for a latency goal it is skipped (it computes in
    float, plus the dequantization)."""
    tech = f"quantize:{WEIGHT_ONLY}@{rt}"
    if context.goal != "size" and not context.size_budget_mb:
        decisions.append(Decision(technique=tech, decision="skipped",
                                  reason="weight-only INT8 shrinks the artifact but computes in float: "
                                         "proposed for a size goal or size budget only"))
        return None
    if not allowed(context.techniques, "quantize"):
        decisions.append(Decision(technique=tech, decision="skipped", reason="excluded by --techniques"))
        return None
    return (fmt, WEIGHT_ONLY, f"{rt} {WEIGHT_ONLY}: weight-only INT8, ~4x smaller weights whatever the compute "
                              "units (no calibration needed); latency measured as always")


def precision_pairs(context, target, runtimes, precisions_of_format, decisions, format_of_runtime: dict,
                    calibrated: bool = True) -> list[tuple[str, str, str]]:
    """(format, precision, why) per runtime: what the backend can produce AND the target's hardware runs well."""
    pairs: list[tuple[str, str, str]] = []
    for rt in runtimes:
        fmt = format_of_runtime[rt]
        for prec in precisions_of_format.get(fmt, ("fp32",)):
            if prec == "fp32":
                pairs.append((fmt, prec, f"{rt} fp32: the reference precision"))
            elif prec == WEIGHT_ONLY:
                pair = weight_only_pair(context, rt, fmt, decisions)
                pairs.extend([pair] if pair else [])
            elif _needed_support(prec) not in target.precisions:
                decisions.append(Decision(technique=f"quantize:{prec}@{rt}", decision="skipped",
                                          reason=f"{target.name} has no {_needed_support(prec)} hardware "
                                                 "support: a slower or emulated path would not pay off"))
            elif not allowed(context.techniques, "quantize"):
                decisions.append(Decision(technique=f"quantize:{prec}@{rt}", decision="skipped",
                                          reason="excluded by --techniques"))
            elif prec.startswith("int8") and prec not in ("int8_weights", "int8_dynamic") and not calibrated:
                decisions.append(Decision(technique=f"quantize:{prec}@{rt}", decision="skipped",
                                          reason="INT8 scales need representative calibration inputs: pass "
                                                 "--data / calib_data (or --calib random to accept meaningless "
                                                 "scales)"))
            else:
                gain = ("smaller weights on disk" if context.goal == "size" else
                        f"{target.name} accelerates {_needed_support(prec)}")
                pairs.append((fmt, prec, f"{rt} {prec}: {gain}; kept only if measured faster than fp32 "
                                         "within the accuracy budget"))
    produced = {_needed_support(p) for _, p, _ in pairs if p != WEIGHT_ONLY}
    for prec in target.precisions:
        if prec != "fp32" and prec not in produced and not any(d.technique.startswith(f"quantize:{prec}")
                                                               for d in decisions):
            decisions.append(Decision(
                technique=f"quantize:{prec}", decision="skipped",
                reason=f"{target.name} accelerates {prec}, but no registered backend for "
                       f"{', '.join(runtimes)} produces it here"))
    return pairs


def qat_formats(context: DeployContext, pairs: list[tuple[str, str, str]], has_train_data: bool,
                decisions: list[Decision]) -> list[str]:
    """Formats that get a QAT candidate when their INT8 post-training quantization breaks the budget
    (decided by measurement in the search: the planner only arms it)."""
    int8 = [fmt for fmt, prec, _ in pairs if prec == "int8"]
    if not context.retrain:
        why, verdict = ("quantization-aware training needs retraining: post-training quantization with "
                        "calibration data only"), "rejected"
    elif "qat" not in TECHNIQUES or not allowed(context.techniques, "qat"):
        why, verdict = "excluded by --techniques", "skipped"
    elif not int8:
        why, verdict = "no INT8 precision is proposed for this target and runtimes", "skipped"
    elif not has_train_data:
        why, verdict = "no training data was given", "skipped"
    else:
        decisions.append(Decision(
            technique="qat", decision="applied",
            reason="armed: if INT8 post-training quantization of the most compressed structure loses more than "
                   "the budget, it is fine-tuned with fake quantization (distilled from the original) and "
                   f"exported as INT8 Q/DQ ({', '.join(int8)})"))
        return int8
    decisions.append(Decision(technique="qat", decision=verdict, reason=why))
    return []


def qat_choice(measured: list[tuple[str, int, float | None, str, float | None, str | None]], base_accuracy: float,
               budget: float) -> tuple[str | None, str]:
    """Which structure gets quantization-aware training, decided on measurements. `measured` holds one row
    per structure: (structure, MACs, fp32 accuracy, INT8 status, INT8 accuracy, what failed of the INT8 twin: a
    report Candidate.failure, "verification" when its outputs were too far off PyTorch's).

    The most compressed structure whose fp32 candidate holds the budget but whose PTQ INT8 twin breaks it
    (accuracy, or outputs too far off to pass verification), unless a structure at least as small holds the
    budget with PTQ. Returns (structure, what PTQ lost) or (None, why QAT is skipped)."""
    ptq_ok, ptq_bad = [], []
    for structure, macs, fp32_acc, q_status, q_acc, q_failure in measured:
        if fp32_acc is None or base_accuracy - fp32_acc > budget + policy.EPS_PP:
            continue
        if q_status == "ok" and q_acc is not None:
            drop = base_accuracy - q_acc
            (ptq_ok if drop <= budget + policy.EPS_PP else ptq_bad).append((macs, structure, f"{drop:.2f} pp"))
        elif q_status == "failed" and q_failure == "verification":  # INT8 outputs too far off
            ptq_bad.append((macs, structure, "its verification"))
    if not ptq_bad:
        return None, ("INT8 post-training quantization stays within the accuracy budget" if ptq_ok else
                      "no structure within the budget has a measured INT8 twin")
    macs, structure, drop = min(ptq_bad)
    if ptq_ok and min(ptq_ok)[0] <= macs:
        return None, (f"PTQ INT8 of {structure} breaks the budget ({drop}), but {min(ptq_ok)[1]} is as small and "
                      "holds the budget with PTQ")
    return structure, drop
