"""One structure, one PyTorch -> ONNX export: every precision and runtime is derived from the shared graph, the
OpenVINO IR converted from it matches PyTorch, and the torch route takes over (recorded) when the ONNX route fails
or differs."""

import copy

import pytest
import torch
from torch import nn

from edgeopt.errors import DataError, ExportError
from edgeopt.formats import BACKENDS, export_verified
from edgeopt.formats import onnx as onnx_format
from edgeopt.formats.calibration import resolve_calibration
from edgeopt.formats.onnx_source import OnnxSource

OV = pytest.mark.skipif(not BACKENDS.get("openvino").installed(), reason=BACKENDS.get("openvino").missing_reason())


@pytest.fixture
def exports(monkeypatch):
    """Counts the PyTorch -> ONNX exports (torch.onnx.export calls) and OpenVINO's conversions of a torch model."""
    counts = {"torch.onnx": 0, "ov from torch": 0}
    real = torch.onnx.export

    def counting(*args, **kwargs):
        counts["torch.onnx"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", counting)
    try:
        import openvino as ov
    except ImportError:
        return counts
    real_convert = ov.convert_model

    def convert(model, *args, **kwargs):
        counts["ov from torch"] += isinstance(model, nn.Module)
        return real_convert(model, *args, **kwargs)

    monkeypatch.setattr(ov, "convert_model", convert)
    return counts


def _calib(example):
    return [torch.randn(32, *example.shape[1:], generator=torch.Generator().manual_seed(5))]


@OV
def test_three_precisions_of_one_structure_take_one_export(tmp_path, tiny_plain, example, exports):
    source = OnnxSource(tiny_plain, example)
    cal = resolve_calibration(_calib(example), source.inputs)
    got = {}
    for fmt, precision in (("onnx", "fp32"), ("openvino", "fp32"), ("openvino", "int8")):
        got[fmt, precision], _ = export_verified(tiny_plain, example, fmt, tmp_path / f"{fmt}-{precision}",
                                                 precision=precision, calib=cal, options={"source": source})
    assert exports["torch.onnx"] == 1 and source.exports == 1
    assert exports["ov from torch"] == 0, "OpenVINO read the ONNX graph, never traced the model itself"
    ov_fp32 = got["openvino", "fp32"]
    assert ov_fp32.exporter.startswith("openvino.convert_model (onnx") and ov_fp32.info["route"] == "onnx"
    assert ov_fp32.info["verification"]["max_rel_error"] < 1e-4  # the IR from ONNX computes what PyTorch does
    assert got["openvino", "int8"].info["calibration"]["source"] == "data"
    # the float artifacts verified on the same 4 inputs (INT8 on the calibration batches): PyTorch's outputs
    # computed once per input batch
    assert got["onnx", "fp32"].info["verification"]["inputs"] == got["openvino", "fp32"].info["verification"][
        "inputs"] == 4
    assert len(source.references) == 4 + got["openvino", "int8"].info["verification"]["inputs"]
    # the first artifact paid for the graph export; the others only converted it
    assert got["onnx", "fp32"].info["seconds"].get("onnx graph export", 0) > 0
    assert "onnx graph export" not in got["openvino", "fp32"].info["seconds"]


@OV
def test_openvino_falls_back_to_the_torch_route_when_the_onnx_export_fails(tmp_path, tiny_plain, example,
                                                                           monkeypatch, exports):
    def broken(*args, **kwargs):
        raise ExportError("ONNX export failed: no exporter could trace it")

    monkeypatch.setattr(onnx_format, "export_graph", broken)
    result, _ = export_verified(tiny_plain, example, "openvino", tmp_path / "m", options={
        "source": OnnxSource(tiny_plain, example)})
    assert result.exporter == "openvino.convert_model (torch)" and result.info["route"] == "torch"
    assert any("onnx route" in e and "no exporter" in e for e in result.info["fallback_errors"])
    assert exports["ov from torch"] == 1


@OV
def test_openvino_falls_back_to_the_torch_route_when_the_onnx_graph_differs(tmp_path, tiny_plain, example,
                                                                            monkeypatch):
    real = onnx_format.export_graph

    def off(model, *args, **kwargs):  # the graph of another model: what a wrong export would give
        other = copy.deepcopy(model)
        with torch.no_grad():
            for p in other.parameters():
                p.mul_(1.5)
        return real(other, *args, **kwargs)

    monkeypatch.setattr(onnx_format, "export_graph", off)
    source = OnnxSource(tiny_plain, example)
    result, _ = export_verified(tiny_plain, example, "openvino", tmp_path / "m", options={"source": source})
    assert result.exporter == "openvino.convert_model (torch)"
    assert "differ from PyTorch" in result.info["onnx_route_differed"]
    assert result.info["verification"]["max_rel_error"] < 1e-4
    assert source.openvino_route == "torch"  # the structure's later IRs skip the route that differed
    again, _ = export_verified(tiny_plain, example, "openvino", tmp_path / "m2", precision="bf16",
                               options={"source": source})
    assert again.info["route"] == "torch" and "onnx_route_differed" not in again.info


def test_a_failed_graph_export_is_raised_again_without_exporting_again(tiny_plain, example, monkeypatch):
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise ExportError("ONNX export failed: unsupported operator aten::foo")

    monkeypatch.setattr(onnx_format, "export_graph", broken)
    source = OnnxSource(tiny_plain, example)
    for _ in range(2):
        with pytest.raises(ExportError, match="aten::foo"):
            source.graph()
    assert len(calls) == 1


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y.mean((2, 3)), y.amax((2, 3))


def test_tuple_outputs_export_with_torchscript_under_their_names(tmp_path, example):
    """TorchScript refuses all-digit output names: they are exported under stand-ins and renamed back, so the
    faster exporter is not given up for every model that returns a tuple."""
    result, _ = export_verified(TwoHeads().eval(), example, "onnx", tmp_path / "m")
    assert result.exporter == "torch.onnx (TorchScript)", result.info["fallback_errors"]
    assert result.info["outputs"] == ["0", "1"]
    assert result.info["verification"]["max_rel_error"] < 1e-5


def test_a_resolved_calibration_is_shared_not_resolved_again(example):
    cal = resolve_calibration(_calib(example), example)
    assert resolve_calibration(cal, example) is cal
    assert cal.feeds() is cal.feeds()  # the arrays every INT8 artifact reads, made once
    with pytest.raises(DataError, match="do not fit"):
        resolve_calibration(cal, torch.randn(1, 1, 8, 8))
