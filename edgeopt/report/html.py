"""report.html and the latency-vs-accuracy plot (Pareto front, accuracy-budget line, latency-budget line).

The summary lines (speed vs the best plain conversion and vs fp32; selection vs test accuracy) are
report/headline.py's, as in report.md and the CLI. The plot is a PNG written next to the report (report.md
links it) and embedded in the HTML as base64, so report.html is one self-contained file. matplotlib is
imported on use, with the non-interactive backend."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from edgeopt.report import Candidate, Report, write_atomic, write_report
from edgeopt.report.headline import accuracy_line, latency_check_line, speed_line
from edgeopt.report.markdown import (
    TABLE_FIGURES_NOTE,
    candidate_row,
    device_kinds,
    table_header,
    table_p50,
    to_markdown,
)

PLOT_FILE = "report.png"  # next to report.json; report.md links it, report.html embeds it


def _points(report: Report) -> list[Candidate]:
    return [c for c in [report.baseline, *report.candidates]
            if c is not None and c.latency_ms is not None and c.accuracy is not None]


def pareto_front(cands: list[Candidate], p50=None) -> list[Candidate]:
    """Candidates no other candidate beats on both latency (lower; `p50(c)`, default its own p50) and accuracy
    (higher), by latency."""
    p50 = p50 or (lambda c: c.latency_ms.p50)
    front, best_acc = [], float("-inf")
    for c in sorted(cands, key=lambda c: (p50(c), -c.accuracy)):
        if c.accuracy > best_acc:
            front.append(c)
            best_acc = c.accuracy
    return front


def plot_file(report: Report) -> str | None:
    """The plot's file name when the report has anything to plot (a candidate with latency and accuracy)."""
    return PLOT_FILE if _points(report) else None


def scatter_png(report: Report) -> bytes | None:
    pts = _points(report)
    if not pts:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def p50(c: Candidate) -> float:  # the table's figures: one measurement for every point
        return table_p50(report, c)

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for status, color in (("ok", "tab:blue"), ("rejected", "tab:gray"), ("failed", "tab:red")):
        sel = [c for c in pts if c.status == status]
        if sel:
            ax.scatter([p50(c) for c in sel], [c.accuracy for c in sel], c=color, s=28,
                       label=f"{status} ({len(sel)})", alpha=0.8)
    front = pareto_front(pts, p50)
    ax.plot([p50(c) for c in front], [c.accuracy for c in front], "--", c="tab:green", lw=1,
            label="Pareto front")
    base = report.baseline
    if base is not None and base.accuracy is not None:
        budget = base.accuracy - float(report.context.get("max_accuracy_drop", 0))
        ax.axhline(budget, c="tab:orange", lw=1, label=f"accuracy budget ({budget:.2f}%)")
        if base.latency_ms is not None:
            ax.scatter([p50(base)], [base.accuracy], marker="s", c="black", s=50, label="baseline")
    if report.context.get("latency_budget_ms"):
        ax.axvline(report.context["latency_budget_ms"], c="tab:purple", lw=1, label="latency budget")
    chosen = report.chosen_candidate
    if chosen is not None and chosen.latency_ms is not None and chosen.accuracy is not None:
        ax.scatter([p50(chosen)], [chosen.accuracy], marker="*", c="tab:red", s=220,
                   label=f"chosen: {chosen.id}", zorder=5)
    est = any(c.latency_source == "estimated" for c in pts)
    ax.set_xlabel("p50 latency, ms" + (" (estimated)" if est else " (measured)"))
    metric = next((c.metric for c in pts if c.metric), "top1")
    ax.set_ylabel(f"accuracy, % ({metric})")
    ax.set_title("latency vs accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def to_html(report: Report, png: bytes | None) -> str:
    e = html.escape
    ctx = report.context
    rows, kinds = [], device_kinds(report)
    for c in [report.baseline, *report.candidates]:
        if c is None:
            continue
        cls = ' class="chosen"' if c.id == report.chosen else (' class="dim"' if c.status != "ok" else "")
        rows.append(f"<tr{cls}>" + "".join(f"<td>{e(x)}</td>" for x in candidate_row(c, report, kinds))
                    + "</tr>")
    figures_note = f"<p>{e(TABLE_FIGURES_NOTE)}</p>" if report.model.latency_check is not None else ""
    decisions = "".join(f"<li><b>{e(d.technique)}</b> — {e(d.decision)}: {e(d.reason)}</li>"
                        for d in report.decisions)
    notes = "".join(f"<li>{e(n)}</li>" for n in report.model.get("plan_notes", []))
    trace = "".join(f"<li>{e(t)}</li>" for t in (report.model.get("search") or {}).get("trace", []))
    summary = "".join(f"<p>{e(line)}</p>" for line in (speed_line(report), accuracy_line(report),
                                                         latency_check_line(report)) if line)
    ts = report.model.test_split
    if ts is not None and ts.split == "none":
        summary += f"<p><b>no test split</b> ({e(str(ts.get('why')))}): {e(ts.note)}</p>"
    elif ts is not None and ts.interval:
        summary += f"<p>test split: {e(ts.note)}; {e(ts.interval)}</p>"
    img = (f'<img alt="latency vs accuracy" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
           if png else "<p>no measured candidate to plot</p>")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>edgeopt report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px}}tr.chosen{{background:#dfd;font-weight:bold}}tr.dim{{color:#888}}
</style></head><body>
<h1>edgeopt report</h1>
<p>target <b>{e(str(report.target.get('name')))}</b> ({e(str(report.target.get('kind')))}), goal
<b>{e(str(ctx.get('goal')))}</b>, max accuracy drop <b>{e(str(ctx.get('max_accuracy_drop')))} pp</b>, retrain
<b>{e(str(ctx.get('retrain')))}</b>; chosen: <b>{e(report.chosen or 'none: no candidate met the constraints')}</b>;
wall time {e(str(report.wall_time_s))} s</p>
{summary}
{img}
<h2>Candidates</h2>
{figures_note}<table><tr>{''.join(f'<th>{e(h)}</th>' for h in table_header(kinds))}</tr>{''.join(rows)}</table>
<h2>Plan: decisions and reasons</h2><ul>{decisions}</ul><ul>{notes}</ul>
<h2>Search</h2><ul>{trace}</ul>
<h2>Context</h2><pre>{e(repr(ctx))}</pre>
</body></html>
"""


def write_html_report(report: Report, out_dir: Path) -> None:
    """report.png (when anything was measured), report.md linking it, and self-contained report.html. Reads
    the report, never changes it: one that does not name its plot yet (built by hand) is shown as if it did."""
    out_dir = Path(out_dir)
    png = scatter_png(report)
    shown = report
    if png is not None:
        write_atomic(out_dir / PLOT_FILE, png)
        if report.model.plot != PLOT_FILE:
            shown = report.model_copy(update={"model": report.model.model_copy(update={"plot": PLOT_FILE})})
    write_atomic(out_dir / "report.md", to_markdown(shown))
    write_atomic(out_dir / "report.html", to_html(shown, png))


def write_all(report: Report, out_dir: Path) -> Path:
    """Every file of a run's report, each written once from the finished report (which names its plot:
    `plot_file`): report.png, report.json, report.md, report.html. Returns report.json's path."""
    out_dir = Path(out_dir)
    png = scatter_png(report)
    if png is not None:
        write_atomic(out_dir / PLOT_FILE, png)
    path = write_report(report, out_dir)  # report.json and report.md
    write_atomic(out_dir / "report.html", to_html(report, png))
    return path
