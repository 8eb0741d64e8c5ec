import json
import subprocess
import sys
from xml.etree import ElementTree as ET

import numpy as np
import pytest
from typer.testing import CliRunner

from edgeopt.cli import app
from edgeopt.measure.timing import stats_from_samples
from edgeopt.report import Candidate, Report
from edgeopt.report.gate import GateInputError, load_subject, median_ratio_ci, parse_percent, run_gate

runner = CliRunner()


def _samples(median: float, n: int = 200, spread: float = 0.05, seed: int = 0) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(median * (1 + spread * rng.standard_normal(n)) + rng.exponential(median * 0.02, n))


def _report(path, p50=10.0, drop=0.5, size=2_000_000, source="measured", n=200, seed=0, chosen="c1"):
    lat = stats_from_samples(_samples(p50, n, seed=seed)) if n else stats_from_samples([p50])
    if source == "estimated":
        lat = lat.model_copy(update={"n": 0, "samples_ms": []})
    c = Candidate(id="c1", status="ok", latency_ms=lat, latency_source=source, accuracy=97.0,
                  accuracy_drop=drop, size_bytes=size)
    r = Report(edgeopt_version="0.1.0", context={"goal": "latency", "max_accuracy_drop": 1, "retrain": False},
               target={"name": "local"}, environment={}, candidates=[c], chosen=chosen)
    path.write_text(json.dumps(r.model_dump(mode="json")))
    return path


def test_pass_writes_junit(tmp_path):
    rep = _report(tmp_path / "r.json")
    xml = tmp_path / "junit.xml"
    r = runner.invoke(app, ["gate", str(rep), "--max-latency-ms", "12", "--max-accuracy-drop", "1",
                            "--max-size-mb", "3", "--junit", str(xml)])
    assert r.exit_code == 0, r.output
    assert r.output.count("PASS") == 3 and "gate passed: 3/3" in r.output
    suite = ET.parse(xml).getroot().find("testsuite")
    assert suite.get("tests") == "3" and suite.get("failures") == "0"


def test_fail_says_which_check_and_by_how_much(tmp_path):
    rep = _report(tmp_path / "r.json", p50=10.0, drop=1.5, size=4_000_000)
    xml = tmp_path / "junit.xml"
    r = runner.invoke(app, ["gate", str(rep), "--max-latency-ms", "8", "--max-accuracy-drop", "1",
                            "--max-size-mb", "3", "--junit", str(xml)])
    assert r.exit_code == 1
    p50 = load_subject(rep).latency.p50
    assert f"exceeds 8.0 ms by {(p50 - 8) / 8 * 100:.1f}%" in r.output
    assert "exceeds 1.0 pp by 0.50 pp" in r.output and "exceeds 3.0 MB by 1.000 MB" in r.output
    failures = ET.parse(xml).getroot().findall(".//failure")
    assert len(failures) == 3 and all("exceeds" in f.get("message") for f in failures)


def test_regression_judged_on_bootstrapped_medians(tmp_path):
    old = _report(tmp_path / "old.json", p50=10.0, seed=1)
    slower = _report(tmp_path / "slow.json", p50=13.0, seed=2)
    same = _report(tmp_path / "same.json", p50=10.3, seed=3)
    r = runner.invoke(app, ["gate", str(slower), "--baseline", str(old), "--max-regression", "10%"])
    assert r.exit_code == 1 and "regression beyond the allowed +10.0%" in r.output and "95% CI" in r.output
    r = runner.invoke(app, ["gate", str(same), "--baseline", str(old), "--max-regression", "10%"])
    assert r.exit_code == 0, r.output


def test_noisy_small_sample_is_not_called_a_regression():
    # 12% slower on the point estimate, but 12 very noisy samples: the interval reaches below +10%
    old = load_like(_samples(10.0, 12, spread=0.4, seed=4))
    new = load_like(_samples(11.2, 12, spread=0.4, seed=5))
    ratio, lo, hi = median_ratio_ci(new.latency.samples_ms, old.latency.samples_ms)
    assert lo < 1.10 < hi
    assert run_gate(new, baseline=old, max_regression=0.10)[0].passed


def load_like(samples):
    from edgeopt.report.gate import Subject

    return Subject("mem", "m", stats_from_samples(samples), "measured")


def test_point_estimate_without_samples(tmp_path):
    old = load_like([10.0])
    new = load_like([12.0])
    check = run_gate(new, baseline=old, max_regression=0.10)[0]
    assert not check.passed and "point estimate" in check.message


def test_estimated_latency_fails_latency_gates_unless_allowed(tmp_path):
    est = _report(tmp_path / "est.json", p50=1.0, source="estimated")
    r = runner.invoke(app, ["gate", str(est), "--max-latency-ms", "5"])
    assert r.exit_code == 1 and "estimate" in r.output and "--allow-estimated" in r.output
    r = runner.invoke(app, ["gate", str(est), "--max-latency-ms", "5", "--allow-estimated"])
    assert r.exit_code == 0 and "(estimated)" in r.output
    old = _report(tmp_path / "old.json")
    r = runner.invoke(app, ["gate", str(est), "--baseline", str(old)])
    assert r.exit_code == 1 and "not a measurement" in r.output


def test_bad_input(tmp_path):
    with pytest.raises(GateInputError, match="cannot read"):
        load_subject(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text("not json")
    with pytest.raises(GateInputError, match="not JSON"):
        load_subject(tmp_path / "x.json")
    (tmp_path / "y.json").write_text('{"a": 1}')
    with pytest.raises(GateInputError, match="neither"):
        load_subject(tmp_path / "y.json")
    none = _report(tmp_path / "none.json", chosen=None)
    with pytest.raises(GateInputError, match="chose no candidate"):
        load_subject(none)
    assert load_subject(none, candidate="c1").name == "c1"
    with pytest.raises(GateInputError, match="percentage"):
        parse_percent("ten")
    assert parse_percent("15%") == pytest.approx(0.15) == parse_percent("15")
    # through the real CLI: exit 2, one line, no traceback
    p = subprocess.run([sys.executable, "-m", "edgeopt", "gate", str(tmp_path / "x.json"), "--max-size-mb", "1"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.strip().startswith("error:") and "Traceback" not in p.stderr


def test_same_artifact_measured_interleaved_passes_a_15_percent_gate_repeatedly(tmp_path, tiny, example):
    # Two copies of one model measured interleaved (the way the gate is meant to be fed on a shared
    # machine): whatever the machine does, it does to both, so an unchanged model must never fail.
    import shutil

    from edgeopt import export
    from edgeopt.measure.artifacts import benchmark_many
    from edgeopt.measure.timing import BenchConfig

    a = export(tiny, example, format="onnx", out=tmp_path / "a.onnx")
    b = shutil.copy(a, tmp_path / "b.onnx")
    cfg = BenchConfig(warmup_runs=5, warmup_s=0.05, min_runs=50, max_time_s=0.6)
    for i in range(5):
        results = benchmark_many([a, b], runtime="onnxruntime", threads=1, config=cfg)
        ab = tmp_path / f"ab{i}.json"
        ab.write_text(json.dumps([r.model_dump(mode="json") for r in results]))
        new, old = load_subject(ab), load_subject(ab, default=0)
        assert (new.name, old.name) == (str(b), str(a))
        check = run_gate(new, baseline=old, max_regression=0.15)[0]
        assert check.passed, check.message
    # through the CLI: the same file as report and baseline, last entry judged against the first
    r = runner.invoke(app, ["gate", str(ab), "--baseline", str(ab), "--max-regression", "15%"])
    assert r.exit_code == 0 and "b.onnx" in r.output, r.output
    code, msg = _cli_exit(runner.invoke(app, ["gate", str(ab), "--baseline", str(ab), "--candidate", "7"]))
    assert code == 2 and "no result '7'" in msg
    # and the gate is not blind: the same samples made 40% slower do fail
    slow = load_subject(ab)
    slow.latency = stats_from_samples([s * 1.4 for s in slow.latency.samples_ms])
    assert not run_gate(slow, baseline=load_subject(ab, default=0), max_regression=0.15)[0].passed


def _cli_exit(r):
    """The exit code and message `edgeopt` (cli.main) gives for what the Typer app raised."""
    from edgeopt.errors import EdgeOptError

    if isinstance(r.exception, EdgeOptError):
        return r.exception.exit_code, str(r.exception)
    return r.exit_code, r.output


def _rewrite(path, **latency):
    data = json.loads(path.read_text())
    data["candidates"][0]["latency_ms"].update(latency)
    path.write_text(json.dumps(data))
    return path


def test_unknown_schema_version_is_bad_input(tmp_path):
    rep = _report(tmp_path / "r.json")
    data = json.loads(rep.read_text())
    data["schema_version"] = 99
    rep.write_text(json.dumps(data))
    p = subprocess.run([sys.executable, "-m", "edgeopt", "gate", str(rep), "--max-latency-ms", "12"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "schema_version 99" in p.stderr and "Traceback" not in p.stderr, p.stderr


@pytest.mark.parametrize("latency, expect", [
    ({"p50": 0.0}, "p50 latency 0.0"),
    ({"samples_ms": [], "n": 0}, "without any runs"),
    ({"samples_ms": [float("nan")] * 20}, "not positive finite"),
])
def test_zero_empty_or_nan_latency_is_bad_input(tmp_path, latency, expect):
    old = _report(tmp_path / "old.json")
    new = _rewrite(_report(tmp_path / "new.json"), **latency)
    for args in ([str(new), "--baseline", str(old)], [str(old), "--baseline", str(new)],
                 [str(new), "--max-latency-ms", "12"]):
        code, msg = _cli_exit(runner.invoke(app, ["gate", *args]))
        assert code == 2 and expect in msg and "nan%" not in msg, msg
