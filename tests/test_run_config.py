"""The typed run config: flat options, YAML save/replay, --config with flag overrides, one-line errors,
runtime names checked, Ctrl-C that says what was kept."""

import json

import pytest
import yaml
from cliruns import assert_one_line_error, run
from typer.testing import CliRunner

from edgeopt.cli import app
from edgeopt.config import RunConfig, load_config, make_context
from edgeopt.errors import ConfigError, TargetError, UnknownNameError


def test_flat_options_land_in_their_sections_and_unknown_ones_say_did_you_mean():
    cfg = RunConfig().with_flat(target="jetson", epochs=3, bench_time=0.5, resume=False, input_shape=(1, 3, 8, 8),
                                data_options={"val_split": 0.3})
    assert (cfg.deploy.target, cfg.search.epochs, cfg.measure.bench_time_s) == ("jetson", 3, 0.5)
    assert cfg.output.cache is False and cfg.inputs.input_shape == [1, 3, 8, 8]
    assert cfg.inputs.data_options.val_split == 0.3 and cfg.inputs.data_options.mean is None
    ctx = cfg.context()
    assert ctx.epochs == 3 and ctx.target == "jetson" and not hasattr(cfg.deploy, "epochs")
    with pytest.raises(ConfigError, match="unknown option 'max_acuracy_drop'; did you mean 'max_accuracy_drop'"):
        RunConfig().with_flat(max_acuracy_drop=1.0)
    with pytest.raises(ConfigError, match="field 'measure.bench_time_s'.*greater than 0"):
        RunConfig().with_flat(bench_time_s=-1)


def test_the_served_batch_is_the_data_batch_in_the_api_as_on_the_cli():
    """INT8 is calibrated at the shape served: serve_batch=8 alone sets the data batch, as --batch-size does."""
    cfg = RunConfig().with_flat(goal="throughput", serve_batch=8)
    assert cfg.deploy.serve_batch == 8 and cfg.inputs.data_options.batch_size == 8
    cfg = RunConfig().with_flat(goal="throughput", serve_batch=8, data_options={"batch_size": 4})
    assert cfg.inputs.data_options.batch_size == 4  # said explicitly: kept
    assert RunConfig().with_flat(goal="throughput", streams=2).inputs.data_options.batch_size == 32


def test_yaml_save_and_load_round_trip(tmp_path):
    cfg = RunConfig().with_flat(model="demo", goal="size", size_budget_mb=0.5, techniques=["prune"], seed=7,
                                data_options={"image_size": [32, 32], "mean": [0.5, 0.4, 0.3]})
    path = tmp_path / "run.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path)
    assert again == cfg and again.context() == cfg.context()


@pytest.mark.parametrize("doc,msg", [
    ({"deploy": {"max_acuracy_drop": 1}}, "field 'deploy.max_acuracy_drop': unknown key; did you mean "
                                          "'max_accuracy_drop'"),
    ({"measure": {"bench_time_s": -1}}, "field 'measure.bench_time_s'"),
    ({"deploi": {}}, "did you mean 'deploy'"),
    ({"inputs": {"data_options": {"val_splt": 0.1}}}, "did you mean 'val_split'"),
])
def test_bad_config_file_is_one_typed_line(tmp_path, doc, msg):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=msg):
        load_config(path)


def test_unknown_key_and_bad_value_in_a_config_file_exit_2(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("deploy:\n  goal: latency\n  max_acuracy_drop: 1\n")
    assert_one_line_error(run("optimize", "--config", str(path)), "did you mean 'max_accuracy_drop'")
    path.write_text("measure:\n  bench_time_s: -1\n")
    assert_one_line_error(run("optimize", "--config", str(path)), "bench_time_s")


def test_negative_bench_time_and_gate_limit_exit_2(tmp_path):
    assert_one_line_error(run("optimize", "--bench-time", "-1", "--out", str(tmp_path / "o")), "bench_time_s")
    report = tmp_path / "r.json"
    report.write_text("{}")
    assert_one_line_error(run("gate", str(report), "--max-latency-ms", "-1"), "--max-latency-ms")


def test_misspelt_runtime_is_an_error_with_did_you_mean():
    from edgeopt.engine.pipeline import check_names

    with pytest.raises(UnknownNameError, match="unknown runtime 'tensorrtt'; did you mean 'tensorrt'"):
        check_names(make_context(runtimes=["onnxruntime", "tensorrtt"]))
    assert check_names(make_context(runtimes=["ONNXRuntime"])).runtimes == ["onnxruntime"]


def test_targets_use_the_same_one_line_errors(tmp_path):
    from edgeopt.targets import load_target

    f = tmp_path / "t.yaml"
    f.write_text("name: b\nkind: cpu\narch: x\nruntimes: [onnxruntime]\nprecisions: [fp32]\ncors: 4\n")
    with pytest.raises(TargetError, match="field 'cors': unknown key; did you mean 'cores'"):
        load_target(str(f))


@pytest.fixture
def captured(monkeypatch):
    """The RunConfig the CLI hands to the pipeline (the pipeline itself is not run)."""
    from edgeopt.engine import pipeline

    seen = []
    monkeypatch.setattr(pipeline, "run", lambda cfg, **kw: seen.append(cfg))  # returns None, like a follower
    return seen


def test_cli_defaults_are_the_config_defaults(captured):
    from edgeopt.decide.policy import DEMO_TIME_BUDGET_S

    res = CliRunner().invoke(app, ["optimize"])
    assert res.exit_code == 0, res.output
    # the one CLI default the config lacks: the quick start (the demo, no budget given) is bounded in time
    assert captured == [RunConfig().with_flat(time_budget_s=DEMO_TIME_BUDGET_S)]


def test_flags_given_override_the_file_and_the_rest_comes_from_it(tmp_path, captured):
    path = tmp_path / "run.yaml"
    path.write_text(RunConfig().with_flat(goal="size", seed=3, retrain=True, epochs=4, out_dir="a").to_yaml())
    res = CliRunner().invoke(app, ["optimize", "--config", str(path), "--goal", "latency", "--no-retrain",
                                   "--out", str(tmp_path / "b"), "--std", "0.2"])
    assert res.exit_code == 0, res.output
    cfg = captured[0]
    assert (cfg.deploy.goal, cfg.deploy.retrain, cfg.output.out_dir) == ("latency", False, str(tmp_path / "b"))
    assert (cfg.measure.seed, cfg.search.epochs) == (3, 4)  # not given: the file's values, not the defaults
    assert cfg.inputs.data_options.std == (0.2,)


def test_interrupted_run_says_what_was_kept_and_replays_from_run_yaml(tmp_path, tinynet_spec, monkeypatch):
    """Ctrl-C after the search: one line naming the cache entries and the resume command; the saved
    run.yaml then replays the run with the same context (the finished candidates come from the cache)."""
    from edgeopt.engine import pipeline

    out = tmp_path / "out"
    args = ["optimize", "--model", tinynet_spec, "--input-shape", "1,1,16,16", "--techniques", "quantize",
            "--runtimes", "onnxruntime", "--bench-time", "0.3", "--seed", "5", "--max-accuracy-drop", "2.5",
            "--out", str(out)]

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "measure_all", interrupt)
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 130, res.output
    kept = len(list((out / "cache").glob("*.json")))
    line = [ln for ln in res.output.splitlines() if ln.startswith("interrupted")]
    assert kept >= 1 and len(line) == 1 and f"kept {kept} " in line[0]
    assert f"edgeopt optimize --config {out / 'run.yaml'}" in line[0]
    saved = (out / "run.yaml").read_text()
    monkeypatch.undo()
    res = CliRunner().invoke(app, ["optimize", "--config", str(out / "run.yaml")])
    assert res.exit_code in (0, 1), res.output
    report = json.loads((out / "report.json").read_text())
    cfg = load_config(out / "run.yaml")
    assert report["context"] == cfg.context().model_dump(mode="json")
    assert report["context"]["seed"] == 5 and report["context"]["max_accuracy_drop"] == 2.5
    assert report["model"]["cache_hits"] >= 1
    assert yaml.safe_load((out / "run.yaml").read_text()) == yaml.safe_load(saved)  # replay saves the same


def test_the_training_precision_flows_from_the_flag_to_the_planned_fine_tuning(captured):
    from edgeopt.techniques.planning import finetune_step

    res = CliRunner().invoke(app, ["optimize", "--retrain", "--train-precision", "fp32"])
    assert res.exit_code == 0, res.output
    ctx = captured[0].context()
    assert captured[0].search.train_precision == "fp32" and ctx.train_precision == "fp32"
    assert finetune_step(ctx, True, []).precision == "fp32"
    assert finetune_step(RunConfig().with_flat(retrain=True).context(), True, []).precision == "auto"
    assert_one_line_error(run("optimize", "--train-precision", "fp16"), "train_precision")
