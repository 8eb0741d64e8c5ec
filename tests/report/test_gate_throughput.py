import json
from xml.etree import ElementTree as ET

import numpy as np
from typer.testing import CliRunner

from edgeopt.cli import app
from edgeopt.measure.timing import stats_from_samples
from edgeopt.report import Candidate, Report, ThroughputStats
from edgeopt.report.gate import load_subject, run_gate

runner = CliRunner()


def _report(path, images_s=1000.0, p99=9.0, windows=20, seed=0):
    rng = np.random.default_rng(seed)
    t = ThroughputStats(images_s=images_s, p50_ms=6.0, p99_ms=p99, batch=8, streams=2, requests=500, window_s=5.0,
                        samples_images_s=list(images_s * (1 + 0.03 * rng.standard_normal(windows))),
                        runtime_settings={"runtime": "openvino", "performance_hint": "THROUGHPUT"})
    c = Candidate(id="c1", status="ok", latency_ms=stats_from_samples([2.0] * 30), latency_source="measured",
                  throughput=t, accuracy=97.0, accuracy_drop=0.1, size_bytes=1000)
    r = Report(edgeopt_version="0.1.0", context={"goal": "throughput", "serve_batch": 8, "streams": 2,
                                                 "max_accuracy_drop": 1, "retrain": False},
               target={"name": "local"}, environment={}, candidates=[c], chosen="c1")
    path.write_text(json.dumps(r.model_dump(mode="json")))
    return path


def test_throughput_floor_passes_and_fails_and_junit_names_it(tmp_path):
    rep = _report(tmp_path / "r.json")
    xml = tmp_path / "junit.xml"
    r = runner.invoke(app, ["gate", str(rep), "--min-throughput", "900", "--max-p99-under-load-ms", "10",
                            "--junit", str(xml)])
    assert r.exit_code == 0, r.output
    assert "PASS min_throughput: throughput 1000.0 images/s (batch 8, 2 streams)" in r.output
    names = [c.get("name") for c in ET.parse(xml).getroot().iter("testcase")]
    assert names == ["min_throughput", "max_p99_under_load_ms"]
    r = runner.invoke(app, ["gate", str(rep), "--min-throughput", "1250", "--max-p99-under-load-ms", "6",
                            "--junit", str(xml)])
    assert r.exit_code == 1
    assert "is below 1250.0 images/s by 20.0%" in r.output and "exceeds 6.0 ms by 50.0%" in r.output
    failures = ET.parse(xml).getroot().findall(".//failure")
    assert len(failures) == 2 and "images/s" in failures[0].get("message")


def test_throughput_regression_uses_the_window_interval(tmp_path):
    old = load_subject(_report(tmp_path / "old.json", 1000.0, seed=1))
    same = load_subject(_report(tmp_path / "same.json", 980.0, seed=2))
    slow = load_subject(_report(tmp_path / "slow.json", 700.0, seed=3))
    by_name = {c.name: c for c in run_gate(same, baseline=old, max_regression=0.10)}
    assert by_name["max_throughput_regression"].passed and "windows" in by_name["max_throughput_regression"].message
    by_name = {c.name: c for c in run_gate(slow, baseline=old, max_regression=0.10)}
    assert not by_name["max_throughput_regression"].passed


def test_report_without_throughput_is_bad_input(tmp_path):
    rep = _report(tmp_path / "r.json")
    data = json.loads(rep.read_text())
    data["candidates"][0]["throughput"] = None
    rep.write_text(json.dumps(data))
    r = runner.invoke(app, ["gate", str(rep), "--min-throughput", "1"])
    assert r.exit_code != 0 and "no throughput figure" in str(r.exception)
