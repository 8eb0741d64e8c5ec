"""ONNX export through torch.onnx.export: the legacy TorchScript exporter first (fast), the dynamo
exporter if that fails; the one used is recorded. The graph is checked with onnx.checker, simplified with
onnxslim when installed, then converted to the requested precision (fp16, int8: see onnx_quant).

ONNX Runtime sessions (CPU provider here; CUDA / TensorRT providers when present and asked for)."""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeopt.errors import ArtifactError, ExportError, first_line
from edgeopt.formats.base import ExportResult, Session, check_feed
from edgeopt.report import honour_umask

OPSET = 17


def _try_export(model: nn.Module, inputs, path: Path, dynamo: bool, output_names: list[str],
                dynamic_batch: bool = False) -> None:
    # the TorchScript exporter refuses all-digit value names ("0", "1" for a tuple's outputs): they are
    # exported under stand-in names and renamed back in the file
    stand_in = {n: f"edgeopt_output_{n}" for n in output_names if n.isdigit() and not dynamo}
    names = [stand_in.get(n, n) for n in output_names]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        kwargs = dict(input_names=list(inputs.names), output_names=names, opset_version=OPSET)
        if dynamic_batch:  # the first axis of every input and output may vary at run time
            kwargs["dynamic_axes"] = {n: {0: "batch"} for n in [*inputs.names, *names]}
        if dynamo:
            kwargs["opset_version"] = max(OPSET, 18)  # the dynamo exporter's lowest supported opset
            torch.onnx.export(model, inputs.export_args(), str(path), dynamo=True, external_data=False,
                              optimize=True, verbose=False, **kwargs)
        else:
            torch.onnx.export(model, inputs.export_args(), str(path), dynamo=False, do_constant_folding=True,
                              **kwargs)
    if stand_in:
        _rename_values(path, {v: k for k, v in stand_in.items()})


def _rename_values(path: Path, names: dict[str, str]) -> None:
    """Rename graph values (outputs, and every node input or output that refers to them) in the file."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    for v in [*graph.output, *graph.value_info]:
        v.name = names.get(v.name, v.name)
    for n in graph.node:
        n.input[:] = [names.get(i, i) for i in n.input]
        n.output[:] = [names.get(o, o) for o in n.output]
    onnx.save(model, str(path))


def _check_io(path: Path, inputs, output_names: list[str]) -> None:
    """The graph must keep every input and output under its name (a constant output can be folded away)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    got_in, got_out = [i.name for i in graph.input], [o.name for o in graph.output]
    missing = [n for n in inputs.names if n not in got_in] + [n for n in output_names if n not in got_out]
    if missing:
        raise ExportError(f"the exported ONNX graph lost {', '.join(missing)} (inputs {got_in}, outputs {got_out})")


def _unsupported_op(errors: list[str]) -> str | None:
    """Name the op (and the layer, when the exporter says) that no exporter could convert."""
    import re

    for err in errors:
        m = re.search(r"(aten::\w+|aten\.\w+(?:\.\w+)?)", err)
        if m and ("unsupported" in err.lower() or "not supported" in err.lower() or "no symbolic" in err.lower()):
            where = re.search(r"(?:node|layer|module)[ :]+'?([\w./]+)", err)
            return f"operator {m.group(1)}" + (f" at {where.group(1)}" if where else "")
    return None


# The exporters tried, in order. TorchScript comes first: on YOLOv8n at 320 it exported in 7 s where dynamo
# took 13 s (docs/export-quantize-benchmark.md); dynamo is the fallback for what TorchScript cannot trace.
EXPORTERS = (("torch.onnx (TorchScript)", False), ("torch.onnx (dynamo)", True))


def export_graph(model: nn.Module, inputs, out: Path, output_names: list[str], dynamic_batch: bool = False,
                 simplify: bool = True) -> dict:
    """The fp32 graph of `model` written to `out` (checked, its inputs and outputs under their names, simplified
    when `simplify` and onnxslim is installed), by the first exporter that succeeds. Returns what made it:
    exporter, opset, the errors of the exporters tried before, simplified."""
    from edgeopt.formats import onnx_quant

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    errors: list[str] = []
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}.", suffix=".onnx.tmp")
    os.close(fd)
    honour_umask(tmp_name)
    tmp = Path(tmp_name)
    try:
        for exporter, dynamo in EXPORTERS:
            try:
                _try_export(model, inputs, tmp, dynamo, output_names, dynamic_batch)
                break
            except Exception as e:
                errors.append(f"{exporter}: {first_line(e, 300, with_type=False)}")
        else:
            op = _unsupported_op(errors)
            raise ExportError(("ONNX export failed: unsupported " + op) if op else
                              "ONNX export failed: " + " | ".join(errors))
        _check_graph(tmp, inputs, output_names)
        simplified = simplify and onnx_quant.simplify(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"exporter": exporter, "opset": max(OPSET, 18) if dynamo else OPSET, "fallback_errors": errors,
            "simplified": simplified}


def _check_graph(path: Path, inputs, output_names: list[str]) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as e:
        raise ExportError(f"exported ONNX graph is invalid: {first_line(e, with_type=False)}") from None
    _check_io(path, inputs, output_names)


def export_onnx(model: nn.Module, example: torch.Tensor, out: Path, precision: str = "fp32",
                calib=None, options: dict | None = None) -> ExportResult:
    """`example`: a tensor, a tuple or a dict of tensors (input names from the structure).
    options: quant_mode (int8: auto | qdq-s8 | qdq-u8 | qoperator-u8 | qoperator-s8 | qdq-tensorrt | dynamic),
    simplify (default True), allow_random_calib (default False), dynamic_batch (default False), source (an
    OnnxSource of this model: its fp32 graph is converted instead of exporting the model again)."""
    from edgeopt.formats import onnx_quant
    from edgeopt.formats.calibration import resolve_calibration
    from edgeopt.formats.onnx_source import OnnxSource

    options = dict(options or {})
    if precision not in ("fp32", "fp16", "int8", "int8w"):
        raise ExportError(f"ONNX export at {precision} is not supported; use fp32, fp16, int8 or int8w "
                          "(weight-only int8)")
    source = options.get("source")
    if not isinstance(source, OnnxSource) or source.model is not model:
        source = OnnxSource(model, example)
    inputs, output_names = source.inputs, source.output_names
    out = Path(out)
    cal = None
    if precision == "int8" and options.get("quant_mode", "auto") != "dynamic" and calib is not None:
        cal = resolve_calibration(calib, inputs, "int8", options.get("allow_random_calib", False))
    elif precision == "int8" and calib is None and options.get("quant_mode", "auto") not in ("auto", "dynamic"):
        resolve_calibration(calib, inputs, "int8", options.get("allow_random_calib", False))  # refuse early
    dynamic = bool(options.get("dynamic_batch"))
    graph, made = source.graph(dynamic, options.get("simplify", True))
    info: dict = {"simplified": made["simplified"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}.", suffix=".onnx.tmp")
    os.close(fd)
    honour_umask(tmp_name)
    tmp = Path(tmp_name)
    conv = tmp.with_name(tmp.name + ".conv")
    try:
        shutil.copyfile(graph, tmp)
        if precision == "fp16":
            info.update(onnx_quant.convert_fp16(tmp, conv))
            os.replace(conv, tmp)
        elif precision == "int8w":  # weight-only: no calibration, float compute, ~4x smaller file
            info.update(onnx_quant.weight_only_int8(tmp, conv))
            os.replace(conv, tmp)
        elif precision == "int8":
            mode = onnx_quant.pick_mode(tmp, options.get("quant_mode", "auto"))
            arrays = None
            if mode != "dynamic":  # dynamic quantization computes activation scales at run time
                cal = cal or resolve_calibration(calib, inputs, "int8", options.get("allow_random_calib", False))
                arrays = cal.feeds()  # every input, by name
                info["calibration"] = cal.info()
            info.update(onnx_quant.quantize_int8(tmp, conv, mode, arrays))
            os.replace(conv, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        conv.unlink(missing_ok=True)
    return ExportResult(path=out, format="onnx", precision=precision, exporter=made["exporter"], files=[out],
                        info={"opset": made["opset"], "fallback_errors": list(made["fallback_errors"]),
                              "inputs": inputs.describe(), "outputs": output_names, "dynamic_batch": dynamic,
                              "graph_exports": source.exports, "graph_export_seconds": source.bill(), **info})


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
    int8_inits = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.INT8}
    if any(n.op_type == "DequantizeLinear" and n.input[0] in int8_inits for n in graph.node):
        return "int8w"  # weight-only: int8 weights dequantized to float, no quantized activations
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer):
        return "fp16"
    return "fp32"


_INT8_COMPUTE = {"QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul", "QGemm", "DynamicQuantizeMatMul",
                 "MatMulIntegerToFloat"}
_FLOAT_COMPUTE = {"Conv", "FusedConv", "ConvTranspose", "Gemm", "FusedGemm", "MatMul", "FusedMatMul"}
_GEMM_LIKE = {"Gemm", "FusedGemm", "MatMul", "FusedMatMul", "MatMulInteger", "QLinearMatMul", "QGemm",
              "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
_WEIGHT_INPUT = {"QLinearConv": 3}  # the other conv kernels take their weight as input 1


def _conv_weight_shapes(model) -> dict[str, tuple[int, ...]]:
    """node name -> shape of its conv weight, following a DequantizeLinear back to its initializer."""
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    shapes = {}
    for n in model.graph.node:
        if n.op_type in _GEMM_LIKE or n.op_type not in _INT8_COMPUTE | _FLOAT_COMPUTE:
            continue
        name = n.input[_WEIGHT_INPUT.get(n.op_type, 1)] if len(n.input) > 1 else ""
        src = producer.get(name)
        if src is not None and src.op_type == "DequantizeLinear":
            name = src.input[0]
        if name in inits:
            shapes[n.name] = inits[name]
    return shapes


def executed_precision(path: Path, providers: list[str]) -> dict:
    """What ONNX Runtime really runs: one profiled inference of the graph as the runtime optimized it (the
    same options and providers as the session), each compute kernel counted by its MACs as int8 or float.
    A QuantizeLinear node in the file proves nothing: unfused Q/DQ pairs around a float Conv run in fp32."""
    import json
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "profile")
        sess = ort.InferenceSession(str(path), so, providers=providers)
        inp = sess.get_inputs()[0]
        dtype = np.float16 if "float16" in inp.type else np.float32
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        sess.run(None, {inp.name: np.zeros(shape, dtype=dtype)})
        events = json.loads(Path(sess.end_profiling()).read_text())
        weights = _conv_weight_shapes(onnx.load(so.optimized_model_filepath, load_external_data=False))
    macs = {"int8": 0, "fp32": 0, "fp16": 0}
    for e in events:
        args = e.get("args", {})
        op = args.get("op_name")
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or op not in (
                _INT8_COMPUTE | _FLOAT_COMPUTE):
            continue
        ins = [(next(iter(d)), next(iter(d.values()))) for d in args.get("input_type_shape", [])]
        outs = [next(iter(d.values())) for d in args.get("output_type_shape", [])]
        out_elems = int(np.prod(outs[0])) if outs else 0
        if op in _GEMM_LIKE:
            k = ins[0][1][-1] if ins and ins[0][1] else 1
        else:
            w = weights.get(e["name"][:-len("_kernel_time")])
            k = int(np.prod(w[1:])) if w else 1
        kind = "int8" if op in _INT8_COMPUTE else "fp16" if ins and ins[0][0] == "float16" else "fp32"
        macs[kind] += out_elems * k
    total = sum(macs.values())
    return {"int8_mac_fraction": round(macs["int8"] / total, 4) if total else None, "macs_by_precision": macs,
            "source": "onnxruntime optimized graph, profiled"}


def precision_label(reading: dict, fallback: str) -> str:
    """int8 when (nearly) every MAC runs int8, 'int8+fp32' when some do, else the float precision."""
    frac = reading.get("int8_mac_fraction")
    if frac is None:
        return fallback
    macs = reading["macs_by_precision"]
    flt = "fp16" if macs.get("fp16", 0) > macs.get("fp32", 0) else "fp32"
    return "int8" if frac >= 0.99 else f"int8+{flt}" if frac > 0 else flt


def load_onnxruntime(path: Path, precision: str = "fp32", threads: int | None = None,
                     device: str = "CPU") -> Session:
    import onnxruntime as ort  # installed, file present: checked once by the formats table's load preamble

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    # Its worker threads spin while a Run lasts, as by default, but stop when it returns: left spinning, they
    # take a core from whatever runs next (another candidate measured interleaved, the user's own code); on 2
    # cores that made OpenVINO's runs interleaved with ours bimodal, p90 twice the p50.
    so.add_session_config_entry("session.force_spinning_stop", "1")
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
        raise ArtifactError(f"ONNX Runtime cannot load {path}: {first_line(e, with_type=False)}") from None
    shapes = {i.name: tuple(d if isinstance(d, int) else -1 for d in i.shape) for i in sess.get_inputs()}
    outputs = [o.name for o in sess.get_outputs()]
    if not shapes:  # nothing to feed: nothing to measure or verify
        raise ArtifactError(f"{path} has no inputs: edgeopt measures models that take at least one input")
    name, shape = next(iter(shapes.items()))

    def run_all(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feed(feed, shapes)
        return dict(zip(outputs, sess.run(None, feed), strict=True))

    def run(x: np.ndarray) -> np.ndarray:
        return run_all({name: np.ascontiguousarray(x, dtype=np.float32)})[outputs[0]]

    def lean_call(x):
        feed = x if isinstance(x, dict) else {name: x}
        feed = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feed.items()}
        return lambda: sess.run(None, feed)

    declared = graph_precision(path) or precision
    try:
        reading = executed_precision(path, sess.get_providers())
    except Exception as e:  # the reading is a report detail: never fail a load over it
        reading = {"int8_mac_fraction": None, "error": first_line(e, with_type=False)}
    executed = precision_label(reading, declared)
    if declared == "int8w" and executed in ("fp32", "fp16"):
        executed = "int8w"  # int8 weights dequantized to float: compute is float, storage is int8
    elif declared == "fp16" and executed == "fp32":
        executed = "fp32 (fp16 weights)"  # no fp16 kernels here: the runtime casts to fp32 and computes in fp32
    return Session(runtime="onnxruntime", runtime_version=ort.__version__, precision_executed=executed,
                   input_shape=shape, run=run, lean_call=lean_call, device=sess.get_providers()[0],
                   threads=threads, info={"providers": sess.get_providers(), "graph_precision": declared,
                                          "executed_precision": reading,
                                          "int8_mac_fraction": reading.get("int8_mac_fraction")},
                   input_shapes=shapes, output_names=outputs, run_all=run_all)
