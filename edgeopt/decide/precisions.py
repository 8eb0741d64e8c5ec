"""Small rules shared by the planner's proposers (L3, pure: no backend imports): the accuracy-budget kind,
--techniques filtering, and which (format, precision) pairs a target's hardware makes worth measuring."""

from __future__ import annotations

from edgeopt.config import DeployContext
from edgeopt.report import Decision
from edgeopt.techniques import TECHNIQUES

TIGHT_PP, LOOSE_PP = 0.5, 2.0


def budget_kind(max_drop: float) -> str:
    return "tight" if max_drop <= TIGHT_PP else "loose" if max_drop >= LOOSE_PP else "normal"


def allowed(context: DeployContext, technique: str) -> bool:
    """Whether --techniques (when given) lets the planner use `technique` (aliases count)."""
    if context.techniques is None:
        return True
    return TECHNIQUES.canonical(technique) in {TECHNIQUES.canonical(t) for t in context.techniques}


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
    if not allowed(context, "quantize"):
        decisions.append(Decision(technique=tech, decision="skipped", reason="excluded by --techniques"))
        return None
    return (fmt, WEIGHT_ONLY, f"{rt} {WEIGHT_ONLY}: weight-only INT8, ~4x smaller weights whatever the compute "
                              "units (no calibration needed); latency measured as always")
# ------------------------------------------------------------------------------------------------------------


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
            elif not allowed(context, "quantize"):
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
