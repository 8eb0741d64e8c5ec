"""A structure's candidates share one ONNX export and the run's calibration: the builder's export of three
precisions of one structure (fp32 ONNX Runtime, OpenVINO fp32 and INT8) makes exactly one PyTorch -> ONNX export,
and resolves the INT8 calibration batches once."""

import pytest
import torch

from edgeopt.decide.plan import CandidateSpec
from edgeopt.engine.build import Builder, Built
from edgeopt.formats import BACKENDS
from edgeopt.inputs.data import Batches, DataSplits

OV = pytest.mark.skipif(not BACKENDS.get("openvino").installed(), reason=BACKENDS.get("openvino").missing_reason())


@OV
def test_one_structure_three_precisions_one_onnx_export(tmp_path, tiny_plain, example, monkeypatch):
    calls = []
    real = torch.onnx.export
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: calls.append(1) or real(*a, **k))
    gen = torch.Generator().manual_seed(0)
    data = Batches([(torch.randn(8, 1, 16, 16, generator=gen), torch.randint(0, 10, (8,), generator=gen))
                    for _ in range(4)])
    builder = Builder(net=tiny_plain, example=example, splits=DataSplits(data, None, data, "test"), eval_b=data,
                      batch=1, reference=None, out_dir=tmp_path, threads=1)
    built = Built(tiny_plain, [], 0, 0)
    results = {}
    for fmt, precision in (("onnx", "fp32"), ("openvino", "fp32"), ("openvino", "int8")):
        spec = CandidateSpec(id=f"original-{fmt}-{precision}", structure="original", format=fmt, precision=precision)
        results[fmt, precision], _ = builder.export(built, spec)
    assert len(calls) == 1, f"{len(calls)} PyTorch -> ONNX exports for one structure"
    assert built.source.exports == 1
    assert len(built.source.references) == 1  # PyTorch ran once on the verification batch, for all three
    assert all(r.path.is_file() for r in results.values())
    assert results["openvino", "fp32"].info["route"] == "onnx"
    assert results["openvino", "fp32"].info["verification"]["max_rel_error"] < 1e-4
    cal = builder.calibration()
    assert cal is builder.calibration()  # resolved once for the run, shared by every INT8 artifact
    assert results["openvino", "int8"].info["calibration"] == cal.info()
    # the profile's split: the graph export is billed once, to the first candidate
    billed = [r.info["seconds"].get("onnx graph export", 0) for r in results.values()]
    assert billed[0] > 0 and billed[1:] == [0, 0]
    assert results["openvino", "int8"].info["seconds"]["quantize"] > 0
