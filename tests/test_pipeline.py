import json

import pytest
import torch

import edgeopt
from edgeopt.errors import DataError
from edgeopt.report import load_report

SCHEMA_KEYS = {"schema_version", "edgeopt_version", "context", "target", "environment", "baseline",
               "candidates", "chosen", "decisions"}
CANDIDATE_KEYS = {"id", "steps", "status", "reason", "params", "macs", "size_bytes", "artifact", "runtime",
                  "precision", "latency_ms", "latency_source", "accuracy", "accuracy_drop", "metric"}


def _data(n=64, seed=0, labels=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 16, 16, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return [(x[i:i + 16], y[i:i + 16]) if labels else x[i:i + 16] for i in range(0, n, 16)]


def test_optimize_api_on_a_built_model(tmp_path, tiny_plain, example, fast_bench):
    report = edgeopt.optimize(tiny_plain, example, target="local", max_accuracy_drop=100.0,
                              calib_data=_data(seed=1, labels=False), out_dir=tmp_path,
                              runtimes=["onnxruntime"], bench_config=fast_bench)
    data = json.loads((tmp_path / "report.json").read_text())
    assert SCHEMA_KEYS <= set(data) and data["schema_version"] == 1
    assert CANDIDATE_KEYS <= set(data["baseline"])
    assert data["baseline"]["latency_source"] == "measured" and data["baseline"]["metric"] == "fidelity"
    assert report.chosen is not None and (tmp_path / "model.onnx").exists()
    pruned = [c for c in report.candidates if c.status == "ok" and c.steps]
    assert pruned and all(c.macs < report.baseline.macs for c in pruned)
    assert (tmp_path / "report.md").read_text().startswith("# edgeopt report")
    assert load_report(tmp_path / "report.json").chosen == report.chosen


def test_zero_budget_keeps_an_equivalent_model(tmp_path, tiny_plain, example, fast_bench):
    report = edgeopt.optimize(tiny_plain, example, max_accuracy_drop=0.0, eval_data=_data(),
                              calib_data=_data(seed=1), out_dir=tmp_path, runtimes=["onnxruntime"],
                              bench_config=fast_bench)
    chosen = report.chosen_candidate
    assert chosen is not None and chosen.accuracy_drop <= 0.0 and chosen.metric == "top1"


def test_impossible_latency_budget_chooses_nothing(tmp_path, tiny_plain, example, fast_bench):
    report = edgeopt.optimize(tiny_plain, example, latency_budget_ms=1e-6, out_dir=tmp_path,
                              runtimes=["onnxruntime"], techniques=["quantize"], bench_config=fast_bench)
    assert report.chosen is None and (tmp_path / "report.json").exists()
    assert all("latency budget" in c.reason for c in [report.baseline, *report.candidates] if c.latency_ms)


@pytest.mark.parametrize("bad,msg", [
    ([], "empty"),
    ([torch.full((4, 1, 16, 16), float("nan"))], "NaN"),
    ([torch.randn(4, 3, 16, 16)], "sample shape"),
    ([(torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 99]))], "labels outside"),
])
def test_bad_data(tmp_path, tiny_plain, example, bad, msg):
    with pytest.raises(DataError, match=msg):
        edgeopt.optimize(tiny_plain, example, eval_data=bad, out_dir=tmp_path)


def test_remote_target_estimates_latency(tmp_path, tiny_plain, example):
    report = edgeopt.optimize(tiny_plain, example, target="jetson", out_dir=tmp_path, techniques=["quantize"])
    assert report.baseline.latency_source == "estimated" and report.baseline.latency_ms.n == 0
