import numpy as np
import pytest
import torch

import edgeopt
from edgeopt.backends import BACKENDS, export_verified
from edgeopt.bench import BenchConfig, measure, median_ci_rel, stats_from_samples
from edgeopt.errors import ArtifactError, ConfigError, InputShapeError, VerificationError
from edgeopt.verify import verify_session


def _pairs():
    for name, b in BACKENDS.items():
        for prec in b.precisions:
            yield pytest.param(name, prec, marks=pytest.mark.skipif(
                not b.installed(), reason=f"{b.module} not installed (pip install 'edgeopt[{b.extra}]')"))


@pytest.mark.parametrize("fmt,precision", list(_pairs()))
def test_every_format_precision_exports_verifies_and_benchmarks(tmp_path, tiny, example, fmt, precision,
                                                                fast_bench):
    if precision == "bf16":
        from edgeopt.targets import detect_local

        if "bf16" not in detect_local().precisions:
            pytest.skip("this CPU has no bf16 support")
    result, session = export_verified(tiny, example, fmt, tmp_path / "m", precision=precision, threads=1)
    assert result.path.exists() and result.size_bytes > 0
    assert result.info["verification"]["top1_agreement"] >= 0.75
    r = edgeopt.benchmark(result.path, precision=precision, threads=1, config=fast_bench)
    assert r.n >= 10 and 0 < r.p50_ms <= r.p99_ms
    assert r.precision_executed.startswith(precision) or precision == "fp32"


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
