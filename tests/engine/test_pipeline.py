import json

import pytest
import torch

import edgeopt
from edgeopt.errors import ConfigError, DataError
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
    # report.json is written once, with everything report.md and report.html show: the plot too
    assert data["model"]["plot"] == "report.png" and (tmp_path / "report.png").is_file()
    assert "![latency vs accuracy](report.png)" in (tmp_path / "report.md").read_text()
    assert all(c["structure"] and c["format"] == "onnx" for c in [data["baseline"], *data["candidates"]])
    # the typed sections, and the config the run used (the model was passed in memory: not replayable as is)
    assert report.context.max_accuracy_drop == 100.0 and report.target.name and report.model.macs > 0
    used = edgeopt.load_config(tmp_path / "run.yaml")
    assert used.inputs.model is None and used.deploy.runtimes == ["onnxruntime"]
    assert data["context"] == used.context().model_dump(mode="json")


def test_optimize_api_rejects_an_unknown_option_with_did_you_mean(tmp_path, tiny_plain, example):
    with pytest.raises(ConfigError, match="did you mean 'max_accuracy_drop'"):
        edgeopt.optimize(tiny_plain, example, max_acuracy_drop=1.0, out_dir=tmp_path)
    with pytest.raises(ConfigError, match="bench_time_s"):
        edgeopt.optimize(tiny_plain, example, bench_time_s=-1, out_dir=tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written before the options are valid


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


def test_retrain_without_training_data_is_a_data_error(tmp_path, tiny_plain, example):
    with pytest.raises(DataError, match="--retrain needs training data"):
        edgeopt.optimize(tiny_plain, example, retrain=True, eval_data=_data(), out_dir=tmp_path)


def test_retrain_fine_tunes_pruned_candidates_from_the_teacher(tmp_path, tiny_plain, example, fast_bench):
    report = edgeopt.optimize(tiny_plain, example, retrain=True, max_accuracy_drop=100.0, eval_data=_data(),
                              train_data=_data(seed=2), calib_data=_data(seed=1), out_dir=tmp_path,
                              runtimes=["onnxruntime"], techniques=["prune", "fine_tune"], epochs=1,
                              bench_config=fast_bench)
    tuned = [c for c in report.candidates if c.status == "ok" and any(s.technique == "fine_tune" for s in c.steps)]
    assert tuned, [(c.id, c.status, c.reason) for c in report.candidates]
    rec = next(s.params["record"] for s in tuned[0].steps if s.technique == "fine_tune")
    assert rec["distillation"] == rec["kind_screen"]["chosen"] and rec["epochs"] == 1 and len(rec["losses"]) == 1
    assert any(d.technique == "fine_tune" and d.decision == "applied" for d in report.decisions)


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    # one out dir for the demo budgets: structures screened for one budget are reused from the cache
    return tmp_path_factory.mktemp("demo")


@pytest.mark.parametrize("budget", [0.0, 0.5, 2.0])
def test_demo_chosen_candidate_is_within_budget(demo_out, budget):
    from edgeopt.measure.timing import BenchConfig

    report = edgeopt.optimize("demo", max_accuracy_drop=budget, out_dir=demo_out,
                              bench_config=BenchConfig(warmup_runs=3, min_runs=10, max_time_s=1.0))
    chosen = report.chosen_candidate
    assert chosen is not None and chosen.metric == "top1" and chosen.latency_source == "measured"
    assert chosen.accuracy_drop <= budget + 1e-9
    if budget == 0.0:  # the baseline, or a candidate whose held-out predictions lose nothing
        assert chosen.id == report.baseline.id or chosen.accuracy >= report.baseline.accuracy
    html = (demo_out / "report.html").read_text()
    assert "data:image/png;base64," in html and chosen.id in html


def test_int8_without_calibration_is_skipped_or_random_on_request(tmp_path, tiny_plain, example, fast_bench):
    from edgeopt.targets import detect_local

    if "int8" not in detect_local().precisions:
        pytest.skip("this CPU has no int8 units: int8 is not proposed here, whatever the calibration data")
    report = edgeopt.optimize(tiny_plain, example, out_dir=tmp_path / "a", runtimes=["onnxruntime"],
                              techniques=["quantize"], bench_config=fast_bench)
    assert not any(c.precision == "int8" for c in report.candidates)
    assert any(d.technique.startswith("quantize:int8") and "calibration" in d.reason for d in report.decisions)
    report = edgeopt.optimize(tiny_plain, example, out_dir=tmp_path / "b", runtimes=["onnxruntime"],
                              techniques=["quantize"], calib_random=True, bench_config=fast_bench)
    int8 = [c for c in report.candidates if c.precision == "int8"]
    assert int8 and int8[0].status in ("ok", "rejected")
    assert report.environment["calibration"] == "random"
    assert any(d.technique == "calibration" and "meaningless" in d.reason for d in report.decisions)


class _Block(torch.nn.Module):
    def __init__(self, w):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(w, w, 3, padding=1, bias=False), torch.nn.BatchNorm2d(w),
                                        torch.nn.ReLU(), torch.nn.Conv2d(w, w, 3, padding=1, bias=False),
                                        torch.nn.BatchNorm2d(w))

    def forward(self, x):
        return torch.relu(x + self.body(x))


class _Residual(torch.nn.Module):
    def __init__(self, w=16):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(1, w, 3, padding=1), torch.nn.ReLU())
        self.blocks = torch.nn.Sequential(*[_Block(w) for _ in range(4)])
        self.fc = torch.nn.Linear(w, 10)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def test_optimize_stacks_another_techniques_family_on_the_fastest_structure(tmp_path, example, fast_bench):
    """Channel pruning and depth pruning each settle alone; the fastest structure within budget then gets the
    other technique's family bisected on top of it, built from its model, exported and measured."""
    torch.manual_seed(0)
    report = edgeopt.optimize(_Residual().eval(), example, target="local", max_accuracy_drop=100.0,
                              calib_data=_data(seed=1, labels=False), out_dir=tmp_path, runtimes=["onnxruntime"],
                              techniques=["prune", "depth_prune"], bench_config=fast_bench)
    stack = next(d for d in report.decisions if d.technique == "stack")
    assert stack.decision == "applied", stack.reason
    stacked = [c for c in report.candidates if "+" in c.structure and c.status == "ok"]
    assert stacked, [(c.id, c.status, c.reason) for c in report.candidates if "+" in c.structure]
    kinds = {s.technique for s in stacked[0].steps}
    assert {"prune", "depth_prune"} <= kinds
    base = next(c for c in report.candidates if c.structure == stacked[0].structure.split("+")[0])
    assert stacked[0].macs < base.macs  # the family's cut on top of the base's
