"""The benchmark harness on its tiniest configuration, so that it keeps working. No timing assertions."""

import argparse

import torch

from benchmarks.run import run_task, to_markdown
from benchmarks.tasks import Task


def test_harness_runs_every_contender(tmp_path, tiny_plain):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 16, 16)
    import tinynet

    model = tinynet.TinyNet(in_ch=3, attention=False).eval()
    task = Task("smoke", "tinynet", model, x, calib=[torch.randn(4, 3, 16, 16, generator=g) for _ in range(2)],
                eval=[torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)], labelled=False)
    args = argparse.Namespace(no_retrain=True, bench_time=0.3, measure_time=0.5)
    res = run_task(task, args, tmp_path)
    names = {r["contender"] for r in res["rows"]}
    assert {"pytorch-eager-fp32", "ort-fp32", "openvino-default", "openvino-nncf-int8", "ort-static-int8",
            "torch-pruning-l2-50%-ort", "edgeopt"} <= names
    for r in res["rows"]:
        assert r["n"] > 0 and r["p50_ms"] > 0 and 0 <= r["accuracy"] <= 100
    eager = next(r for r in res["rows"] if r["contender"] == "pytorch-eager-fp32")
    assert eager["accuracy"] == 100.0  # fidelity of the reference to itself
    md = to_markdown([res])
    assert "| edgeopt" in md and "speedup of edgeopt" in md
