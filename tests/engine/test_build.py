"""The builder's verbs. A structure's candidates share one ONNX export and the run's calibration: the export of
three precisions of one structure (fp32 ONNX Runtime, OpenVINO fp32 and INT8) makes exactly one PyTorch -> ONNX
export, and resolves the INT8 calibration batches once. A screening stops as soon as its verdict is certain."""

import numpy as np
import pytest
import torch
from torch import nn

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


class _Constant(nn.Module):
    """Answers `cls` for every sample; counts the samples it ran."""

    def __init__(self, cls: int):
        super().__init__()
        self.cls, self.samples = cls, 0
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        self.samples += len(x)
        out = torch.zeros(len(x), 10)
        out[:, self.cls] = self.scale
        return out


def _screening_builder(tmp_path, labelled: bool):
    xs = [torch.randn(32, 3, 8, 8) for _ in range(8)]  # 256 samples
    original = _Constant(0)
    eval_b = Batches([(x, torch.zeros(32, dtype=torch.long) if labelled else None) for x in xs])
    reference = None if labelled else {"output": np.zeros(256, dtype=np.int64)}  # the original's top-1
    return Builder(net=original, example=xs[0][:1], splits=DataSplits(None, None, eval_b, "test"), eval_b=eval_b,
                   batch=1, reference=reference, out_dir=tmp_path, threads=1)


@pytest.mark.parametrize("labelled", [True, False], ids=["top1", "fidelity"])
def test_a_screening_stops_once_the_split_cannot_reach_the_floor(tmp_path, labelled):
    builder = _screening_builder(tmp_path, labelled)
    wrong = _Constant(3)
    got = builder.torch_screen(wrong, floor=99.0)
    assert got.partial and got.seen < got.total == 256 and got.accuracy == 0.0
    assert wrong.samples == got.seen  # the rest of the split was never run
    # the verdict is the one the whole split gives
    assert builder.torch_accuracy(_Constant(3)) == 0.0 < 99.0


@pytest.mark.parametrize("labelled", [True, False], ids=["top1", "fidelity"])
def test_a_screening_within_reach_of_the_floor_runs_the_whole_split(tmp_path, labelled):
    builder = _screening_builder(tmp_path, labelled)
    right = _Constant(0)
    got = builder.torch_screen(right, floor=99.0)
    assert not got.partial and got.seen == got.total == right.samples == 256
    assert got.accuracy == builder.torch_accuracy(_Constant(0)) == 100.0


def test_a_metric_that_no_part_of_the_data_bounds_is_screened_whole(tmp_path):
    from edgeopt.inputs.data import Batches
    from edgeopt.measure.accuracy import Metric, prefix_bound

    masks = Batches([(torch.randn(2, 3, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long))])
    assert prefix_bound(masks) is None  # mIoU of a part says nothing of the whole
    user = Batches([(torch.randn(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))])
    user.metric = Metric("user:f", fn=lambda outputs, targets: 50.0)
    assert prefix_bound(user) is None
    builder = _screening_builder(tmp_path, labelled=True)
    builder.eval_b.metric = Metric("user:f", fn=lambda outputs, targets: 0.0)
    wrong = _Constant(3)
    got = builder.torch_screen(wrong, floor=99.0)
    assert not got.partial and wrong.samples == 256
