import json

from cliruns import assert_one_line_error, run


def test_throughput_goal_without_a_load_is_one_line_error(tinynet_spec, tmp_path):
    p = run("optimize", "--model", tinynet_spec, "--input-shape", "1,1,16,16", "--goal", "throughput",
            "--out", str(tmp_path))
    assert_one_line_error(p, "--batch-size N and/or --streams N")
    p = run("optimize", "--model", tinynet_spec, "--input-shape", "1,1,16,16", "--goal", "throughput",
            "--streams", "0", "--out", str(tmp_path))
    assert p.returncode == 2 and "Traceback" not in p.stderr


def test_optimize_throughput_goal_batch_4(tinynet_spec, tmp_path):
    """A short search: dynamic-batch artifacts, every ok candidate measured at batch 4, ranked by images/s."""
    p = run("optimize", "--model", tinynet_spec, "--input-shape", "1,1,16,16", "--goal", "throughput",
            "--batch-size", "4", "--streams", "2", "--techniques", "quantize", "--runtimes", "onnxruntime,openvino",
            "--bench-time", "1", "--time-budget", "120", "--out", str(tmp_path))
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads((tmp_path / "report.json").read_text())
    assert r["context"]["goal"] == "throughput" and r["context"]["serve_batch"] == 4
    assert "goal throughput" in r["environment"]["figures"]
    measured = [c for c in [r["baseline"], *r["candidates"]] if c.get("throughput")]
    assert measured, [(c["id"], c["status"], c["reason"]) for c in r["candidates"]]
    for c in measured:
        t = c["throughput"]
        assert t["batch"] == 4 and t["streams"] == 2 and t["images_s"] > 0 and t["p99_ms"] >= t["p50_ms"] > 0
        assert t["goal"] == "throughput" and t["runtime_settings"]["runtime"] == c["runtime"]
    chosen = next(c for c in measured if c["id"] == r["chosen"])
    ok = [c for c in measured if c["status"] == "ok"]
    assert chosen["throughput"]["images_s"] == max(c["throughput"]["images_s"] for c in ok)
    assert "images/s" in chosen["reason"]
    p = run("gate", str(tmp_path / "report.json"), "--min-throughput", "1")
    assert p.returncode == 0, p.stdout + p.stderr
