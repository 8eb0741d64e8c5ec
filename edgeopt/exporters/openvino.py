"""OpenVINO IR (.xml + .bin) from the torch model (ov.convert_model), falling back to an ONNX route.

Weights stay fp32 in the IR: the precision actually executed is chosen at compile time by the
runtime's inference-precision hint, and reported from there."""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from edgeopt.errors import ExportError, missing_backend
from edgeopt.exporters import ExportResult


def export_openvino(model: nn.Module, example: torch.Tensor, out: Path, precision: str = "fp32",
                    calib=None, options: dict | None = None) -> ExportResult:
    try:
        import openvino as ov
    except ImportError:
        raise missing_backend("openvino", "openvino") from None
    out = Path(out).with_suffix(".xml")
    out.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    ov_model, exporter = None, None
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit deprecation chatter from the tracer
            ov_model = ov.convert_model(model.eval(), example_input=example)
        exporter = "openvino.convert_model (torch)"
    except Exception as e:
        errors.append(f"convert_model(torch): {str(e).splitlines()[0][:300] if str(e) else type(e).__name__}")
    if ov_model is None:  # ONNX route: some graphs trace better through torch.onnx
        from edgeopt.exporters.onnx import export_onnx

        with tempfile.TemporaryDirectory() as tmpdir:
            try:
                onnx_path = export_onnx(model, example, Path(tmpdir) / "m.onnx").path
                ov_model = ov.convert_model(str(onnx_path))
                exporter = "openvino.convert_model (onnx)"
            except Exception as e:
                errors.append(f"via onnx: {str(e).splitlines()[0][:300] if str(e) else type(e).__name__}")
    if ov_model is None:
        raise ExportError("OpenVINO conversion failed: " + " | ".join(errors))
    ov_model.reshape({ov_model.input(0): ov.PartialShape(list(example.shape))})
    tmpdir = Path(tempfile.mkdtemp(dir=out.parent, prefix=".ovtmp."))
    try:  # save beside the destination, then move both files in: never half an IR
        ov.save_model(ov_model, str(tmpdir / out.name), compress_to_fp16=False)
        bin_path = out.with_suffix(".bin")
        os.replace(tmpdir / out.with_suffix(".bin").name, bin_path)
        os.replace(tmpdir / out.name, out)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return ExportResult(path=out, format="openvino", precision=precision, exporter=exporter,
                        files=[out, out.with_suffix(".bin")], info={"fallback_errors": errors})
