"""TensorRT sessions: deserialize an engine, bind CUDA buffers owned by torch, time with a synchronize.

The engine's sidecar (`<engine>.json`, written by the exporter) names the GPU and TensorRT version it was
built for; a mismatch is an ArtifactError up front instead of a crash inside deserialization."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgeopt.errors import ArtifactError, InputShapeError
from edgeopt.runtimes import Session


def load_tensorrt(path: Path, precision: str = "fp32", threads: int | None = None, device: str = "GPU") -> Session:
    from edgeopt.exporters.tensorrt import engine_meta, require_gpu

    gpu = require_gpu()
    import tensorrt as trt
    import torch

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"artifact {path} does not exist")
    sidecar = path.with_suffix(".engine.json")
    meta = json.loads(sidecar.read_text()) if sidecar.exists() else {}
    here = engine_meta(precision)
    for key in ("gpu", "tensorrt"):
        if meta.get(key) and meta[key] != here[key]:
            raise ArtifactError(f"{path} was built for {key} {meta[key]!r}, this machine has {here[key]!r}: "
                                "rebuild the engine here")
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(path.read_bytes())
    if engine is None:
        raise ArtifactError(f"{path} is not a TensorRT engine for TensorRT {trt.__version__} on {gpu}")
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
    shape = tuple(engine.get_tensor_shape(inputs[0]))
    if any(d < 0 for d in shape):
        raise ArtifactError(f"{path} has a dynamic input shape {shape}: edgeopt builds static-shape engines")
    dtype = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int8: torch.int8, trt.int32: torch.int32}
    x_dev = torch.empty(shape, dtype=dtype[engine.get_tensor_dtype(inputs[0])], device="cuda")
    y_dev = torch.empty(tuple(engine.get_tensor_shape(outputs[0])),
                        dtype=dtype[engine.get_tensor_dtype(outputs[0])], device="cuda")
    context.set_tensor_address(inputs[0], x_dev.data_ptr())
    context.set_tensor_address(outputs[0], y_dev.data_ptr())
    extra = {n: torch.empty(tuple(engine.get_tensor_shape(n)), dtype=dtype[engine.get_tensor_dtype(n)],
                            device="cuda") for n in outputs[1:]}
    for n, t in extra.items():
        context.set_tensor_address(n, t.data_ptr())
    stream = torch.cuda.Stream()

    def execute() -> None:
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()  # the timed call ends when the GPU is done, not when the launch returns

    def run(x: np.ndarray) -> np.ndarray:
        if tuple(x.shape) != shape:
            raise InputShapeError(f"input shape {tuple(x.shape)} does not match the engine's {shape}")
        x_dev.copy_(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        torch.cuda.synchronize()
        execute()
        return y_dev.float().cpu().numpy()

    def lean_call(x: np.ndarray):
        x_dev.copy_(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        torch.cuda.synchronize()
        return execute

    executed = meta.get("precision", precision)
    return Session(runtime="tensorrt", runtime_version=trt.__version__, precision_executed=executed,
                   input_shape=shape, run=run, lean_call=lean_call, device=gpu, threads=threads,
                   info={"engine": meta})
