"""CI gates on a report.json (from `optimize`) or a benchmark JSON (from `benchmark --json`).

Regressions are judged on medians with a bootstrap confidence interval over the raw samples the reports
keep, and fail only when the whole 95% interval of the slowdown lies above the allowed margin: an
unchanged model measured twice on a shared machine must not flap. Throughput (images/s under a served load,
goal throughput) is judged alike: a floor on its images/s and on the p99 of one request under the load, and
against a baseline the median of its per-window images/s, with the same interval and margin. Estimated
(roofline) latencies fail a latency gate unless explicitly allowed, since they were never measured."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeopt.errors import EdgeOptError, first_line
from edgeopt.report import LatencyStats, ThroughputStats, write_atomic


class GateInputError(EdgeOptError):
    """The gate cannot judge its input (missing file, not a report, a check the report has no data for)."""


@dataclass
class Subject:
    """What a gate judges: one candidate of a report, or one benchmark result."""

    source: str
    name: str
    latency: LatencyStats | None
    latency_source: str | None
    accuracy_drop: float | None = None
    size_bytes: int | None = None
    throughput: ThroughputStats | None = None


@dataclass
class Check:
    name: str
    passed: bool
    message: str


def load_subject(path: Path, candidate: str | None = None, default: int = -1) -> Subject:
    """One subject from a report (the chosen candidate, or `candidate`) or a benchmark JSON. A list of
    results from one interleaved `benchmark A B --json` run gives entry `candidate` (an index or the
    artifact's path), else entry `default` (the gate judges the last, its baseline is the first)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise GateInputError(f"cannot read {path}: {e.strerror}") from None
    except (ValueError, UnicodeDecodeError):
        raise GateInputError(f"{path} is not JSON (expected report.json or `edgeopt benchmark --json` output)"
                             ) from None
    except RecursionError:  # the JSON reader recurses once per level of nesting
        raise GateInputError(f"{path} is nested too deeply to be a report or `edgeopt benchmark --json` output"
                             ) from None
    if isinstance(data, dict) and "candidates" in data and "schema_version" in data:
        from edgeopt.report import SCHEMA_VERSION, Report

        if data["schema_version"] != SCHEMA_VERSION:
            raise GateInputError(f"{path} has report schema_version {data['schema_version']!r}; this edgeopt "
                                 f"reads schema_version {SCHEMA_VERSION} only")

        try:
            report = Report.model_validate(data)
        except Exception as e:
            raise GateInputError(f"{path} is not a valid edgeopt report: {first_line(e, with_type=False)}") from None
        cid = candidate or report.chosen
        c = report.candidate(cid) if cid else None
        if cid is None:
            raise GateInputError(f"{path}: the run chose no candidate; name one with --candidate "
                                 f"(e.g. {report.baseline.id if report.baseline else 'an id from the report'})")
        if c is None:
            raise GateInputError(f"{path}: no candidate {cid!r} in the report")
        # the test split's drop when the candidate was judged there: the selection figure is the one the search
        # optimized on, biased in the candidate's favour
        drop = c.accuracy_drop_test if c.accuracy_drop_test is not None else c.accuracy_drop
        return Subject(str(path), c.id, c.latency_ms, c.latency_source, drop, c.size_bytes, c.throughput)
    if isinstance(data, list) and data and all(isinstance(d, dict) and "latency" in d for d in data):
        data = _pick_result(path, data, candidate, default)
    if isinstance(data, dict) and "latency" in data and "artifact" in data:
        from edgeopt.report import BenchmarkResult

        try:
            r = BenchmarkResult.model_validate(data)
        except Exception as e:
            raise GateInputError(f"{path} is not a valid benchmark result: {first_line(e, with_type=False)}") from None
        art = Path(r.artifact)
        return Subject(str(path), r.artifact, r.latency, r.latency_source,
                       size_bytes=art.stat().st_size if art.is_file() else None, throughput=r.throughput)
    raise GateInputError(f"{path} is neither an edgeopt report.json nor `edgeopt benchmark --json` output")


def _pick_result(path: Path, results: list[dict], candidate: str | None, default: int) -> dict:
    if candidate is None:
        return results[default]
    if candidate.lstrip("-").isdigit() and -len(results) <= int(candidate) < len(results):
        return results[int(candidate)]
    for r in results:
        if str(r.get("artifact")) == candidate or Path(str(r.get("artifact"))).name == candidate:
            return r
    raise GateInputError(f"{path}: no result {candidate!r} among its {len(results)} (give an index 0.."
                         f"{len(results) - 1} or an artifact path)")


def parse_percent(text: str | float) -> float:
    """'10%' or '10' -> 0.10 (always percent, so 0.1 means 0.1%)."""
    s = str(text).strip().rstrip("%").strip()
    try:
        v = float(s) / 100
    except ValueError:
        raise GateInputError(f"--max-regression must be a percentage like 10% (got {text!r})") from None
    if not math.isfinite(v) or v < 0:  # NaN would pass every comparison, inf would turn the check off
        raise GateInputError(f"--max-regression must be a finite, non-negative percentage like 10% (got {text!r})")
    return v


def median_ratio_ci(new: list[float], old: list[float], n_boot: int = 2000, seed: int = 0,
                    level: float = 0.95) -> tuple[float, float, float]:
    """median(new)/median(old) and its bootstrap percentile interval (both sides resampled)."""
    a, b = np.asarray(new, np.float64), np.asarray(old, np.float64)
    rng = np.random.default_rng(seed)
    ma = np.median(a[rng.integers(0, len(a), (n_boot, len(a)))], axis=1)
    mb = np.median(b[rng.integers(0, len(b), (n_boot, len(b)))], axis=1)
    ratios = ma / mb
    q = (1 - level) / 2
    return float(np.median(a) / np.median(b)), float(np.quantile(ratios, q)), float(np.quantile(ratios, 1 - q))


def _check_latency(s: Subject) -> None:
    """Zero, negative or NaN latencies and a measurement without runs cannot be judged: bad input, not a verdict."""
    lat = s.latency
    if not (math.isfinite(lat.p50) and lat.p50 > 0):
        raise GateInputError(f"{s.source}: {s.name} has p50 latency {lat.p50!r}; a latency must be a positive "
                             "finite number of ms")
    bad = [v for v in lat.samples_ms if not (math.isfinite(v) and v > 0)]
    if bad:
        raise GateInputError(f"{s.source}: {s.name} has {len(bad)} latency samples that are not positive finite "
                             f"numbers (e.g. {bad[0]!r})")
    if s.latency_source != "estimated" and lat.n <= 0:
        raise GateInputError(f"{s.source}: {s.name} has a measured latency without any runs (n={lat.n})")


def _latency_usable(s: Subject, allow_estimated: bool, what: str) -> tuple[bool, str | None]:
    if s.latency is None:
        raise GateInputError(f"{s.source}: {s.name} has no latency to gate on")
    _check_latency(s)
    if s.latency_source == "estimated" and not allow_estimated:
        return False, (f"{what} latency of {s.name} is a roofline estimate ({s.latency.p50:.3f} ms), "
                       "not a measurement; measure on the device (--device) or pass --allow-estimated")
    return True, None


def run_gate(subject: Subject, max_latency_ms: float | None = None, max_accuracy_drop: float | None = None,
             max_size_mb: float | None = None, baseline: Subject | None = None,
             max_regression: float | None = None, allow_estimated: bool = False,
             min_throughput: float | None = None, max_p99_under_load_ms: float | None = None) -> list[Check]:
    checks: list[Check] = []
    for flag, v in (("--max-latency-ms", max_latency_ms), ("--max-size-mb", max_size_mb),
                    ("--min-throughput", min_throughput), ("--max-p99-under-load-ms", max_p99_under_load_ms)):
        if v is not None and not (math.isfinite(v) and v > 0):
            raise GateInputError(f"{flag} must be a positive number (got {v})")
    if max_accuracy_drop is not None and not math.isfinite(max_accuracy_drop):
        raise GateInputError(f"--max-accuracy-drop must be a finite number (got {max_accuracy_drop})")
    if max_latency_ms is not None:
        ok, why = _latency_usable(subject, allow_estimated, "the")
        if not ok:
            checks.append(Check("max_latency_ms", False, why))
        else:
            p50 = subject.latency.p50
            est = " (estimated)" if subject.latency_source == "estimated" else ""
            over = (p50 - max_latency_ms) / max_latency_ms * 100
            checks.append(Check("max_latency_ms", p50 <= max_latency_ms,
                                f"p50 {p50:.3f} ms{est} " + (f"<= {max_latency_ms} ms" if p50 <= max_latency_ms
                                                            else f"exceeds {max_latency_ms} ms by {over:.1f}%")))
    if max_accuracy_drop is not None:
        d = subject.accuracy_drop
        if d is None:
            raise GateInputError(f"{subject.source}: {subject.name} has no accuracy drop (benchmark results "
                                 "carry none; gate a report.json)")
        if not math.isfinite(d):
            raise GateInputError(f"{subject.source}: {subject.name} has accuracy drop {d!r}, not a number")
        checks.append(Check("max_accuracy_drop", d <= max_accuracy_drop,
                            f"accuracy drop {d:.2f} pp " + (f"<= {max_accuracy_drop} pp" if d <= max_accuracy_drop
                                                            else f"exceeds {max_accuracy_drop} pp by "
                                                                 f"{d - max_accuracy_drop:.2f} pp")))
    if max_size_mb is not None:
        if subject.size_bytes is None:
            raise GateInputError(f"{subject.source}: {subject.name} has no size on disk")
        mb = subject.size_bytes / 1e6
        checks.append(Check("max_size_mb", mb <= max_size_mb,
                            f"size {mb:.3f} MB " + (f"<= {max_size_mb} MB" if mb <= max_size_mb else
                                                    f"exceeds {max_size_mb} MB by {mb - max_size_mb:.3f} MB")))
    if min_throughput is not None or max_p99_under_load_ms is not None:
        checks += _throughput_checks(subject, min_throughput, max_p99_under_load_ms)
    if baseline is not None:
        margin = 0.10 if max_regression is None else max_regression
        checks.append(_regression(subject, baseline, margin, allow_estimated))
        if subject.throughput is not None and baseline.throughput is not None:
            checks.append(_throughput_regression(subject, baseline, margin))
    return checks


def _load(t: ThroughputStats) -> str:
    return f"batch {t.batch}, {t.streams} streams"


def _throughput_of(s: Subject) -> ThroughputStats:
    t = s.throughput
    if t is None:
        raise GateInputError(f"{s.source}: {s.name} has no throughput figure (measured with optimize --goal "
                             "throughput or benchmark --streams)")
    values = [t.images_s, t.p50_ms, t.p99_ms, *t.samples_images_s]
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise GateInputError(f"{s.source}: {s.name} has throughput figures that are not positive finite numbers")
    return t


def _throughput_checks(s: Subject, floor: float | None, p99_limit: float | None) -> list[Check]:
    t = _throughput_of(s)
    checks = []
    if floor is not None:
        ok = t.images_s >= floor
        checks.append(Check("min_throughput", ok, f"throughput {t.images_s:.1f} images/s ({_load(t)}) " + (
            f">= {floor} images/s" if ok else f"is below {floor} images/s by {100 * (1 - t.images_s / floor):.1f}%")))
    if p99_limit is not None:
        ok = t.p99_ms <= p99_limit
        checks.append(Check("max_p99_under_load_ms", ok, f"p99 per request under load {t.p99_ms:.3f} ms "
                            f"({_load(t)}) " + (f"<= {p99_limit} ms" if ok else
                                                f"exceeds {p99_limit} ms by {100 * (t.p99_ms / p99_limit - 1):.1f}%")))
    return checks


def _throughput_regression(new: Subject, old: Subject, margin: float) -> Check:
    """images/s vs the baseline's: the slowdown old/new over the per-window samples, failing only when its
    whole 95% interval lies beyond the margin (as for latency)."""
    a, b = _throughput_of(new), _throughput_of(old)
    limit = 1 + margin
    if len(a.samples_images_s) >= 10 and len(b.samples_images_s) >= 10:
        slowdown, lo, hi = median_ratio_ci(b.samples_images_s, a.samples_images_s)
        passed = lo <= limit
        how = (f"(95% CI {100 * (1 / hi - 1):+.1f}%..{100 * (1 / lo - 1):+.1f}%, {len(a.samples_images_s)} vs "
               f"{len(b.samples_images_s)} windows)")
    else:
        slowdown = b.images_s / a.images_s
        passed = slowdown <= limit
        how = "(too few windows for a confidence interval: point estimate)"
    verdict = (f"within the allowed -{100 * margin:.1f}% slowdown" if passed else
               f"slowdown beyond the allowed {100 * margin:.1f}% by {100 * (slowdown - limit):.1f} points")
    return Check("max_throughput_regression", passed,
                 f"throughput {a.images_s:.1f} vs baseline {b.images_s:.1f} images/s ({_load(a)}): "
                 f"{100 * (1 / slowdown - 1):+.1f}% {how}, {verdict}")


def _regression(new: Subject, old: Subject, margin: float, allow_estimated: bool) -> Check:
    for s, what in ((new, "the"), (old, "the baseline's")):
        ok, why = _latency_usable(s, allow_estimated, what)
        if not ok:
            return Check("max_regression", False, why)
    a, b = new.latency.samples_ms, old.latency.samples_ms
    limit = 1 + margin
    if len(a) >= 10 and len(b) >= 10:
        ratio, lo, hi = median_ratio_ci(a, b)
        passed = lo <= limit  # fail only when the whole interval is beyond the margin
        how = f"(95% CI {100 * (lo - 1):+.1f}%..{100 * (hi - 1):+.1f}%, {len(a)} vs {len(b)} samples)"
    else:
        ratio = new.latency.p50 / old.latency.p50
        passed = ratio <= limit
        how = "(too few raw samples for a confidence interval: point estimate)"
    change = 100 * (ratio - 1)
    verdict = (f"within the allowed +{100 * margin:.1f}%" if passed else
               f"regression beyond the allowed +{100 * margin:.1f}% by {100 * (ratio - limit):.1f} points")
    return Check("max_regression", passed, f"p50 {new.latency.p50:.3f} ms vs baseline {old.latency.p50:.3f} ms: "
                                           f"{change:+.1f}% {how}, {verdict}")


def junit_xml(checks: list[Check], subject: Subject) -> str:
    from xml.etree import ElementTree as ET

    failures = sum(not c.passed for c in checks)
    suite = ET.Element("testsuite", name="edgeopt.report.gate", tests=str(len(checks)), failures=str(failures),
                       errors="0", skipped="0")
    for c in checks:
        case = ET.SubElement(suite, "testcase", classname=f"edgeopt.report.gate.{subject.name}", name=c.name)
        if c.passed:
            ET.SubElement(case, "system-out").text = c.message
        else:
            ET.SubElement(case, "failure", message=c.message, type="GateFailure").text = c.message
    root = ET.Element("testsuites", name="edgeopt", tests=str(len(checks)), failures=str(failures))
    root.append(suite)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def write_junit(path: Path, checks: list[Check], subject: Subject) -> None:
    write_atomic(Path(path), junit_xml(checks, subject))
