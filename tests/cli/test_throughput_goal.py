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


def test_benchmark_batch_on_static_and_dynamic_artifacts(tmp_path):
    import torch
    from tinynet import make_plain

    import edgeopt

    model, x = make_plain(), torch.randn(1, 1, 16, 16)
    static = edgeopt.export(model, x, format="onnx", out=tmp_path / "static.onnx")
    dynamic = edgeopt.export(model, x, format="openvino", out=tmp_path / "dyn.xml", dynamic_batch=True)
    p = run("benchmark", str(static), "--batch-size", "8", "--max-time", "0.5")
    assert_one_line_error(p, "export --dynamic-batch")
    p = run("benchmark", str(dynamic), "--batch-size", "8", "--streams", "2", "--threads", "2", "--max-time", "1",
            "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["input_shape"][0] == 8 and doc["throughput"]["batch"] == 8 and doc["throughput"]["streams"] == 2
    (tmp_path / "b.json").write_text(p.stdout)
    p = run("gate", str(tmp_path / "b.json"), "--min-throughput", "1e9")
    assert p.returncode == 1 and "FAIL min_throughput" in p.stdout


def test_batch_size_is_the_served_batch_only_for_the_throughput_goal():
    from edgeopt.cli.options import config_from_flags
    from edgeopt.engine.build import export_options

    cfg = config_from_flags({"goal": "throughput", "batch_size": 8}, {"goal", "batch_size"})
    assert cfg.deploy.serve_batch == 8 and cfg.inputs.data_options.batch_size == 8
    assert export_options(cfg) == {"dynamic_batch": True}  # verified at batch 1 and at 8 by the run
    latency = config_from_flags({"batch_size": 8}, {"batch_size"})
    assert latency.deploy.serve_batch is None and export_options(latency) is None
    streams_only = config_from_flags({"goal": "throughput", "streams": 3}, {"goal", "streams"})
    assert streams_only.deploy.streams == 3 and export_options(streams_only) is None
