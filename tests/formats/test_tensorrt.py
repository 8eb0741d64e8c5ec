"""TensorRT: engines built from ONNX through TensorRT's Python API. These tests need the `tensorrt` package
and an NVIDIA GPU; without them they skip with the reason, and the test below checks that the backend
then says which extra or hardware is missing instead of failing obscurely."""

import importlib.util
import json

import pytest
import torch

import edgeopt
from edgeopt.errors import ArtifactError, BackendMissingError
from edgeopt.formats import BACKENDS, export_verified

TRT = BACKENDS.get("tensorrt")
HAS_TRT = importlib.util.find_spec("tensorrt") is not None
needs_trt = pytest.mark.skipif(not TRT.installed(), reason=TRT.missing_reason() or "tensorrt unavailable")


def test_tensorrt_row_and_missing_reason(tmp_path, tiny_plain, example):
    assert TRT.suffix == ".engine" and TRT.extra == "tensorrt" and {"fp16", "int8"} <= set(TRT.precisions)
    assert BACKENDS.get("trt") is TRT
    if TRT.installed():
        pytest.skip("tensorrt and a GPU are present: the missing-backend path cannot be exercised")
    with pytest.raises(BackendMissingError, match="tensorrt" if not HAS_TRT else "GPU"):
        edgeopt.export(tiny_plain, example, format="tensorrt", out=tmp_path / "m.engine")
    assert not list(tmp_path.iterdir())


@needs_trt
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engine_builds_verifies_and_benchmarks(tmp_path, tiny_plain, example, precision, fast_bench):
    calib = [torch.randn(64, *example.shape[1:], generator=torch.Generator().manual_seed(5))]
    cache = tmp_path / "timing.cache"
    result, session = export_verified(tiny_plain, example, "tensorrt", tmp_path / "m", precision=precision,
                                      calib=calib if precision == "int8" else None,
                                      options={"timing_cache": str(cache), "workspace_mb": 256})
    meta = json.loads(result.path.with_suffix(".engine.json").read_text())
    assert meta["gpu"] == torch.cuda.get_device_name(0) and meta["tensorrt"] and meta["precision"] == precision
    assert cache.stat().st_size > 0
    assert result.info["verification"]["top1_agreement"] >= 0.7
    r = edgeopt.benchmark(result.path, config=fast_bench)
    assert r.runtime == "tensorrt" and r.p50_ms > 0 and r.device == meta["gpu"]


@needs_trt
@pytest.mark.gpu
def test_int8_entropy_calibrator_and_engine_mismatch(tmp_path, tiny_plain, example):
    calib = [torch.randn(64, *example.shape[1:], generator=torch.Generator().manual_seed(5))]
    result, _ = export_verified(tiny_plain, example, "tensorrt", tmp_path / "e", precision="int8", calib=calib,
                                options={"int8_calibration": "entropy"})
    assert result.info["calibration"]["method"] == "entropy calibrator"
    side = result.path.with_suffix(".engine.json")
    side.write_text(json.dumps({**json.loads(side.read_text()), "gpu": "Some Other GPU"}))
    with pytest.raises(ArtifactError, match="rebuild the engine"):
        edgeopt.benchmark(result.path)


@needs_trt
@pytest.mark.gpu
def test_2_4_sparse_and_qat_models_build_as_marked(tmp_path, tiny_plain, example):
    """A 2:4-pruned model asks TensorRT for sparse-weight tactics; a QAT model builds as explicit INT8 from
    its own Q/DQ nodes (no second calibration)."""
    sparse = edgeopt.sparsify(tiny_plain, pattern="2:4").model
    result, _ = export_verified(sparse, example, "tensorrt", tmp_path / "s", precision="fp16")
    assert result.info["sparse_weights"] is True
    from edgeopt.techniques.retraining import qat as Q

    calib = [torch.randn(16, *example.shape[1:], generator=torch.Generator().manual_seed(5))]
    q = Q.ptq(tiny_plain, calib)
    result, _ = export_verified(q, example, "tensorrt", tmp_path / "q", precision="int8")
    assert "quantization-aware" in result.info["int8"] and "calibration" not in result.info
    assert result.info["verification"]["top1_agreement"] >= 0.7
