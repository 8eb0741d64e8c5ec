"""ONNX precision conversions on an fp32 .onnx file: fp16, static INT8 (QDQ or QOperator, signed or unsigned
activations, per-channel weights) and dynamic INT8, all through ONNX Runtime's own tools.

`qdq-tensorrt` is the INT8 for TensorRT (explicit quantization): QuantizeLinear/DequantizeLinear pairs only,
symmetric signed int8 activations calibrated on the user's data, symmetric per-channel int8 weights, float
biases (TensorRT's DequantizeLinear takes no int32), no com.microsoft op; `formats/tensorrt_parser_ops.py` checks
the result against TensorRT's ONNX parser. NVIDIA ModelOpt's ONNX quantizer builds the same kind of graph on top
of ONNX Runtime's; ONNX Runtime's own is used because it is already a dependency.

Which static INT8 flavour is fastest depends on the CPU's kernels (measured on one Xeon: QDQ ran 3x slower than fp32
on the AMX machine), so the variants stay selectable and `benchmarks/runtimes_table.py` measures them;
DEFAULT_STATIC is the one measured fastest on this project's machines (see docs/export-quantize-benchmark.md,
"ONNX Runtime INT8")."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeopt.errors import ConfigError, ExportError, first_line

# mode -> (quant format, activation type); weights are always signed int8, per channel
STATIC_MODES = {
    "qdq-s8": ("QDQ", "QInt8"),
    "qdq-u8": ("QDQ", "QUInt8"),
    "qoperator-u8": ("QOperator", "QUInt8"),
    "qoperator-s8": ("QOperator", "QInt8"),
    "qdq-tensorrt": ("QDQ", "QInt8"),
}
# ONNX Runtime quantizer options for TensorRT's explicit quantization: zero zero-points (symmetric), and biases
# left in float, because TensorRT's DequantizeLinear only dequantizes int8/fp8/int4 (TensorRT fuses the bias itself)
TENSORRT_OPTIONS = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}
QUANT_MODES = (*STATIC_MODES, "dynamic", "auto")
DEFAULT_STATIC = "qoperator-u8"


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over a list of feeds (input name -> array): every input
    of the graph is fed, so models with several inputs calibrate on all of them."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._feeds = feeds
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # pragma: no cover - only used by some calibrators
        self._it = iter(self._feeds)


def _feeds(prep: Path, calib_inputs: list) -> list[dict[str, np.ndarray]]:
    """Calibration batches as feeds named like the graph's inputs: a bare array feeds the only input; named
    feeds must name every input."""
    import onnx

    names = [i.name for i in onnx.load(str(prep), load_external_data=False).graph.input]
    feeds = [x if isinstance(x, dict) else {names[0]: x} for x in calib_inputs]
    for f in feeds[:1]:
        if sorted(f) != sorted(names):
            raise ExportError(f"calibration feeds inputs {sorted(f)}, the graph takes {sorted(names)}")
    return [{k: np.ascontiguousarray(v, dtype=np.float32) for k, v in f.items()} for f in feeds]


def _has_conv(path: Path) -> bool:
    import onnx

    return any(n.op_type in ("Conv", "ConvTranspose") for n in onnx.load(str(path), load_external_data=False)
               .graph.node)


# layers holding weights: where a graph's output tail (see `output_tail`) begins
WEIGHTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def output_tail(path: Path) -> list[str]:
    """Names of the nodes between the last weighted layers and the graph's outputs (found walking back from
    every output until a Conv/MatMul/Gemm), naming unnamed nodes in the file first. These stay in float under
    static INT8: a detection head's decoding concatenates boxes in pixels with scores in 0..1 into one output,
    and one per-tensor 8-bit scale for both rounds every score to a step of ~pixels/255 (YOLO's mAP fell to 0).
    Such tails are elementwise, reshaping and sorting ops: cheap in float."""
    import onnx

    model = onnx.load(str(path))
    nodes = list(model.graph.node)
    renamed = False
    for i, n in enumerate(nodes):
        if not n.name:
            n.name, renamed = f"edgeopt_node_{i}", True
    if renamed:
        onnx.save(model, str(path))
    producer = {o: n for n in nodes for o in n.output}
    tail, stack = {}, [o.name for o in model.graph.output]
    while stack:
        n = producer.get(stack.pop())
        if n is None or n.name in tail or n.op_type in WEIGHTED_OPS:
            continue
        tail[n.name] = n
        stack.extend(i for i in n.input if i)
    return list(tail)


def pick_mode(src: Path, mode: str) -> str:
    """`auto`: static (DEFAULT_STATIC) for conv nets; dynamic for Linear-only graphs (transformer/MLP heads),
    whose activations vary too much per input for fixed scales and which need no calibration data."""
    if mode not in QUANT_MODES:
        raise ConfigError(f"unknown ONNX int8 mode {mode!r}; use one of {', '.join(QUANT_MODES)}")
    if mode != "auto":
        return mode
    return DEFAULT_STATIC if _has_conv(src) else "dynamic"


def quantize_int8(src: Path, dst: Path, mode: str, calib_inputs: list[np.ndarray | dict[str, np.ndarray]] | None
                  ) -> dict:
    """Write the INT8 model to dst (caller renames it into place). Returns what was done. `calib_inputs`:
    arrays for a one-input graph, or feeds (input name -> array) naming every input."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prep = dst.with_name(dst.name + ".prep.onnx")
    try:
        try:  # symbolic shape inference + ORT graph optimisation: fewer, better-placed Q/DQ pairs
            quant_pre_process(str(src), str(prep), skip_symbolic_shape=False)
        except Exception:
            prep.write_bytes(Path(src).read_bytes())
        if mode == "dynamic":
            quantize_dynamic(str(prep), str(dst), weight_type=QuantType.QInt8, per_channel=True)
            return {"quant_mode": "dynamic", "weights": "int8 per-channel", "activations": "dynamic u8"}
        fmt, act = STATIC_MODES[mode]
        if not calib_inputs:
            raise ExportError("static INT8 quantization needs calibration inputs")
        reader = _Reader(_feeds(prep, calib_inputs))
        extra = TENSORRT_OPTIONS if mode == "qdq-tensorrt" else {"ActivationSymmetric": act == "QInt8"}
        tail = output_tail(prep)
        quantize_static(str(prep), str(dst), reader, quant_format=getattr(QuantFormat, fmt),
                        per_channel=True, activation_type=getattr(QuantType, act), weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, extra_options=extra, nodes_to_exclude=tail)
        done = {"quant_mode": mode, "format": fmt, "weights": "int8 per-channel",
                "activations": "s8" if act == "QInt8" else "u8", "calibration_method": "minmax",
                **({"float_output_tail": len(tail)} if tail else {})}
        if mode == "qdq-tensorrt":
            _drop_unused_domains(dst)
            done.update(weights="int8 per-channel, symmetric", activations="s8, symmetric", biases="float")
        return done
    except (ExportError, ConfigError):
        raise
    except Exception as e:
        raise ExportError(f"ONNX Runtime INT8 quantization ({mode}) failed: {first_line(e, 300, with_type=False)}"
                          ) from None
    finally:
        prep.unlink(missing_ok=True)


def _drop_unused_domains(path: Path) -> None:
    """Remove the opset imports of domains no node uses (ONNX Runtime declares com.microsoft and others even
    when it inserted none of their ops), so the file names only what TensorRT reads."""
    import onnx

    model = onnx.load(str(path))
    used = {n.domain or "" for n in model.graph.node}
    keep = [o for o in model.opset_import if (o.domain or "") in used | {"", "ai.onnx"}]
    if len(keep) != len(model.opset_import):
        del model.opset_import[:]
        model.opset_import.extend(keep)
        onnx.save(model, str(path))


def convert_fp16(src: Path, dst: Path) -> dict:
    """fp16 weights and compute with fp32 inputs/outputs (keep_io_types), so callers feed the same arrays."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    try:
        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True,
                                         op_block_list=["Resize", "Range", "TopK"])  # need fp32 on CPU EP
        onnx.save(model, str(dst))
    except Exception as e:
        raise ExportError(f"ONNX fp16 conversion failed: {first_line(e, 300, with_type=False)}") from None
    return {"io_types": "fp32 (cast inside the graph)"}


def simplify(path: Path) -> bool:
    """onnxslim constant-folds and removes redundant nodes when installed; a failure keeps the graph as is."""
    try:
        import onnx
        import onnxslim
    except ImportError:
        return False
    try:
        slim = onnxslim.slim(onnx.load(str(path)))
        onnx.checker.check_model(slim)
        onnx.save(slim, str(path))
        return True
    except Exception:
        return False


_WEIGHT_ONLY_AXIS = {"Conv": 0, "ConvTranspose": 1, "MatMul": 1}  # output-channel axis of the weight


def weight_only_int8(src: Path, dst: Path, min_elements: int = 64) -> dict:
    """Weight-only INT8: each Conv/Gemm/MatMul float weight initializer becomes int8 (symmetric, per output
    channel) followed by a DequantizeLinear; activations stay float, so no calibration data and no int8
    compute units are needed. The file shrinks ~4x; the runtime dequantizes the weights and computes in float."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    users: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            users[i] = users.get(i, 0) + 1
    new_nodes, done, saved = [], 0, 0
    for n in graph.node:
        if n.op_type not in (*_WEIGHT_ONLY_AXIS, "Gemm") or len(n.input) < 2:
            continue
        name = n.input[1]
        t = inits.get(name)
        if t is None or t.data_type != TensorProto.FLOAT or users.get(name, 0) != 1:
            continue
        w = numpy_helper.to_array(t)
        if w.size < min_elements or w.ndim < 2:
            continue
        trans_b = any(a.name == "transB" and a.i for a in n.attribute)
        axis = (0 if trans_b else 1) if n.op_type == "Gemm" else _WEIGHT_ONLY_AXIS[n.op_type]
        reduce = tuple(d for d in range(w.ndim) if d != axis)
        scale = np.maximum(np.abs(w).max(axis=reduce), 1e-12) / 127.0
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        graph.initializer.remove(t)
        graph.initializer.extend([numpy_helper.from_array(q, name + "_int8w"),
                                  numpy_helper.from_array(scale.astype(np.float32), name + "_int8w_scale")])
        new_nodes.append(helper.make_node("DequantizeLinear", [name + "_int8w", name + "_int8w_scale"], [name],
                                          name=name + "_int8w_dq", axis=axis))
        done += 1
        saved += w.size * 3
    if not done:
        raise ExportError("weight-only INT8: no Conv/Gemm/MatMul float weights large enough to compress")
    for node in reversed(new_nodes):  # before their consumers: ONNX wants nodes in topological order
        graph.node.insert(0, node)
    if max(op.version for op in model.opset_import if op.domain in ("", "ai.onnx")) < 13:
        raise ExportError("weight-only INT8 needs ONNX opset >= 13 (per-channel DequantizeLinear)")
    onnx.save(model, str(dst))
    return {"quantization": "weight-only int8 (per output channel, symmetric)", "weights_quantized": done,
            "bytes_saved": int(saved)}
