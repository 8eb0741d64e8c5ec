"""Select: reject what breaks the budgets (accuracy, latency, size) or what a reduced precision does not
earn (slower than its fp32 twin), then pick the fastest (goal latency), smallest (goal size) or the one serving
the most images/s under the served load (goal throughput: its images/s and per-request p99). The rules
are decide/policy.py's (EPS_PP, REDUCED_PRECISION_MUST_BE_FASTER, RANK_BY). The search and `select` see only
the selection part of the held-out data; `judge_on_test` then judges the final choice on the test part."""

from __future__ import annotations

from collections.abc import Callable

from edgeopt.config import DeployContext
from edgeopt.decide import policy
from edgeopt.errors import BackendMissingError, ConfigError, first_line
from edgeopt.report import Candidate, Decision, Report


def _twin_key(c: Candidate) -> tuple[str, str] | None:
    """The same model in the same format: what a reduced precision is compared with at fp32. None for a
    candidate that does not record them (a report written before they were recorded): it has no twin."""
    if c.structure is None or c.format is None:
        return None
    return c.structure, c.format


def select(report: Report, context: DeployContext) -> None:
    base = report.baseline
    pool = [c for c in [base, *report.candidates] if c is not None]
    if base is not None and base.status == "ok":
        for c in pool:
            if c.status == "ok" and c.accuracy is not None and base.accuracy is not None:
                c.accuracy_drop = round(base.accuracy - c.accuracy, 4)
    # goal throughput ranks by what was measured under the served load; where nothing could be (a target that
    # is not this machine: latency only estimated or measured remotely), by latency as before
    serving = context.goal == "throughput" and any(c.throughput is not None for c in pool)
    fp32 = {_twin_key(c): c for c in pool if c.status == "ok" and c.precision == "fp32" and _twin_key(c)}
    for c in pool:
        if c.status != "ok":
            continue
        if c.accuracy_drop is not None and c.accuracy_drop > context.max_accuracy_drop + policy.EPS_PP:
            c.status = "rejected"
            c.reason = f"accuracy drop {c.accuracy_drop:.2f} pp > budget {context.max_accuracy_drop} pp"
            continue
        twin = fp32.get(_twin_key(c))
        if serving:
            why = _serving_problem(c, twin, context)
            if why:
                c.status, c.reason = "rejected", why
                continue
        elif (policy.REDUCED_PRECISION_MUST_BE_FASTER and c.precision != "fp32" and twin is not None
                and c.latency_ms and twin.latency_ms and c.latency_ms.p50 >= twin.latency_ms.p50):
            c.status = "rejected"
            c.reason = (f"measured slower than fp32 ({c.latency_ms.p50:.3f} vs "
                        f"{twin.latency_ms.p50:.3f} ms p50)")
            continue
        if not serving and context.latency_budget_ms and c.latency_ms and c.latency_ms.p50 > context.latency_budget_ms:
            c.status = "rejected"
            c.reason = f"p50 {c.latency_ms.p50:.3f} ms > latency budget {context.latency_budget_ms} ms"
            continue
        if context.size_budget_mb and c.shipped_bytes and c.shipped_bytes / 1e6 > context.size_budget_mb:
            c.status = "rejected"
            c.reason = f"size {c.shipped_bytes / 1e6:.2f} MB (compressed) > size budget {context.size_budget_mb} MB"
    eligible = [c for c in pool if c.status == "ok" and c.latency_ms is not None
                and (not serving or c.throughput is not None)]
    if not eligible:
        report.chosen = None
        return
    def figure(c: Candidate, what: str) -> float:
        """The measured figure itself: images/s, p50 ms or shipped bytes."""
        if what == "images_s":
            return c.throughput.images_s
        return c.latency_ms.p50 if what == "p50" else (c.shipped_bytes or 0)

    order = policy.RANK_BY[context.goal if serving or context.goal != "throughput" else "latency"]

    def rank(c: Candidate) -> tuple:  # smaller is better: images/s counts negated
        return tuple(-figure(c, what) if what == "images_s" else figure(c, what) for what in order)

    best = fastest = min(eligible, key=rank)
    if order[0] in ("p50", "images_s"):  # a measured speed: within noise of the best, the more accurate wins
        first = figure(fastest, order[0])
        tied = [c for c in eligible if measured_tie(first, figure(c, order[0]))]
        best = max(tied, key=lambda c: (c.accuracy if c.accuracy is not None else float("-inf"),
                                        tuple(-v for v in rank(c))))
    report.chosen = best.id
    if not best.reason:
        what = "smallest" if context.goal == "size" else "most images/s" if serving else "fastest"
        best.reason = f"chosen: {what} within budget" if best is fastest else (
            f"chosen: within {policy.MEASURED_TIE:.0%} of the {what} ({fastest.id}: a difference that small is "
            f"measurement noise) and more accurate ({best.accuracy:.2f} vs "
            + (f"{fastest.accuracy:.2f})" if fastest.accuracy is not None else "not measured)"))


def measured_tie(best: float, other: float) -> bool:
    """Two measured speeds within noise of the best one (policy.MEASURED_TIE): then the more accurate wins."""
    return abs(other - best) <= policy.MEASURED_TIE * best


def _serving_problem(c: Candidate, twin: Candidate | None, context: DeployContext) -> str | None:
    """Why a candidate fails a throughput goal: not measured under the load, a reduced precision serving no
    more images/s than its fp32 twin, or a request's p99 under the load beyond the latency budget."""
    t = c.throughput
    if t is None:
        return "no throughput measured under the served load (goal throughput)"
    if (policy.REDUCED_PRECISION_MUST_BE_FASTER and c.precision != "fp32" and twin is not None
            and twin.throughput is not None and t.images_s <= twin.throughput.images_s):
        return f"serves no more than fp32 ({t.images_s:.1f} vs {twin.throughput.images_s:.1f} images/s)"
    if context.latency_budget_ms and t.p99_ms > context.latency_budget_ms:
        return (f"p99 {t.p99_ms:.3f} ms per request under load (batch {t.batch}, {t.streams} streams) > "
                f"latency budget {context.latency_budget_ms} ms")
    return None


def judge_on_test(report: Report, context: DeployContext, evaluate: Callable[[Candidate], float | None]
                  ) -> list[Decision]:
    """The accuracy budget of the final choice, judged on the test part of the held-out data (which the
    search never saw). `evaluate(c)` -> c's accuracy on the test part, or None when there is no test part or
    c cannot be run. After `select`: the baseline is evaluated; the chosen candidate is evaluated, and when
    its test drop breaks the budget it is rejected and the next best is chosen, until one holds (the baseline
    always does: its drop is zero by definition); then the best plain conversion of the original is
    evaluated the same way, so the headline compares two figures judged alike. Returns the decisions."""
    from edgeopt.report.headline import best_plain

    base = report.baseline
    if base is None or base.accuracy is None:
        return []
    base.accuracy_test = evaluate(base)
    if base.accuracy_test is None:
        return []
    base.accuracy_drop_test = 0.0
    limit = context.max_accuracy_drop + policy.EPS_PP
    tested = {base.id}
    decisions: list[Decision] = []

    def judged(c: Candidate) -> bool:
        """Evaluate c on the test part; False when its test drop breaks the budget (it is then rejected)."""
        tested.add(c.id)
        try:
            c.accuracy_test = evaluate(c)
        except (ConfigError, BackendMissingError):  # the user's to fix (e.g. their metric raised): stop
            raise
        except Exception as e:  # ran on the selection part, not on these images: not a choice to ship
            why = f"evaluation on the test split failed: {first_line(e, 160)}"
            if c.status == "ok":
                c.status, c.reason = "rejected", why
            decisions.append(Decision(technique="test_split", decision="rejected", reason=f"{c.id}: {why}"))
            return False
        if c.accuracy_test is None:
            return True  # cannot be run again here (e.g. restored without its artifact): judged on selection
        c.accuracy_drop_test = round(base.accuracy_test - c.accuracy_test, 4)
        if c.accuracy_drop_test <= limit:
            return True
        why = (f"accuracy drop on the test split {c.accuracy_drop_test:.2f} pp > budget {context.max_accuracy_drop}"
               f" pp (on the selection split: {c.accuracy_drop or 0.0:.2f} pp)")
        was_chosen = c.id == report.chosen
        if c.status == "ok":
            c.status, c.reason = "rejected", why
        decisions.append(Decision(technique="test_split", decision="rejected", reason=f"{c.id}: {why}" + (
            "; the next best candidate is tried" if was_chosen else "")))
        return False

    pool = [base, *report.candidates]
    for _ in range(len(pool)):  # each round rejects one candidate: bounded by their number
        chosen = report.chosen_candidate
        if chosen is None or chosen.id in tested or judged(chosen):
            break
        report.chosen = None
        select(report, context)
    for _ in range(len(pool)):
        plain = best_plain(report)
        if plain is None or plain.id in tested:
            break
        judged(plain)
    return decisions


def _exactness(precision: str) -> int:
    """0 for fp32, 1 for the half precisions, 2 for the INT8 ones: lower is closer to the fp32 reference."""
    return 2 if "int8" in precision else 1 if "16" in precision else 0


def cannot_win(measured: list[tuple[str, str, float]],
               broke: set[tuple[str, str]] = frozenset()) -> dict[tuple[str, str], str]:
    """The (format, precision) pairs that cannot win on a compressed structure, judged on the original's
    measured p50 (`measured`: (format, precision, p50 ms) per candidate of the original): those more than
    policy.CANNOT_WIN_FACTOR slower than another pair at least as exact. A pair whose original broke the
    accuracy budget (`broke`) rules nothing out: YOLOv8n lost 2.9 pp at OpenVINO INT8 and none at ONNX Runtime
    INT8, which is exact enough though slower. Returns pair -> why."""
    out: dict[tuple[str, str], str] = {}
    for fmt, prec, ms in measured:
        better = [(f, p, m) for f, p, m in measured if (f, p) != (fmt, prec) and (f, p) not in broke
                  and _exactness(p) <= _exactness(prec) and m * policy.CANNOT_WIN_FACTOR < ms]
        if better:
            f, p, m = min(better, key=lambda r: r[2])
            out[(fmt, prec)] = (f"not tried: {fmt} {prec} cannot win: on the original it ran at {ms:.3f} ms p50, "
                                f"{ms / m:.1f}x {f} {p} ({m:.3f} ms), which is at least as exact")
    return out
