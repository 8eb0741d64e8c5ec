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


def precision_pairs(context, target, runtimes, precisions_of_format, decisions, format_of_runtime: dict,
                    calibrated: bool = True) -> list[tuple[str, str, str]]:
    """(format, precision, why) per runtime: what the backend can produce AND the target's hardware runs well."""
    pairs: list[tuple[str, str, str]] = []
    for rt in runtimes:
        fmt = format_of_runtime[rt]
        for prec in precisions_of_format.get(fmt, ("fp32",)):
            if prec == "fp32":
                pairs.append((fmt, prec, f"{rt} fp32: the reference precision"))
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
    produced = {_needed_support(p) for _, p, _ in pairs}
    for prec in target.precisions:
        if prec != "fp32" and prec not in produced and not any(d.technique.startswith(f"quantize:{prec}")
                                                               for d in decisions):
            decisions.append(Decision(
                technique=f"quantize:{prec}", decision="skipped",
                reason=f"{target.name} accelerates {prec}, but no registered backend for "
                       f"{', '.join(runtimes)} produces it here"))
    return pairs
