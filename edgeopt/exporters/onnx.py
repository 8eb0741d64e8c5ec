"""ONNX export through torch.onnx.export: the legacy TorchScript exporter first (fast), the dynamo
exporter if that fails; the one used is recorded. The graph is checked with onnx.checker."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from edgeopt.errors import ExportError
from edgeopt.exporters import ExportResult

OPSET = 17


def _try_export(model: nn.Module, example: torch.Tensor, path: Path, dynamo: bool) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        kwargs = dict(input_names=["input"], output_names=["output"], opset_version=OPSET)
        if dynamo:
            kwargs["opset_version"] = max(OPSET, 18)  # the dynamo exporter's lowest supported opset
            torch.onnx.export(model, (example,), str(path), dynamo=True, external_data=False,
                              optimize=True, verbose=False, **kwargs)
        else:
            torch.onnx.export(model, (example,), str(path), dynamo=False, do_constant_folding=True, **kwargs)


def export_onnx(model: nn.Module, example: torch.Tensor, out: Path, precision: str = "fp32",
                calib=None, options: dict | None = None) -> ExportResult:
    import onnx

    if precision != "fp32":
        raise ExportError(f"ONNX export at {precision} is not supported; use fp32")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    errors = []
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}.", suffix=".onnx.tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        for exporter, dynamo in (("torch.onnx (TorchScript)", False), ("torch.onnx (dynamo)", True)):
            try:
                _try_export(model, example, tmp, dynamo)
                break
            except Exception as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                errors.append(f"{exporter}: {first[:300]}")
        else:
            raise ExportError("ONNX export failed: " + " | ".join(errors))
        try:
            onnx.checker.check_model(str(tmp))
        except onnx.checker.ValidationError as e:
            raise ExportError(f"exported ONNX graph is invalid: {str(e).splitlines()[0]}") from None
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(path=out, format="onnx", precision="fp32", exporter=exporter, files=[out],
                        info={"opset": OPSET if not dynamo else max(OPSET, 18), "fallback_errors": errors})
