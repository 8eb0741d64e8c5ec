"""Every metric a run can score with survives report.json, the candidate cache and the gate: a report scored with
mIoU or a user's metric used to be unreadable (`Candidate.metric` accepted only top1/fidelity)."""

import json

import pytest
from typer.testing import CliRunner

from edgeopt.cli import app
from edgeopt.engine.build import from_cache, to_cache
from edgeopt.measure.timing import stats_from_samples
from edgeopt.report import Candidate, Decision, Report, load_report, write_report

METRICS = ["top1", "fidelity", "miou", "map50"]  # map50: the name of a user's metric function


def _report(metric: str) -> Report:
    lat = stats_from_samples([1.0 + 0.01 * i for i in range(50)])
    base = Candidate(id="original@onnx-fp32", status="ok", latency_ms=lat, latency_source="measured",
                     accuracy=90.0, metric=metric, runtime="onnxruntime", precision="fp32")
    cand = Candidate(id="prune30@onnx-fp32", status="ok", latency_ms=lat, latency_source="measured",
                     accuracy=89.5, accuracy_drop=0.5, metric=metric, runtime="onnxruntime", precision="fp32")
    return Report(edgeopt_version="0.1.0", context={"goal": "latency", "max_accuracy_drop": 1, "retrain": False},
                  target={"name": "local"}, environment={}, baseline=base, candidates=[cand],
                  chosen=cand.id, decisions=[Decision(technique="accuracy_control@x", decision="failed",
                                                      reason="retry failed")])


@pytest.mark.parametrize("metric", METRICS)
def test_report_json_round_trip(tmp_path, metric):
    path = write_report(_report(metric), tmp_path)
    back = load_report(path)
    assert back.chosen_candidate.metric == metric and back.baseline.metric == metric
    assert back.decisions[0].decision == "failed"


@pytest.mark.parametrize("metric", METRICS)
def test_cache_entry_round_trip(tmp_path, metric):
    cand = _report(metric).candidates[0].model_copy(update={"status": "rejected", "reason": "over budget"})
    entry = json.loads(json.dumps(to_cache(cand)))
    fresh = Candidate(id=cand.id, runtime="onnxruntime", precision="fp32")
    restored, session = from_cache(fresh, entry, tmp_path, threads=1)
    assert restored and session is None
    assert fresh.metric == metric and fresh.accuracy == 89.5 and fresh.from_cache


@pytest.mark.parametrize("metric", METRICS)
def test_gate_reads_every_metric(tmp_path, metric):
    path = write_report(_report(metric), tmp_path)
    r = CliRunner().invoke(app, ["gate", str(path), "--max-accuracy-drop", "1"])
    assert r.exit_code == 0, r.output
    assert "PASS" in r.output


def test_gate_judges_the_test_split_drop_when_there_is_one(tmp_path):
    report = _report("top1")
    report.candidates[0].accuracy_drop_test = 1.5  # within budget on selection (0.5), not on the test split
    path = write_report(report, tmp_path)
    r = CliRunner().invoke(app, ["gate", str(path), "--max-accuracy-drop", "1"])
    assert r.exit_code == 1, r.output
    assert "accuracy drop 1.50 pp" in r.output


def test_report_says_how_to_load_a_published_openvino_model_at_its_measured_precision(tmp_path):
    from edgeopt.engine.report_stage import publish_chosen
    from edgeopt.report.markdown import to_markdown

    (tmp_path / "artifacts").mkdir()
    for ext in (".xml", ".bin"):
        (tmp_path / "artifacts" / f"c{ext}").write_bytes(b"x")
    report = _report("top1")
    c = report.candidates[0]
    c.runtime, c.precision, c.artifact = "openvino", "fp32", "artifacts/c.xml"
    publish_chosen(report, tmp_path)
    assert (tmp_path / "model.xml").is_file() and (tmp_path / "model.bin").is_file()
    assert "INFERENCE_PRECISION_HINT" in " ".join(report.model.load_note)
    md = to_markdown(report)
    assert "load `model.xml`" in md and "'INFERENCE_PRECISION_HINT': 'f32'" in md
    back = load_report(write_report(report, tmp_path))
    assert back.model.load_note == report.model.load_note
