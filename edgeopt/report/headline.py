"""The headline of a report: what the chosen model gains over the best plain conversion of the original (the
unmodified model at the fastest runtime/precision within the accuracy budget: what exporting alone gives),
with the gain over the original at fp32 beside it. INT8 of the unmodified model often gives most of an
fp32-relative speedup; only the first figure says what compression added. Under goal throughput the figure
that counts is images/s under the served load (batch, requests in flight), compared with the plain conversion
serving the most under the same load; the latencies are then said to be batch 1, one request. And the accuracy
lines: the selection figure the search optimized on, and the test figure it never saw."""

from __future__ import annotations

from edgeopt.decide.policy import EPS_PP
from edgeopt.report import Candidate, Headline, Report


def _within(c: Candidate, base: Candidate | None, limit: float) -> bool:
    """Within the accuracy budget on every split it was judged on (the baseline always is)."""
    if c is base:
        return True
    drop = c.accuracy_drop
    if drop is None and base is not None and base.accuracy is not None and c.accuracy is not None:
        drop = base.accuracy - c.accuracy  # a report not (yet) through selection
    if drop is None or drop > limit:
        return False
    return c.accuracy_drop_test is None or c.accuracy_drop_test <= limit


def plain_conversions(report: Report) -> list[Candidate]:
    """Measured conversions of the unmodified model (no model-stage step: the plan's `original@...`) within
    the accuracy budget, fastest first. A plain conversion rejected for another reason (a latency or size
    budget, slower than its fp32 twin) still shows what converting alone gives, so it stays a comparison."""
    base = report.baseline
    limit = report.context.max_accuracy_drop + EPS_PP
    pool = [c for c in [base, *report.candidates] if c is not None and not c.steps and c.latency_ms is not None
            and c.status in ("ok", "rejected") and c.accuracy is not None]
    return sorted((c for c in pool if _within(c, base, limit)), key=lambda c: c.latency_ms.p50)


def plain_by_throughput(report: Report) -> list[Candidate]:
    """The plain conversions within the budget measured under the served load (goal throughput), the most
    images/s first."""
    base = report.baseline
    limit = report.context.max_accuracy_drop + EPS_PP
    pool = [c for c in [base, *report.candidates] if c is not None and not c.steps and c.throughput is not None
            and c.status in ("ok", "rejected") and c.accuracy is not None and _within(c, base, limit)]
    return sorted(pool, key=lambda c: -c.throughput.images_s)


def best_plain(report: Report) -> Candidate | None:
    found = plain_conversions(report)
    return found[0] if found else None


def headline(report: Report) -> Headline | None:
    """The chosen model against the best plain conversion and against the baseline (fp32); None when nothing
    was chosen or measured."""
    chosen, base = report.chosen_candidate, report.baseline
    if chosen is None or chosen.latency_ms is None or not chosen.latency_ms.p50:
        return None
    plain = best_plain(report)
    ms = chosen.latency_ms.p50
    served = plain_by_throughput(report) if chosen.throughput is not None else []
    return Headline(
        best_plain_throughput=served[0].id if served else None,
        images_s_vs_best_plain=round(chosen.throughput.images_s / served[0].throughput.images_s, 4)
        if served and served[0].throughput.images_s > 0 else None,
        chosen=chosen.id, best_plain=plain.id if plain is not None else None,
        speedup_vs_best_plain=round(plain.latency_ms.p50 / ms, 4) if plain is not None else None,
        fp32=base.id if base is not None and base.latency_ms else None,
        speedup_vs_fp32=round(base.latency_ms.p50 / ms, 4) if base is not None and base.latency_ms else None,
        chosen_is_best_plain=plain is not None and plain.id == chosen.id, latency_source=chosen.latency_source)


def speed_line(report: Report) -> str | None:
    """One line (plain text), shared by the CLI summary, report.md and report.html."""
    h = report.model.headline or headline(report)
    if h is None:
        return None
    chosen = report.chosen_candidate
    ms = chosen.latency_ms.p50 if chosen is not None and chosen.latency_ms else None
    parts = [f"p50 {ms:.3f} ms ({h.latency_source or 'measured'})" if ms is not None else "p50 —"]
    serving = serving_line(report)
    if serving:  # goal throughput: its own figure first; the latencies after it are batch 1, one request
        return f"{serving}; batch-1 latency (goal latency's figure): " + _latency_line(report, h, parts)
    return _latency_line(report, h, parts)


def serving_line(report: Report) -> str | None:
    """Goal throughput: the chosen model's images/s under the served load, against the plain conversion of the
    original serving the most under the same load (None under the other goals, or unmeasured)."""
    h = report.model.headline or headline(report)
    chosen = report.chosen_candidate
    if h is None or chosen is None or chosen.throughput is None:
        return None
    t = chosen.throughput
    line = (f"{t.images_s:.1f} images/s under batch {t.batch}, {t.streams} requests in flight (goal throughput; "
            f"p99 {t.p99_ms:.2f} ms per request)")
    plain = report.candidate(h.best_plain_throughput)
    if plain is None or plain.throughput is None or h.images_s_vs_best_plain is None:
        return line + "; no plain conversion of the original was measured under that load within the budget"
    if plain.id == chosen.id:
        return line + ": the chosen model IS the best plain conversion of the original under that load"
    return line + (f": {h.images_s_vs_best_plain:.2f}× the best plain conversion of the original under the same "
                   f"load ({plain.id}, {plain.throughput.images_s:.1f} images/s)")


def _latency_line(report: Report, h: Headline, parts: list[str]) -> str:
    plain = report.candidate(h.best_plain)
    if h.chosen_is_best_plain and h.chosen == h.fp32:
        return "; ".join([*parts, "1.00×: the chosen model is the original at fp32 (the baseline); no conversion "
                                  "or compression measured faster within the budget"])
    if h.chosen_is_best_plain:
        parts.append("1.00× vs the best plain conversion of the original: the chosen model IS that conversion "
                     "(no compression beyond the runtime's own paid off)")
    elif plain is not None and h.speedup_vs_best_plain is not None:
        parts.append(f"{h.speedup_vs_best_plain:.2f}× faster than the best plain conversion of the original "
                     f"({plain.id}, {plain.latency_ms.p50:.3f} ms)")
    else:
        parts.append("no plain conversion of the original was measured within the budget")
    base = report.candidate(h.fp32)
    if base is not None and h.speedup_vs_fp32 is not None:
        parts.append(f"{h.speedup_vs_fp32:.2f}× faster than the original at fp32 ({base.id}, "
                     f"{base.latency_ms.p50:.3f} ms)")
    return "; ".join(parts)


def accuracy_line(report: Report) -> str | None:
    """Selection vs test figure of the chosen candidate, or the loud note that there is no test split."""
    chosen, base = report.chosen_candidate, report.baseline
    if chosen is None:
        return None

    def pct(v: float | None) -> str:
        return "—" if v is None else f"{v:.2f}%"

    def pp(v: float | None) -> str:
        return "—" if v is None else f"{v:+.2f} pp"

    metric = chosen.metric or (base.metric if base is not None else None) or "accuracy"
    sel = (f"accuracy ({metric}): selection {pct(chosen.accuracy)} vs baseline "
           f"{pct(base.accuracy if base is not None else None)} (drop {pp(chosen.accuracy_drop or 0.0)}; the "
           "figure the search optimized on)")
    ts = report.model.test_split
    if ts is None:
        return sel
    if ts.split == "none":
        return f"{sel}; {ts.note}"
    if chosen.accuracy_test is None:
        return f"{sel}; test split ({ts.images} images): not evaluated"
    ci = f", 95 % CI {ts.ci95[0]:.1f}–{ts.ci95[1]:.1f}%" if ts.chosen == chosen.id and ts.ci95 else ""
    return (f"{sel}; test {pct(chosen.accuracy_test)} vs baseline "
            f"{pct(base.accuracy_test if base is not None else None)} (drop {pp(chosen.accuracy_drop_test)}) "
            f"on {ts.images} test images the search never saw{ci}")


def latency_check_line(report: Report) -> str | None:
    """What measuring the choice again found: each model's p50 there, and the search's figure beside it."""
    check = report.model.latency_check
    if check is None:
        return None
    figures = ", ".join(f"{cid} {check.p50[cid]:.3f} ms (search: {check.search_p50[cid]:.3f})"
                        for cid in check.measured)
    return f"latency check: {check.note} (fresh, interleaved; its figures are the ones above): {figures}"
