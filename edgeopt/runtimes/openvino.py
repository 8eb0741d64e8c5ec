"""OpenVINO sessions. The inference-precision hint is set explicitly and read back, because OpenVINO
runs bf16 by default on AMX CPUs (FIELD_NOTES): the report states what was really executed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeopt.errors import ArtifactError, ConfigError, InputShapeError, missing_backend
from edgeopt.runtimes import Session

_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": None}


def precision_name(ov_type) -> str:
    text = str(ov_type).lower()  # an ov.Type, printed like "<type: 'bfloat16'>" or "bf16"
    for key, name in (("bf", "bf16"), ("16", "fp16"), ("32", "fp32")):
        if key in text:
            return name
    return text


def load_openvino(path: Path, precision: str = "fp32", threads: int | None = None,
                  device: str = "CPU") -> Session:
    try:
        import openvino as ov
    except ImportError:
        raise missing_backend("openvino", "openvino") from None
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"artifact {path} does not exist")
    if precision not in _HINTS:
        raise ConfigError(f"OpenVINO precision {precision!r} unknown; use one of {', '.join(_HINTS)}")
    core = ov.Core()
    config = {"PERFORMANCE_HINT": "LATENCY"}
    hint = _HINTS[precision]
    if hint:
        config["INFERENCE_PRECISION_HINT"] = hint
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    try:
        ov_model = core.read_model(str(path))
        quantized = any(op.get_type_name() == "FakeQuantize" for op in ov_model.get_ops())
        compiled = core.compile_model(ov_model, device.upper(), config)
    except Exception as e:
        raise ArtifactError(f"OpenVINO cannot load {path}: {str(e).strip().splitlines()[0][:200]}") from None
    executed = precision_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
    if quantized:  # an NNCF IR: read from the graph, whatever precision the caller named
        executed = f"int8+{executed}"  # quantized layers run int8, the rest at the hint's precision
    request = compiled.create_infer_request()
    shape = tuple(compiled.input(0).get_partial_shape().get_min_shape())

    def run(x: np.ndarray) -> np.ndarray:
        if tuple(x.shape) != shape:
            raise InputShapeError(f"input shape {tuple(x.shape)} does not match the artifact's {shape}")
        request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        return request.get_output_tensor(0).data.copy()

    def lean_call(x: np.ndarray):
        # the lean call (FIELD_NOTES): a preset input tensor, then infer() with no arguments
        req = compiled.create_infer_request()
        req.set_input_tensor(ov.Tensor(np.ascontiguousarray(x, dtype=np.float32)))
        return req.infer

    return Session(runtime="openvino", runtime_version=ov.get_version(), precision_executed=executed,
                   input_shape=shape, run=run, lean_call=lean_call, device=device.upper(), threads=threads,
                   info={"requested_precision": precision})
