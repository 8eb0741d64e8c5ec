"""Where a run's wall time goes: the phases add up, and a real run's report.json has every phase, per candidate
too, summing to its wall time."""

import time

from edgeopt.engine.phases import Phases


def test_phases_add_up_and_other_is_the_rest():
    phases = Phases()
    with phases("load"):
        time.sleep(0.01)
    phases.add("load", 1.0)
    phases.add("export onnx", 2.0)
    summary = phases.summary(5.0)
    assert list(summary) == ["load", "export onnx", "other"]
    assert 1.01 <= summary["load"] < 1.5 and abs(sum(summary.values()) - 5.0) < 1e-6


def test_a_real_run_reports_where_its_time_went(tmp_path, tiny_plain, example, fast_bench):
    import edgeopt

    report = edgeopt.optimize(tiny_plain, example, target="local", max_accuracy_drop=100.0, out_dir=tmp_path,
                              runtimes=["onnxruntime"], bench_config=fast_bench)
    profile = report.model.profile
    assert {"load", "analyze", "reference predictions", "plan", "build", "screen", "export onnx", "verify",
            "evaluate", "measure", "test split", "other"} <= set(profile)
    # the phases account for the run: what none of them covers is a small part of the wall time
    assert abs(sum(profile.values()) - report.wall_time_s) < 0.05
    assert profile["other"] <= 0.1 * report.wall_time_s + 0.5, profile
    assert report.model.search["profile"]["build"] == profile["build"]
    ok = [c for c in [report.baseline, *report.candidates] if c.status == "ok"]
    assert ok and all({"export", "verify", "evaluate"} <= set(c.seconds) for c in ok if not c.from_cache)
