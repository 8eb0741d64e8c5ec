"""The CLI as a user runs it: real subprocesses, exit codes, one-line errors, untouched inputs."""

import hashlib
import json

import pytest
import torch
from cliruns import assert_one_line_error, run
from paths import ROOT, TESTS


def test_help_lists_commands():
    p = run("--help")
    assert p.returncode == 0
    for cmd in ("optimize", "plan", "prune", "export", "benchmark", "targets"):
        assert cmd in p.stdout


def test_targets_json():
    p = run("targets", "--json")
    names = {t["name"] for t in json.loads(p.stdout)}
    assert {"local", "jetson-orin-nano", "x86-amx"} <= names


def test_unknown_target_did_you_mean(tinynet_spec, tmp_path):
    p = run("optimize", "--model", tinynet_spec, "--input-shape", "1,1,16,16", "--target", "jetsn",
            "--out", str(tmp_path))
    assert_one_line_error(p, "did you mean 'jetson'")


def test_missing_model_file(tmp_path):
    p = run("optimize", "--model", str(tmp_path / "nope.py") + ":make", "--out", str(tmp_path / "o"))
    assert_one_line_error(p, "does not exist")


def test_corrupt_and_mismatched_checkpoint(tinynet_spec, tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x00garbage")
    p = run("optimize", "--model", tinynet_spec, "--weights", str(bad), "--input-shape", "1,1,16,16")
    assert_one_line_error(p, "not a readable PyTorch checkpoint")
    import tinynet

    wrong = tmp_path / "wrong.pth"
    torch.save(tinynet.make(num_classes=3).state_dict(), wrong)
    before = hashlib.sha256(wrong.read_bytes()).hexdigest()
    p = run("optimize", "--model", tinynet_spec, "--weights", str(wrong), "--input-shape", "1,1,16,16")
    assert_one_line_error(p, "do not match the model")
    assert hashlib.sha256(wrong.read_bytes()).hexdigest() == before


def test_full_pickle_needs_trust(tiny, tmp_path):
    path = tmp_path / "full.pt"
    torch.save(tiny, path)
    p = run("export", "--model", str(path), "--input-shape", "1,1,16,16", "--out", str(tmp_path / "m.onnx"))
    assert_one_line_error(p, "--trust-pickle")
    # a pickle needs its classes importable: the tests folder holds tinynet
    p = run("export", "--model", str(path), "--input-shape", "1,1,16,16", "--trust-pickle",
            "--out", str(tmp_path / "m.onnx"), env_extra={"PYTHONPATH": str(TESTS)})
    assert p.returncode == 0 and (tmp_path / "m.onnx").exists()


def test_wrong_input_shape(tinynet_spec):
    p = run("prune", "--model", tinynet_spec, "--input-shape", "1,3,16,16")
    assert_one_line_error(p, "fails on input shape")
    p = run("prune", "--model", tinynet_spec, "--input-shape", "1,a")
    assert_one_line_error(p, "not a list of integers")


def test_unknown_technique(tinynet_spec, tmp_path):
    p = run("optimize", "--model", tinynet_spec, "--input-shape", "1,1,16,16", "--techniques", "prnue",
            "--out", str(tmp_path))
    assert_one_line_error(p, "unknown technique 'prnue'")


def test_bad_goal_and_budget(tinynet_spec, tmp_path):
    p = run("optimize", "--model", tinynet_spec, "--input-shape", "1,1,16,16", "--goal", "speed")
    assert_one_line_error(p, "goal")
    p = run("optimize", "--model", tinynet_spec, "--input-shape", "1,1,16,16", "--max-accuracy-drop", "-3")
    assert_one_line_error(p, "max_accuracy_drop")


def test_prune_export_benchmark_chain(tinynet_spec, tmp_path):
    onnx = tmp_path / "p.onnx"
    p = run("prune", "--model", tinynet_spec, "--input-shape", "1,1,16,16", "--ratio", "0.4",
            "--out", str(onnx))
    assert p.returncode == 0, p.stderr
    assert "params" in p.stdout and onnx.exists()
    p = run("benchmark", str(onnx), "--max-time", "0.5", "--json")
    assert p.returncode == 0, p.stderr
    stats = json.loads(p.stdout)
    assert stats["latency"]["n"] > 0 and stats["runtime"] == "onnxruntime"
    p = run("benchmark", str(tmp_path / "missing.onnx"))
    assert_one_line_error(p, "does not exist")


def test_plan_json(tinynet_spec):
    p = run("plan", "--model", tinynet_spec, "--input-shape", "1,1,16,16", "--target", "x86-amx", "--json")
    assert p.returncode == 0, p.stderr
    plan = json.loads(p.stdout)
    assert plan["candidates"] and all(c["reason"] for c in plan["candidates"])


def test_impossible_budget_exits_1_with_report(tinynet_spec, tmp_path):
    p = run("optimize", "--model", tinynet_spec, "--input-shape", "1,1,16,16", "--latency-budget-ms", "0.000001",
            "--techniques", "quantize", "--runtimes", "onnxruntime", "--bench-time", "0.5", "--out", str(tmp_path))
    assert p.returncode == 1, p.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["chosen"] is None and report["baseline"]["latency_source"] == "measured"
    assert "no candidate met the constraints" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "report.html").is_file()


def test_plan_text_explains_without_heavy_work(tinynet_spec, tmp_path):
    p = run("plan", "--model", tinynet_spec, "--input-shape", "1,1,16,16", "--target", "jetson", "--goal", "latency")
    assert p.returncode == 0, p.stderr
    assert "unstructured_pruning: rejected" in p.stdout and "2:4" in p.stdout and "estimate" in p.stdout
    p = run("plan", "--model", tinynet_spec, "--input-shape", "1,1,16,16", "--goal", "size", "--no-retrain",
            "--json")
    plan = json.loads(p.stdout)
    reasons = {d["technique"]: d["reason"] for d in plan["decisions"]}
    assert "compress" in reasons["unstructured_pruning"] and "no retraining" in reasons["fine_tune"]
    assert not list(tmp_path.iterdir())  # nothing exported or written


def test_demo_end_to_end_prunes_and_is_faster(tmp_path):
    """`edgeopt optimize` with no model: the built-in demo, trained on first use and cached."""
    # the whole search (about 5 minutes on 2 quiet cores), not the quick start's default time budget, so that a
    # loaded machine still reaches the pruned candidates; the timeout only guards against a hang
    p = run("optimize", "--bench-time", "3", "--time-budget", "1200", "--out", str(tmp_path), timeout=1500)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads((tmp_path / "report.json").read_text())
    assert r["model"]["source"] == "demo" and r["environment"]["data"] == "digits"
    base = r["baseline"]
    chosen = next(c for c in r["candidates"] + [base] if c["id"] == r["chosen"])
    assert base["metric"] == "top1" and base["accuracy"] > 90
    assert chosen["accuracy_drop"] <= 1.0
    assert chosen["latency_source"] == "measured"
    assert chosen["latency_ms"]["p50"] < base["latency_ms"]["p50"]
    pruned_ok = [c for c in r["candidates"] if c["status"] in ("ok", "rejected") and c["macs"]
                 and c["macs"] < base["macs"]]
    assert pruned_ok, "the demo run must physically prune some candidates"
    assert (tmp_path / "report.md").exists() and any(tmp_path.glob("model.*"))
    assert "data:image/png;base64," in (tmp_path / "report.html").read_text()
    assert list((tmp_path / "cache").glob("cand-*.json"))  # a rerun would resume from here


def test_one_data_resolver_for_the_commands_and_optimize(tmp_path):
    """`--data` means the same for `prune`/`export`/`depth` as for `optimize`: the CLI's calibration split is the
    pipeline resolver's, which reads .npy inputs too, and both refuse other forms in one line."""
    import numpy as np

    from edgeopt.cli.common import calibration_data
    from edgeopt.engine.prepare import check_inputs
    from edgeopt.errors import ConfigError
    from edgeopt.inputs.data import digits_data, resolve_data

    npy = tmp_path / "x.npy"
    np.save(npy, np.random.default_rng(0).standard_normal((6, 1, 16, 16)).astype(np.float32))
    splits = resolve_data("m", str(npy), None, None, None, (1, 16, 16), 10)
    assert splits.source == f"npy:{npy}" and splits.train is None and splits.eval is None
    assert tuple(splits.calib.items[0][0].shape) == (6, 1, 16, 16) and not splits.calib.labelled
    cli = calibration_data(str(npy), None, "m", (1, 16, 16))
    assert torch.equal(cli.items[0][0], splits.calib.items[0][0])
    assert calibration_data(None, None, "demo", (1, 32, 32)).items[0][0].shape == digits_data()[0].items[0][0].shape
    assert calibration_data(None, "random", "m", (1, 16, 16)) == "random"
    assert calibration_data(None, None, "m", (1, 16, 16)) is None
    for bad in (str(tmp_path / "missing"), "imagenet"):
        with pytest.raises(ConfigError, match="neither 'digits', an existing image folder"):
            calibration_data(bad, None, "m", (1, 16, 16))
        with pytest.raises(ConfigError, match="neither 'digits', an existing image folder"):
            check_inputs(_inputs(bad))
    with pytest.raises(ConfigError, match="no such .npy file"):
        calibration_data(str(tmp_path / "none.npy"), None, "m", (1, 16, 16))
    check_inputs(_inputs(str(npy)))  # accepted before the model is loaded, as by the resolver


def _inputs(data):
    from edgeopt.config import RunConfig

    return RunConfig().with_flat(data=data).inputs


def test_help_and_readme_say_user_code_is_run():
    import re

    helps = run("optimize", "--help").stdout
    flat = re.sub(r"[\s│]+", " ", helps)
    assert "IMPORT AND RUN that code" in flat and "IMPORTS AND RUNS that code" in flat
    readme = (ROOT / "README.md").read_text()
    assert "**import and run that Python code**" in readme
