"""One model structure's fp32 ONNX graph, exported from PyTorch once and shared by every artifact derived from
it: the ONNX Runtime file at each precision, the OpenVINO IR at each precision (OpenVINO reads the ONNX file),
the ONNX a TensorRT engine is built from.

Exporting is the slow part of making an artifact (tracing a detector takes seconds to a minute), and a structure
is deployed at several precisions on several runtimes: each of those is a conversion of one graph, not a new
trace. A failed export is remembered and raised again, so a structure whose graph cannot be exported fails each
of its candidates at once with the same reason."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from torch import nn

from edgeopt.errors import ExportError


class OnnxSource:
    """The fp32 ONNX graph of `model` on inputs shaped like `example`, exported on first use (`graph`).
    `exports` counts the PyTorch -> ONNX exports made; `seconds` what they took. `references` keeps PyTorch's
    outputs on the verification inputs, so that each artifact of the structure is checked without running
    the model again."""

    def __init__(self, model: nn.Module, example):
        from edgeopt.inputs.model_io import Inputs

        self.model = model.eval()
        self.inputs = Inputs.of(example, model)
        self._outputs: list[str] | None = None
        self._dir: tempfile.TemporaryDirectory | None = None  # removed with the source
        self._graphs: dict[tuple[bool, bool], tuple[Path, dict] | ExportError] = {}
        self.exports = 0
        self.seconds = 0.0
        self._unbilled = 0.0
        self.openvino_route = "onnx"  # "torch" once an IR converted from the graph differed from PyTorch
        self.references: dict = {}  # PyTorch's outputs by verification input (formats/verify.py)

    @property
    def output_names(self) -> list[str]:
        if self._outputs is None:
            from edgeopt.inputs.model_io import model_outputs

            self._outputs = list(model_outputs(self.model, self.inputs))
        return self._outputs

    def graph(self, dynamic_batch: bool = False, simplify: bool = True) -> tuple[Path, dict]:
        """(path of the fp32 ONNX file, what made it: exporter, opset, fallback errors, simplified). Exported
        on the first call for each batch mode (and simplification); an ExportError is raised again on every
        later call."""
        key = (bool(dynamic_batch), bool(simplify))
        got = self._graphs.get(key)
        if got is None:
            from edgeopt.formats.onnx import export_graph

            if self._dir is None:
                self._dir = tempfile.TemporaryDirectory(prefix="edgeopt-onnx-")
            path = Path(self._dir.name) / f"graph-{len(self._graphs)}.onnx"
            t0 = time.perf_counter()
            self.exports += 1
            try:
                got = (path, export_graph(self.model, self.inputs, path, self.output_names, *key))
            except ExportError as e:
                got = e
            took = time.perf_counter() - t0
            self.seconds += took
            self._unbilled += took
            self._graphs[key] = got
        if isinstance(got, ExportError):
            raise got
        return got

    def bill(self) -> float:
        """Export seconds not yet charged to an artifact: the first artifact that needed the graph pays for it."""
        took, self._unbilled = self._unbilled, 0.0
        return round(took, 3)
