"""report.md and the tables every front end shows (CLI, markdown, html): one row per candidate."""

from __future__ import annotations

from edgeopt.report import Candidate, Report
from edgeopt.report.headline import accuracy_line, latency_check_line, speed_line


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "—" if v is None else format(v, spec)


def device_kinds(report: Report) -> list[str]:
    """The device kinds a fleet run measured on, in order (a p50 column each); [] for one kind or none."""
    kinds = (report.environment.get("device") or {}).get("kinds") or []
    return list(kinds) if len(kinds) > 1 else []


def table_p50(report: Report, c: Candidate | None) -> float | None:
    """The p50 the candidates table (and the plot) shows for `c`: every row from one measurement, the one the
    selection used. The latency check measures the chosen model and the plain conversions again afterwards
    (the speed line's figures, the ones report.json keeps for them); mixed into the table, a candidate the
    selection found slower could show faster than the one chosen, and its speedup would divide figures of two
    measurements. Their selection figures are the check's `search_p50`."""
    if c is None or c.latency_ms is None:
        return None
    check = report.model.latency_check
    searched = check.search_p50 if check is not None else {}
    return searched.get(c.id, c.latency_ms.p50)


def candidate_row(c: Candidate, report: Report, kinds: list[str] = ()) -> list[str]:
    lat, base = table_p50(report, c), table_p50(report, report.baseline)
    speed = f"{base / lat:.2f}×" if lat and base else "—"
    est = " (est.)" if c.latency_source == "estimated" else ""
    acc = "—" if c.accuracy is None else f"{c.accuracy:.2f}% {c.metric or ''}".strip()
    drop = "—" if c.accuracy_drop is None else f"{c.accuracy_drop:+.2f}"
    drop_test = "—" if c.accuracy_drop_test is None else f"{c.accuracy_drop_test:+.2f}"
    size = "—" if c.size_bytes is None else f"{c.size_bytes / 1e6:.2f}"
    if c.size_compressed_bytes is not None:
        size += f" ({c.size_compressed_bytes / 1e6:.2f} zip)"
    macs = "—" if c.macs is None else f"{c.macs / 1e6:.1f}M"
    by_kind = getattr(c, "latency_by_device", None) or {}
    lats = [_fmt(by_kind.get(k, {}).get("p50")) for k in kinds] if kinds else [_fmt(lat) + est]
    return [c.id, c.status, f"{c.runtime or '—'}/{c.precision_executed or c.precision or '—'}",
            *lats, speed, acc, drop, drop_test, size, macs, c.reason]


# accuracy and "drop pp" are on the selection part of the held-out data (what the search optimized on);
# "test drop pp" on the test part, for the candidates judged there at the end
TABLE_HEADER = ["candidate", "status", "runtime/precision", "p50 ms", "speedup vs fp32", "accuracy",
                "drop pp", "test drop pp", "size MB", "MACs", "reason"]


def table_header(kinds: list[str] = ()) -> list[str]:
    """TABLE_HEADER, with a p50 column per device kind for a fleet of several kinds."""
    i = TABLE_HEADER.index("p50 ms")
    return [*TABLE_HEADER[:i], *([f"p50 ms {k}" for k in kinds] or ["p50 ms"]), *TABLE_HEADER[i + 1:]]


TABLE_FIGURES_NOTE = ("p50 ms and speedup vs fp32: the measurement the selection used, for every row; the speed "
                      "line's figures are the latency check's, measured again after it.")

FIDELITY_NOTE = (": top-1 agreement with the original model for class outputs (box-level for per-image detections, "
                 "value agreement for other outputs), no labels given")


SERVING_HEADER = ["candidate", "status", "runtime/precision", "images/s", "× best plain", "p50 ms/request",
                  "p99 ms/request", "batch", "streams", "runtime settings"]


def serving_rows(report: Report) -> list[list[str]]:
    """Goal throughput: every candidate measured under the served load, the most images/s first, against the
    plain conversion of the original serving the most under the same load."""
    from edgeopt.report.headline import plain_by_throughput

    cands = [c for c in [report.baseline, *report.candidates] if c is not None and c.throughput is not None]
    plain = plain_by_throughput(report)
    ref = plain[0].throughput.images_s if plain and plain[0].throughput.images_s > 0 else None
    rows = []
    for c in sorted(cands, key=lambda c: -c.throughput.images_s):
        t = c.throughput
        keep = ("num_streams", "jobs", "sessions", "threads_per_session", "inference_num_threads",
                "inference_precision", "execution_contexts")
        settings = ", ".join(f"{k} {v}" for k, v in t.runtime_settings.items() if k in keep)
        rows.append([c.id, c.status, f"{c.runtime or '—'}/{c.precision_executed or c.precision or '—'}",
                     f"{t.images_s:.1f}", f"{t.images_s / ref:.2f}×" if ref else "—", _fmt(t.p50_ms, ".2f"),
                     _fmt(t.p99_ms, ".2f"), str(t.batch), str(t.streams), settings])
    return rows


def figures_line(report: Report) -> str | None:
    """Which goal and load each figure is for, when the report holds figures of more than one (goal
    throughput: batch-1 latencies beside images/s under the served load)."""
    ctx = report.context
    if ctx.goal != "throughput":
        return None
    streams = f"{ctx.streams} requests" if ctx.streams else "the runtime's choice of requests"
    return (f"figures: p50 ms and speedups are batch 1, one request at a time (goal latency's figure); images/s and "
            f"ms per request under load are batch {ctx.serve_batch or 1}, {streams} in flight (goal throughput, "
            "what the choice ranked by)")


def to_markdown(report: Report) -> str:
    ctx = report.context
    budgets = ", ".join(f"{k} {getattr(ctx, k)}" for k in ("latency_budget_ms", "size_budget_mb", "time_budget_s")
                        if getattr(ctx, k))
    chosen = report.chosen_candidate
    lines = [
        "# edgeopt report",
        "",
        f"- target: **{report.target.name}** ({report.target.kind}), goal **{ctx.goal}**, "
        f"max accuracy drop **{ctx.max_accuracy_drop} pp**, retrain **{ctx.retrain}**"
        + (f", budgets: {budgets}" if budgets else ""),
        f"- chosen: **{report.chosen or 'none — no candidate met the constraints'}**",
    ]
    speed, accuracy = speed_line(report), accuracy_line(report)
    if speed:
        lines.append(f"- speed: {speed}")
    figures = figures_line(report)
    if figures:
        lines.append(f"- {figures}")
    if accuracy:
        lines.append(f"- {accuracy}" + (f" ({chosen.metric}{FIDELITY_NOTE})" if chosen.metric == "fidelity" else ""))
    if report.model.load_note:
        note, *code = report.model.load_note
        lines.append(f"- load `{report.model.chosen_artifact}`: {note} `{'; '.join(code)}`")
    ts = report.model.test_split
    if ts is not None:
        lines.append(f"- test split: {ts.note}" if ts.split != "none" else
                     f"- **no test split** ({ts.get('why')}): every accuracy here is the one the search optimized on")
        if ts.interval:
            lines.append(f"- test figure: {ts.interval}")
    check = latency_check_line(report)
    if check:
        lines.append(f"- {check}")
    lines += [
        f"- edgeopt {report.edgeopt_version}, schema {report.schema_version}, "
        f"wall time {_fmt(report.wall_time_s, '.1f')} s" + (
            f", {report.model.cache_hits} candidates from the cache" if report.model.cache_hits else ""),
        "",
    ]
    kinds = device_kinds(report)
    header = table_header(kinds)
    if report.model.plot:
        lines += [f"![latency vs accuracy]({report.model.plot})", ""]
    lines += ["## Candidates", ""]
    if report.model.latency_check is not None:
        lines += [TABLE_FIGURES_NOTE, ""]
    lines += [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for c in [report.baseline, *report.candidates]:
        if c is not None:
            row = candidate_row(c, report, kinds)
            lines.append("| " + " | ".join(x.replace("|", "/") for x in row) + " |")
    served = serving_rows(report)
    if served:
        ctx_streams = report.context.streams or "the runtime's choice of"
        lines += ["", "## Served load (goal throughput)", "",
                  f"Batch {report.context.serve_batch or 1} per request, {ctx_streams} requests in flight, measured "
                  "interleaved between candidates; × best plain: over the plain conversion of the original serving "
                  "the most images/s within the budget under the same load.", "",
                  "| " + " | ".join(SERVING_HEADER) + " |", "|" + "---|" * len(SERVING_HEADER)]
        lines += ["| " + " | ".join(x.replace("|", "/") for x in row) + " |" for row in served]
    lines += ["", "## Plan: decisions and reasons", ""]
    lines += [f"- **{d.technique}** — {d.decision}: {d.reason}" for d in report.decisions]
    lines += [f"- note: {n}" for n in report.model.plan_notes or []]
    trace = (report.model.search or {}).get("trace") or []
    if trace:
        lines += ["", "## Search", ""] + [f"- {t}" for t in trace]
    env = report.environment
    lines += ["", "## Environment", ""]
    lines += [f"- {k}: {v}" for k, v in env.items()]
    return "\n".join(lines) + "\n"
