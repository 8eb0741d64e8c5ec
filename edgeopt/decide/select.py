"""Select: reject what breaks the budgets (accuracy, latency, size) or what a reduced precision does not
earn (slower than its fp32 twin), then pick the fastest (goal latency) or smallest (goal size). The rules
are decide/policy.py's (EPS_PP, REDUCED_PRECISION_MUST_BE_FASTER, RANK_BY)."""

from __future__ import annotations

from edgeopt.config import DeployContext
from edgeopt.decide import policy
from edgeopt.report import Candidate, Report


def _twin_key(c: Candidate) -> str:
    return c.id.rsplit("-", 1)[0]  # "prune30@openvino-bf16" -> "prune30@openvino"


def select(report: Report, context: DeployContext) -> None:
    base = report.baseline
    pool = [c for c in [base, *report.candidates] if c is not None]
    if base is not None and base.status == "ok":
        for c in pool:
            if c.status == "ok" and c.accuracy is not None and base.accuracy is not None:
                c.accuracy_drop = round(base.accuracy - c.accuracy, 4)
    fp32 = {_twin_key(c): c for c in pool if c.status == "ok" and c.precision == "fp32"}
    for c in pool:
        if c.status != "ok":
            continue
        if c.accuracy_drop is not None and c.accuracy_drop > context.max_accuracy_drop + policy.EPS_PP:
            c.status = "rejected"
            c.reason = f"accuracy drop {c.accuracy_drop:.2f} pp > budget {context.max_accuracy_drop} pp"
            continue
        twin = fp32.get(_twin_key(c))
        if (policy.REDUCED_PRECISION_MUST_BE_FASTER and c.precision != "fp32" and twin is not None
                and c.latency_ms and twin.latency_ms and c.latency_ms.p50 >= twin.latency_ms.p50):
            c.status = "rejected"
            c.reason = (f"measured slower than fp32 ({c.latency_ms.p50:.3f} vs "
                        f"{twin.latency_ms.p50:.3f} ms p50)")
            continue
        if context.latency_budget_ms and c.latency_ms and c.latency_ms.p50 > context.latency_budget_ms:
            c.status = "rejected"
            c.reason = f"p50 {c.latency_ms.p50:.3f} ms > latency budget {context.latency_budget_ms} ms"
            continue
        if context.size_budget_mb and c.shipped_bytes and c.shipped_bytes / 1e6 > context.size_budget_mb:
            c.status = "rejected"
            c.reason = f"size {c.shipped_bytes / 1e6:.2f} MB (compressed) > size budget {context.size_budget_mb} MB"
    eligible = [c for c in pool if c.status == "ok" and c.latency_ms is not None]
    if not eligible:
        report.chosen = None
        return
    def measure(c: Candidate, what: str) -> float:
        return c.latency_ms.p50 if what == "p50" else (c.shipped_bytes or 0)

    order = policy.RANK_BY[context.goal]
    best = min(eligible, key=lambda c: tuple(measure(c, what) for what in order))
    report.chosen = best.id
    if not best.reason:
        best.reason = "chosen: " + ("smallest" if context.goal == "size" else "fastest") + " within budget"
