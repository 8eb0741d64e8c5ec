"""ONNX Runtime sessions (CPU provider here; CUDA / TensorRT providers when present and asked for)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeopt.errors import ArtifactError, InputShapeError, missing_backend
from edgeopt.runtimes import Session

_INT8_OPS = {"QuantizeLinear", "QLinearConv", "QLinearMatMul", "DynamicQuantizeLinear", "MatMulInteger",
             "ConvInteger", "DynamicQuantizeMatMul"}


def graph_precision(path: Path) -> str | None:
    """What the graph itself computes in: int8 when it holds quantized ops, fp16 when its weights are fp16.
    The file, not the caller's flag, says what runs (`edgeopt benchmark q.onnx` must not report fp32)."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:
        return None  # ONNX Runtime's own load reports the problem
    if any(n.op_type in _INT8_OPS for n in graph.node):
        return "int8"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer):
        return "fp16"
    return "fp32"


def load_onnxruntime(path: Path, precision: str = "fp32", threads: int | None = None,
                     device: str = "CPU") -> Session:
    try:
        import onnxruntime as ort
    except ImportError:
        raise missing_backend("onnxruntime", "dev") from None
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"artifact {path} does not exist")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if device.upper() == "GPU":
        avail = ort.get_available_providers()
        providers = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in avail] + providers
    try:
        sess = ort.InferenceSession(str(path), so, providers=providers)
    except Exception as e:
        raise ArtifactError(f"ONNX Runtime cannot load {path}: {str(e).splitlines()[0][:200]}") from None
    inp = sess.get_inputs()[0]
    shape = tuple(d if isinstance(d, int) else -1 for d in inp.shape)
    name = inp.name

    def run(x: np.ndarray) -> np.ndarray:
        if len(x.shape) != len(shape) or any(s not in (-1, d) for s, d in zip(shape, x.shape, strict=True)):
            raise InputShapeError(f"input shape {tuple(x.shape)} does not match the artifact's {shape}")
        return sess.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]

    def lean_call(x: np.ndarray):
        feed = {name: np.ascontiguousarray(x, dtype=np.float32)}
        return lambda: sess.run(None, feed)

    executed = graph_precision(path) or precision
    return Session(runtime="onnxruntime", runtime_version=ort.__version__, precision_executed=executed,
                   input_shape=shape, run=run, lean_call=lean_call, device=sess.get_providers()[0],
                   threads=threads, info={"providers": sess.get_providers()})
