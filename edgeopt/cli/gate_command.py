"""`edgeopt gate`: CI checks on a report. Exit 0 pass, 1 fail, 2 bad input."""

from __future__ import annotations

from pathlib import Path

import typer

from edgeopt.cli.app import app
from edgeopt.cli.common import out


@app.command()
def gate(
    report: Path = typer.Argument(..., help="report.json from `optimize`, or `benchmark --json` output"),
    max_latency_ms: float = typer.Option(None, help="fail when the p50 latency exceeds this"),
    max_accuracy_drop: float = typer.Option(None, help="fail when the accuracy drop exceeds this (pp)"),
    max_size_mb: float = typer.Option(None, help="fail when the artifact is larger than this on disk"),
    min_throughput: float = typer.Option(None, help="fail when images/s under the served load (optimize --goal "
                                                    "throughput, benchmark --streams) is below this"),
    max_p99_under_load_ms: float = typer.Option(None, help="fail when the p99 of one request under the served "
                                                           "load exceeds this"),
    baseline: Path = typer.Option(None, help="an older report/benchmark JSON to compare latency with"),
    max_regression: str = typer.Option("10%", help="allowed p50 slowdown vs --baseline, in percent"),
    candidate: str = typer.Option(None, help="gate this candidate id instead of the chosen one (in a "
                                              "several-artifact benchmark JSON: an index or path; default last)"),
    baseline_candidate: str = typer.Option(None, help="the baseline's candidate id (in a several-artifact "
                                                      "benchmark JSON: an index or path; default first)"),
    junit: Path = typer.Option(None, help="also write the checks as JUnit XML (for CI test reports)"),
    allow_estimated: bool = typer.Option(False, help="let roofline-estimated latencies pass latency checks"),
) -> None:
    """Check a report against limits; print which check failed and by how much. Exit 0 pass, 1 fail, 2 bad input.

    A regression fails only when the 95% bootstrap interval of median(new)/median(baseline) lies entirely
    above 1 + MAX_REGRESSION. Measurements from two separate runs also differ by what the machine did in
    between; for a gate that does not flap on a shared machine, measure both artifacts interleaved in one
    run: `edgeopt benchmark old.onnx new.onnx --json > ab.json; edgeopt gate ab.json --baseline ab.json`.
    Estimated latencies fail latency checks unless --allow-estimated. With --baseline, a throughput figure in
    both is compared alike (per-window images/s, the same interval and margin)."""
    from edgeopt.report.gate import GateInputError, load_subject, parse_percent, run_gate, write_junit

    limits = (max_latency_ms, max_accuracy_drop, max_size_mb, min_throughput, max_p99_under_load_ms, baseline)
    if all(v is None for v in limits):
        raise GateInputError("no check asked for: give --max-latency-ms, --max-accuracy-drop, --max-size-mb, "
                             "--min-throughput, --max-p99-under-load-ms or --baseline")
    for flag, value in (("--max-latency-ms", max_latency_ms), ("--max-accuracy-drop", max_accuracy_drop),
                        ("--max-size-mb", max_size_mb), ("--min-throughput", min_throughput),
                        ("--max-p99-under-load-ms", max_p99_under_load_ms)):
        if value is not None and not value >= 0:  # also refuses NaN
            raise GateInputError(f"{flag} must be a non-negative number, got {value}")
    regression = parse_percent(max_regression)  # a bad limit fails before any file is read
    subject = load_subject(report, candidate)
    if baseline_candidate is None and baseline is not None and baseline.resolve() != report.resolve():
        baseline_candidate = candidate  # two reports of one pipeline: the same candidate in both
    old = load_subject(baseline, baseline_candidate, default=0) if baseline is not None else None
    checks = run_gate(subject, max_latency_ms, max_accuracy_drop, max_size_mb, old,
                      regression, allow_estimated, min_throughput, max_p99_under_load_ms)
    for c in checks:
        out.print(f"{'PASS' if c.passed else 'FAIL'} {c.name}: {c.message}", markup=False, highlight=False)
    if junit is not None:
        write_junit(junit, checks, subject)
    failed = [c for c in checks if not c.passed]
    out.print(f"gate {'failed' if failed else 'passed'}: {len(checks) - len(failed)}/{len(checks)} checks "
              f"passed ({subject.name})", markup=False, highlight=False)
    if failed:
        raise typer.Exit(1)
