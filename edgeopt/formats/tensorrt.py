"""TensorRT engines built from ONNX through TensorRT's Python API (TensorRT 10).

fp32 / fp16 build from the fp32 ONNX graph; int8 builds either from an explicitly quantized ONNX graph
(ONNX Runtime's `qdq-tensorrt`: symmetric signed Q/DQ pairs, per-channel weights, float biases: what TensorRT's
explicit quantization reads, the default) or from the fp32 graph with TensorRT's entropy calibrator
(options["int8_calibration"] = "entropy"). The ONNX graph is checked against TensorRT's ONNX parser table
(formats/tensorrt_parser_ops.py) before the build. Options: workspace_mb, dla_core (Jetson), timing_cache (path,
reused across builds), sparse_weights (also set when the weights carry the 2:4 pattern).

An engine only runs on the GPU model and TensorRT version that built it: both are written to a
`<engine>.json` sidecar that the runtime checks before deserializing.

TensorRT sessions: deserialize an engine, bind CUDA buffers owned by torch, time with a synchronize.

The engine's sidecar (`<engine>.json`, written by the exporter) names the GPU and TensorRT version it was
built for; a mismatch is an ArtifactError up front instead of a crash inside deserialization."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeopt.errors import (
    ArtifactError,
    BackendMissingError,
    ConfigError,
    ExportError,
    InputShapeError,
    missing_backend,
)
from edgeopt.formats.base import ExportResult, Session, check_feed
from edgeopt.formats.tensorrt_parser_ops import require_parseable


def require_gpu() -> str:
    """The CUDA device name, or BackendMissingError saying why TensorRT cannot run here."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        raise missing_backend("tensorrt", "tensorrt") from None
    if not torch.cuda.is_available():
        raise BackendMissingError("TensorRT needs an NVIDIA GPU with CUDA; none is visible on this machine")
    return torch.cuda.get_device_name(0)


def engine_meta(precision: str) -> dict:
    import tensorrt as trt

    major, minor = torch.cuda.get_device_capability(0)
    return {"gpu": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}",
            "tensorrt": trt.__version__, "precision": precision}


class _EntropyCalibrator:
    """Factory for a trt.IInt8EntropyCalibrator2 fed from calibration batches kept on the GPU."""

    @staticmethod
    def make(trt, batches: list[torch.Tensor], cache: Path):
        class Calibrator(trt.IInt8EntropyCalibrator2):
            def __init__(self):
                super().__init__()
                self._batches = [b.contiguous().cuda() for b in batches]
                self._i = 0

            def get_batch_size(self):
                return int(self._batches[0].shape[0])

            def get_batch(self, names):
                if self._i >= len(self._batches):
                    return None
                self._i += 1
                return [int(self._batches[self._i - 1].data_ptr())]

            def read_calibration_cache(self):
                return cache.read_bytes() if cache.exists() else None

            def write_calibration_cache(self, data):
                cache.write_bytes(bytes(data))

        return Calibrator()


def _onnx_graph(model, example, tmpdir: Path, precision: str, calib, options: dict) -> tuple[Path, dict]:
    from edgeopt.formats.onnx import export_onnx

    if options.get("prequantized"):  # QAT fake-quantizers export as Q/DQ: explicit INT8 as trained
        r = export_onnx(model, example, tmpdir / "m.onnx", precision="fp32")
        return r.path, {"onnx_exporter": r.exporter, "int8": "explicit Q/DQ from quantization-aware training"}
    explicit = precision == "int8" and options.get("int8_calibration", "qdq") == "qdq"
    onnx_opts = {"quant_mode": "qdq-tensorrt", "allow_random_calib": options.get("allow_random_calib", False),
                 "source": options.get("source")}  # the structure's ONNX graph, when exported already
    r = export_onnx(model, example, tmpdir / "m.onnx", precision="int8" if explicit else "fp32", calib=calib,
                    options=onnx_opts)
    return r.path, {"onnx_exporter": r.exporter, **({"calibration": r.info["calibration"]} if explicit else {})}


def export_tensorrt(model: nn.Module, example: torch.Tensor, out: Path, precision: str = "fp32",
                    calib=None, options: dict | None = None) -> ExportResult:
    require_gpu()
    import tensorrt as trt

    options = dict(options or {})
    if precision not in ("fp32", "fp16", "int8"):
        raise ConfigError(f"TensorRT precision {precision!r} unknown; use fp32, fp16 or int8")
    out = Path(out).with_suffix(".engine")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".trt.") as tmp:
        tmpdir = Path(tmp)
        onnx_path, info = _onnx_graph(model, example, tmpdir, precision, calib, options)
        require_parseable(onnx_path, trt.__version__)  # an unparseable graph: its op named, before any build
        calibrator = None
        if precision == "int8" and not options.get("prequantized"):
            if options.get("int8_calibration", "qdq") == "entropy":
                from edgeopt.formats.calibration import resolve_calibration
                from edgeopt.inputs.model_io import Inputs

                example = Inputs.of(example, model).first  # the calibrator feeds one input
                cal = resolve_calibration(calib, example, "int8", options.get("allow_random_calib", False))
                calibrator = _EntropyCalibrator.make(trt, cal.inputs, tmpdir / "calib.cache")
                info["calibration"] = {**cal.info(), "method": "entropy calibrator"}
            else:
                info["int8"] = "explicit Q/DQ (ONNX Runtime qdq-tensorrt: symmetric, per-channel weights)"
        if options.get("sparse_weights") or getattr(model, "edgeopt_sparsity", None) == "2:4":
            options["sparse_weights"] = True  # 2:4-pruned weights: let TensorRT pick sparse tensor-core tactics
        meta = build_engine(onnx_path, out, precision, options, info, calibrator)
    return ExportResult(path=out, format="tensorrt", precision=precision, exporter=f"tensorrt {trt.__version__}",
                        files=[out, out.with_suffix(".engine.json")], info=meta)


def _weights_along_inputs(model) -> list[np.ndarray]:
    """Every Conv/Gemm/MatMul weight initializer (through a DequantizeLinear too), laid out with the input
    channels last: the axis TensorRT's sparse kernels group by 4."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    out = []
    for n in model.graph.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul") or len(n.input) < 2:
            continue
        name = n.input[1]
        if name not in inits and name in producer and producer[name].op_type == "DequantizeLinear":
            name = producer[name].input[0]
        if name not in inits:
            continue
        w = numpy_helper.to_array(inits[name])
        if n.op_type == "Conv" and w.ndim >= 3:
            w = np.moveaxis(w, 1, -1)  # (out, k..., in)
        elif n.op_type == "MatMul" or (n.op_type == "Gemm" and not any(a.name == "transB" and a.i
                                                                           for a in n.attribute)):
            w = w.T if w.ndim == 2 else w  # (in, out) -> (out, in)
        out.append(w)
    return out


def is_2_4_sparse(onnx_path: Path) -> bool:
    """Whether every weight whose input size is a multiple of 4 has at most 2 non-zeros in each group of 4
    along its inputs (the 2:4 pattern of sparse tensor cores), and at least one does."""
    import onnx

    try:
        model = onnx.load(str(onnx_path))
    except Exception:  # the parser reports an unreadable file itself
        return False
    groups = [w.reshape(-1, 4) for w in _weights_along_inputs(model) if w.ndim >= 2 and w.shape[-1] % 4 == 0]
    return bool(groups) and all(((g != 0).sum(1) <= 2).all() for g in groups)


def build_engine(onnx_path: Path, out: Path, precision: str, options: dict | None = None, info: dict | None = None,
                 calibrator=None) -> dict:
    """Build `out` (.engine) and its `.engine.json` sidecar from an ONNX file, on this machine's GPU.
    Used by the exporter and by the agent, which builds on the device from the uploaded ONNX."""
    import tensorrt as trt

    options, info = dict(options or {}), dict(info or {})
    out = Path(out)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError("TensorRT cannot parse the ONNX graph: " + " | ".join(errs)[:400])
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.get("workspace_mb", 1024)) << 20)
    if options.get("sparse_weights") or is_2_4_sparse(onnx_path):  # the agent builds from ONNX alone
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
        info["sparse_weights"] = True
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_flag(trt.BuilderFlag.FP16)  # layers left unquantized may still run in fp16
        if calibrator is not None:
            config.int8_calibrator = calibrator
    dla = options.get("dla_core")
    if dla is not None:
        if builder.num_DLA_cores == 0:
            raise ConfigError("--dla-core given but this GPU has no DLA cores (Jetson AGX/NX only)")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(dla)
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)  # layers DLA cannot run fall back to the GPU
        info["dla_core"] = int(dla)
    cache_path = Path(options["timing_cache"]) if options.get("timing_cache") else None
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path and cache_path.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError("TensorRT engine build failed (see the TensorRT log above)")
    if cache_path:
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
        info["timing_cache"] = str(cache_path)
    meta = {**engine_meta(precision), **info}
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=".engine.")
    os.close(fd)
    tmp_engine, tmp_meta = Path(tmp_name), Path(tmp_name + ".json")
    try:
        tmp_engine.write_bytes(bytes(serialized))
        tmp_meta.write_text(json.dumps(meta, indent=1))
        os.replace(tmp_meta, out.with_suffix(".engine.json"))  # sidecar first: an engine is never unlabelled
        os.replace(tmp_engine, out)
    finally:
        tmp_engine.unlink(missing_ok=True)
        tmp_meta.unlink(missing_ok=True)
    return meta


def load_from_onnx(path: Path, precision: str = "fp32", threads: int | None = None) -> Session:
    """TensorRT on a device, from an uploaded ONNX: build the engine here (it must match this GPU and
    TensorRT), then load that engine, which this process wrote itself. Without the tensorrt package or a
    CUDA device, ONNX Runtime's TensorRT execution provider (onnxruntime-gpu, JetPack) builds it instead."""
    path = Path(path)
    try:
        require_gpu()
    except BackendMissingError as e:
        return _onnxruntime_tensorrt_provider(path, precision, threads, str(e))
    engine = path.with_name(path.stem + ".built.engine")
    meta = build_engine(path, engine, precision)
    session = load_tensorrt(engine, precision=precision, threads=threads)
    session.info["route"] = f"engine built on the device from the uploaded ONNX ({meta.get('gpu')})"
    return session


def _onnxruntime_tensorrt_provider(path: Path, precision: str, threads: int | None, why: str) -> Session:
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    if ort is None or "TensorrtExecutionProvider" not in ort.get_available_providers():
        raise BackendMissingError(f"TensorRT cannot run here ({why}) and ONNX Runtime has no TensorRT "
                                  "execution provider (install onnxruntime-gpu / JetPack's TensorRT)")
    from edgeopt.formats.onnx import load_onnxruntime

    session = load_onnxruntime(path, precision=precision, threads=threads, device="GPU")
    session.info["route"] = f"ONNX Runtime's TensorRT execution provider ({why})"
    return session


def load_tensorrt(path: Path, precision: str = "fp32", threads: int | None = None, device: str = "GPU") -> Session:
    gpu = require_gpu()  # the GPU's name; installed and file present: the formats table's load preamble
    import tensorrt as trt

    path = Path(path)
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
    shapes = {n: tuple(engine.get_tensor_shape(n)) for n in inputs}
    shape = shapes[inputs[0]]
    if any(d < 0 for s in shapes.values() for d in s):
        raise ArtifactError(f"{path} has a dynamic input shape {shapes}: edgeopt builds static-shape engines")
    dtype = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int8: torch.int8, trt.int32: torch.int32}
    bufs = {n: torch.empty(tuple(engine.get_tensor_shape(n)), dtype=dtype[engine.get_tensor_dtype(n)],
                           device="cuda") for n in names}  # every input and output lives on the GPU
    for n, t in bufs.items():
        context.set_tensor_address(n, t.data_ptr())
    stream = torch.cuda.Stream()

    def execute() -> None:
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()  # the timed call ends when the GPU is done, not when the launch returns

    def upload(feed: dict[str, np.ndarray]) -> None:
        for n, v in feed.items():
            bufs[n].copy_(torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)))
        torch.cuda.synchronize()

    def run_all(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feed(feed, shapes)
        upload(feed)
        execute()
        return {n: bufs[n].float().cpu().numpy() for n in outputs}

    def run(x: np.ndarray) -> np.ndarray:
        if tuple(x.shape) != shape:
            raise InputShapeError(f"input shape {tuple(x.shape)} does not match the engine's {shape}")
        return run_all({inputs[0]: x})[outputs[0]]

    def lean_call(x):
        upload(x if isinstance(x, dict) else {inputs[0]: x})
        return execute

    executed = meta.get("precision", precision)
    return Session(runtime="tensorrt", runtime_version=trt.__version__, precision_executed=executed,
                   input_shape=shape, run=run, lean_call=lean_call, device=gpu, threads=threads,
                   info={"engine": meta}, input_shapes=shapes, output_names=outputs, run_all=run_all)
