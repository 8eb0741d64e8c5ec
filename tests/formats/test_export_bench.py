import numpy as np
import pytest
import torch

import edgeopt
from edgeopt.errors import ArtifactError, ConfigError, InputShapeError, VerificationError
from edgeopt.formats import BACKENDS, export_verified
from edgeopt.formats.verify import verify_session
from edgeopt.measure.timing import BenchConfig, measure, median_ci_rel, stats_from_samples


def _pairs():
    for name, b in BACKENDS.items():
        for prec in b.precisions:
            yield pytest.param(name, prec, marks=pytest.mark.skipif(not b.installed(), reason=b.missing_reason()))


@pytest.mark.parametrize("fmt,precision", list(_pairs()))
def test_every_format_precision_exports_verifies_and_benchmarks(tmp_path, tiny, example, fmt, precision,
                                                                fast_bench):
    if precision == "bf16":
        from edgeopt.targets import detect_local

        if "bf16" not in detect_local().precisions:
            pytest.skip("this CPU has no bf16 support")
    # int8 calibrates on inputs from the verification inputs' distribution (the tests' own data)
    calib = [torch.randn(64, *example.shape[1:], generator=torch.Generator().manual_seed(5))]
    result, session = export_verified(tiny, example, fmt, tmp_path / "m", precision=precision, threads=1,
                                      calib=calib if precision == "int8" else None)
    assert result.path.exists() and result.size_bytes > 0
    v = result.info["verification"]
    assert v["top1_agreement"] >= (0.99 if precision == "fp32" else 0.7)
    # a CPU without fp16/bf16 units runs the "reduced" artifact in fp32: then it is judged as fp32 (closely)
    assert v["inputs"] >= (4 if v["precision"] == "fp32" else 20), "reduced precisions are judged on enough inputs"
    r = edgeopt.benchmark(result.path, precision=precision, threads=1, config=fast_bench)
    assert r.n >= 10 and 0 < r.p50_ms <= r.p99_ms
    # the executed precision is what the runtime reports: int8 artifacts say so whatever flag was passed
    assert precision in r.precision_executed or (fmt, precision) == ("openvino", "fp16")
    if precision == "int8":
        assert result.info["calibration"]["source"] == "data"
        assert "int8" in edgeopt.benchmark(result.path, threads=1, config=fast_bench).precision_executed


def test_export_api_returns_verified_path(tmp_path, tiny, example):
    path = edgeopt.export(tiny, example, format="onnx", out=tmp_path / "t.onnx")
    assert path.suffix == ".onnx" and path.stat().st_size > 0
    assert not list(tmp_path.glob(".*tmp*")), "no temp files left behind"


def test_verification_catches_a_wrong_model(tmp_path, tiny_plain, example):
    import tinynet

    _, session = export_verified(tiny_plain, example, "onnx", tmp_path / "m", verify=False)
    other = tinynet.make_plain()
    with torch.no_grad():
        other.fc.weight.mul_(-1)
    with pytest.raises(VerificationError):
        verify_session(session, other, example, "fp32")


def test_unknown_format_and_precision(tmp_path, tiny, example):
    with pytest.raises(ConfigError, match="did you mean"):
        edgeopt.export(tiny, example, format="onnxx", out=tmp_path / "x")
    with pytest.raises(ConfigError, match="precision"):
        edgeopt.export(tiny, example, format="onnx", precision="int4", out=tmp_path / "x")


def test_benchmark_bad_artifacts(tmp_path, tiny, example):
    with pytest.raises(ArtifactError, match="does not exist"):
        edgeopt.benchmark(tmp_path / "none.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ArtifactError, match="cannot load"):
        edgeopt.benchmark(junk)
    path = edgeopt.export(tiny, example, out=tmp_path / "t.onnx")
    with pytest.raises(InputShapeError):
        edgeopt.benchmark(path, input_shape=(1, 3, 16, 16))
    with pytest.raises(ConfigError, match="suffix"):
        edgeopt.benchmark(_touch(tmp_path / "m.weird"))


def _touch(p):
    p.write_bytes(b"x")
    return p


def test_stats_and_ci():
    s = stats_from_samples([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s.p50 == 3.0 and s.n == 5 and s.p99 > s.p90 > s.p50
    assert median_ci_rel([1.0] * 50) == 0.0
    assert median_ci_rel([1.0, 2.0]) == float("inf")


def test_interleaved_measure_orders_by_cost():
    a = np.random.rand(64, 64).astype(np.float32)
    fast = lambda: a @ a  # noqa: E731
    slow = lambda: [a @ a for _ in range(20)]  # noqa: E731
    res = measure({"fast": fast, "slow": slow}, BenchConfig(min_runs=20, max_time_s=1.0, warmup_s=0))
    assert res["fast"].n >= 20 and res["slow"].n >= 20
    assert res["slow"].p50 > res["fast"].p50


def test_a_slow_phase_shared_by_the_models_is_divided_out_round_by_round():
    """Two models, B twice as slow as A, timed 3 per turn for 20 rounds; the machine runs 3x slower from the
    rounds 9 and 10 on for A and B (the phase began during a round: B took its turns there first), so A's turns
    are slow in 11 rounds and B's in 9: A's median as timed lands in the slow phase and B's does not, and their
    ratio reads 0.67 instead of 2. Divided by each round's shared factor the ratio is 2 again."""
    from edgeopt.measure.timing import shared_slowdown

    samples, rounds = {"A": [], "B": []}, {"A": [], "B": []}
    for r in range(20):
        for name, base in (("A", 1.0), ("B", 2.0)):
            slow = r >= (9 if name == "A" else 11)
            for _ in range(3):
                samples[name].append(base * (3.0 if slow else 1.0))
                rounds[name].append(r)
    raw = np.median(samples["B"]) / np.median(samples["A"])
    assert abs(raw - 2 / 3) < 1e-9
    factor = shared_slowdown(samples, rounds)
    divided = {k: np.median([t / factor[r] for t, r in zip(v, rounds[k], strict=True)]) for k, v in samples.items()}
    assert abs(divided["B"] / divided["A"] - 2.0) < 0.05
    assert shared_slowdown({"A": samples["A"]}, {"A": rounds["A"]}) is None  # alone: nothing shared
    assert shared_slowdown({k: v[:6] for k, v in samples.items()}, {k: v[:6] for k, v in rounds.items()}) is None


def test_interleaved_figures_say_what_was_timed():
    a = np.random.rand(32, 32).astype(np.float32)
    cfg = BenchConfig(min_runs=20, max_time_s=0.5, warmup_s=0)
    both = measure({"x": lambda: a @ a, "y": lambda: [a @ a for _ in range(5)]}, cfg)
    assert all(s.raw_p50 is not None and s.raw_p50 > 0 for s in both.values())
    assert measure({"x": lambda: a @ a}, cfg)["x"].raw_p50 is None  # alone: the figures are as timed


def test_ab_benchmark_interleaves_and_records_the_machine(tmp_path, tiny_plain, example, fast_bench):
    from edgeopt.measure.artifacts import benchmark_many

    a = edgeopt.export(tiny_plain, example, format="onnx", out=tmp_path / "a.onnx")
    wide = torch.nn.Sequential(torch.nn.Conv2d(1, 64, 3, padding=1), torch.nn.Conv2d(64, 64, 3, padding=1),
                               torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.Flatten(),
                               torch.nn.Linear(64 * 256, 10)).eval()
    b = edgeopt.export(wide, example, format="onnx", out=tmp_path / "b.onnx")
    ra, rb = benchmark_many([a, b], threads=1, config=fast_bench)
    assert ra.n == rb.n >= 10  # interleaved: the same number of runs, block by block
    assert rb.p50_ms > ra.p50_ms  # ~75x the MACs
    assert ra.threads == 1 and "CPU" in ra.device and ra.runtime_version
    rbatch = benchmark_many([a], batch_size=1, threads=1, config=fast_bench)[0]
    assert rbatch.input_shape == [1, 1, 16, 16]
    with pytest.raises(InputShapeError, match="export --dynamic-batch"):
        benchmark_many([a], batch_size=4, threads=1, config=fast_bench)  # static batch 1 artifact


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_per_layer_profile_ranks_the_heavy_layer_first(tmp_path, example, fmt):
    from edgeopt.measure.artifacts import per_layer

    if not BACKENDS.get(fmt).installed():
        pytest.skip(BACKENDS.get(fmt).missing_reason())
    # one conv does ~99% of the work: a profile must put it on top
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 1), torch.nn.ReLU(), torch.nn.Conv2d(4, 256, 5, padding=2),
                              torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    result, _ = export_verified(net, example, fmt, tmp_path / "p", threads=1)
    rows = per_layer(result.path, threads=1, runs=10)
    assert len(rows) >= 2 and rows[0].ms >= rows[-1].ms
    assert "conv" in rows[0].op.lower() and rows[0].share > 0.3
    assert abs(sum(r.share for r in rows) - 1.0) < 1e-6


def test_onnxruntime_threads_stop_spinning_when_a_run_returns(tmp_path):
    """Left spinning after a run, ONNX Runtime's workers take a core from the next candidate measured
    interleaved (on 2 cores OpenVINO's runs went bimodal, p90 twice the p50)."""
    import time

    from edgeopt.formats import backend_for

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(32, 32, 3, padding=1)).eval()
    x = torch.randn(1, 3, 64, 64)
    path = edgeopt.export(model, x, format="onnx", out=tmp_path / "m.onnx")
    session = backend_for("onnx").load(path, threads=2)
    feed = x.numpy()
    for _ in range(5):
        session.run(feed)
    cpu = time.process_time()
    time.sleep(0.1)
    assert time.process_time() - cpu < 0.03, "ONNX Runtime's threads kept a core busy after the run returned"
