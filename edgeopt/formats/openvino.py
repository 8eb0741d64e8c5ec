"""OpenVINO IR (.xml + .bin) from the torch model (ov.convert_model), falling back to an ONNX route.

Weights stay fp32 in the IR for fp32/bf16/fp16: the precision actually executed is chosen at compile time by
the runtime's inference-precision hint, and reported from there. INT8 is real post-training quantization
through NNCF (`nncf.quantize` on calibration data; `nncf.quantize_with_accuracy_control` when labelled
evaluation data and a maximum accuracy drop are given in options).

OpenVINO sessions. The inference-precision hint is set explicitly and read back, because OpenVINO
runs bf16 by default on AMX and AVX-512-BF16 CPUs: the report states what was really executed (read from the
execution graph), and a float IR records the precision it was measured at (see `_pin_precision`).

Every Core in this process is the one `openvino_core()` returns (see there for why)."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeopt.errors import ArtifactError, ConfigError, ExportError, missing_backend
from edgeopt.formats.base import ExportResult, Session, check_feed


@functools.cache
def openvino_core():
    """The process's one `ov.Core`. A Core that loads the CPU plugin installs an alternate signal stack of its
    own on the thread, and when it goes (with the last model compiled on it) puts back the stack that was
    current when it came. Two Cores freed in the order they were made leave the thread's sigaltstack pointing
    at unmapped memory, and the next handled signal (a DataLoader worker's SIGCHLD, Ctrl-C, the SIGALRM of
    edgeopt's time limit) kills the process with SIGSEGV. One Core that lives as long as the process never
    hands back a freed stack. Options go in each `compile_model` call's config, never `set_property`: a plain
    compile on this Core must stay what a user's plain compile is."""
    import openvino as ov

    return ov.Core()


@contextlib.contextmanager
def nncf_on_shared_core():
    """NNCF compiles on Cores of its own (`ov.Core()` in its inference engine, `ov.compile_model` in accuracy
    control), freed whenever Python drops them, in any order: the crash `openvino_core` explains. NNCF takes
    no Core argument, so while it runs both names hand out the process's Core (every option NNCF needs goes in
    its compile calls' config)."""
    import openvino as ov
    import openvino._ov_api as api

    core, saved = openvino_core(), (ov.Core, api.Core)

    def shared(*args, **kwargs):
        return core if not args and not kwargs else saved[0](*args, **kwargs)

    ov.Core = api.Core = shared
    try:
        yield
    finally:
        ov.Core, api.Core = saved


def export_openvino(model: nn.Module, example: torch.Tensor, out: Path, precision: str = "fp32",
                    calib=None, options: dict | None = None) -> ExportResult:
    try:
        import openvino as ov
    except ImportError:
        raise missing_backend("openvino", "openvino") from None
    from edgeopt.inputs.structure import Inputs, model_outputs

    out = Path(out).with_suffix(".xml")
    inputs = Inputs.of(example, model)
    output_names = list(model_outputs(model.eval(), inputs))
    example = inputs.first
    cal = None
    if precision == "int8":  # refuse missing/bad calibration data before the slow conversion
        from edgeopt.formats.calibration import resolve_calibration

        cal = resolve_calibration(calib, inputs, "int8", dict(options or {}).get("allow_random_calib", False))
    out.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    ov_model, exporter = None, None
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit deprecation chatter from the tracer
            ov_model = ov.convert_model(model.eval(), example_input=inputs.example())
        exporter = "openvino.convert_model (torch)"
    except Exception as e:
        errors.append(f"convert_model(torch): {str(e).splitlines()[0][:300] if str(e) else type(e).__name__}")
    if ov_model is None:  # ONNX route: some graphs trace better through torch.onnx
        from edgeopt.formats.onnx import export_onnx

        with tempfile.TemporaryDirectory() as tmpdir:
            try:
                onnx_path = export_onnx(model, inputs, Path(tmpdir) / "m.onnx").path
                ov_model = ov.convert_model(str(onnx_path))
                exporter = "openvino.convert_model (onnx)"
            except Exception as e:
                errors.append(f"via onnx: {str(e).splitlines()[0][:300] if str(e) else type(e).__name__}")
    if ov_model is None:
        raise ExportError("OpenVINO conversion failed: " + " | ".join(errors))
    _name_io(ov, ov_model, inputs, output_names, bool(dict(options or {}).get("dynamic_batch")))
    info: dict = {}
    with nncf_on_shared_core():
        if precision == "int8":
            ov_model, info = _quantize(ov_model, cal, example, dict(options or {}))
        elif precision == "int8w":
            ov_model, info = _compress_weights(ov_model)
    pin = _pin_precision(ov_model, precision)
    tmpdir = Path(tempfile.mkdtemp(dir=out.parent, prefix=".ovtmp."))
    try:  # save beside the destination, then move both files in: never half an IR
        ov.save_model(ov_model, str(tmpdir / out.name), compress_to_fp16=False)
        if pin == "f32":
            _mark_layers_precise(tmpdir / out.name)
        bin_path = out.with_suffix(".bin")
        os.replace(tmpdir / out.with_suffix(".bin").name, bin_path)
        os.replace(tmpdir / out.name, out)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return ExportResult(path=out, format="openvino", precision=precision, exporter=exporter,
                        files=[out, out.with_suffix(".bin")],
                        info={"fallback_errors": errors, "inputs": inputs.describe(), "outputs": output_names,
                              **({"pinned_precision": pin} if pin else {}), **info})


def _pin_precision(ov_model, precision: str) -> str | None:
    """Record the precision a float IR is measured at in its rt_info (runtime_options/INFERENCE_PRECISION_HINT,
    what `load_openvino` passes as the hint); returns it, or None for int8/int8w and quantization-aware graphs.
    OpenVINO 2026 applies only some runtime_options at compile time, not this one, so for f32 every layer also
    gets the "precise" mark (`_mark_layers_precise`). bf16 needs no mark: it is the CPU plugin's own default
    where the CPU has bf16. INT8 IRs are measured without a hint, as a plain compile runs them: their float
    layers run the CPU's default precision in both. The deploy instructions give the explicit config."""
    hint = PRECISION_HINTS.get(precision)
    if not hint or any(op.get_type_name() == "FakeQuantize" for op in ov_model.get_ops()):
        return None
    ov_model.set_rt_info(hint, ["runtime_options", "INFERENCE_PRECISION_HINT"])
    return hint


_UNMARKED = {"Parameter", "Result", "Const"}


def _mark_layers_precise(xml: Path) -> None:
    """Give every computing layer of a saved IR the "precise" runtime attribute (ov::DisablePrecisionConversion,
    by the name OpenVINO's IR reader knows it): the CPU plugin then keeps its original f32 instead of lowering it
    to bf16 on AMX/AVX-512-BF16 CPUs, with or without a hint. Layers the plugin builds anew (a MatMul with
    constant weights becomes a FullyConnected, attention a fused subgraph) do not inherit it. The Python API
    cannot create that attribute, so it goes into the IR's XML, where OpenVINO's own serializer puts runtime
    attributes."""
    tree = ET.parse(xml)
    for layer in tree.getroot().iter("layer"):
        if layer.get("type") in _UNMARKED:
            continue
        rt = layer.find("rt_info")
        if rt is None:
            rt = ET.Element("rt_info")
            layer.insert(1 if layer.find("data") is not None else 0, rt)
        if not any(a.get("name") in ("precise", "DisablePrecisionConversion") for a in rt.iter("attribute")):
            ET.SubElement(rt, "attribute", {"name": "precise", "version": "0"})
    tree.write(xml, encoding="utf-8", xml_declaration=True)


def _name_io(ov, ov_model, inputs, output_names: list[str], dynamic_batch: bool) -> None:
    """Static (or batch-dynamic) input shapes, and the structure's names on every input and output, so that
    the IR is fed and read by name like the ONNX artifact."""
    if len(ov_model.inputs) != len(inputs.names) or len(ov_model.outputs) != len(output_names):
        raise ExportError(f"OpenVINO conversion gave {len(ov_model.inputs)} inputs / {len(ov_model.outputs)} "
                          f"outputs for the model's {len(inputs.names)} / {len(output_names)}")
    shapes = {}
    for port, (name, shape) in zip(ov_model.inputs, inputs.shapes.items(), strict=True):
        port.get_tensor().set_names({name})
        shapes[port] = ov.PartialShape([-1 if dynamic_batch and i == 0 else d for i, d in enumerate(shape)])
    ov_model.reshape(shapes)
    for port, name in zip(ov_model.outputs, output_names, strict=True):
        port.get_tensor().set_names({name})


def _accuracy_fn(example: torch.Tensor):
    """NNCF's validation_fn: top-1 accuracy (0..1) of a compiled model over (x, y) pairs."""
    import numpy as np

    def validate(compiled, data) -> float:
        request = compiled.create_infer_request()
        right = total = 0
        for x, y in data:
            out = request.infer({0: x})[compiled.output(0)]
            right += int((np.asarray(out).reshape(len(y), -1).argmax(1) == y).sum())
            total += len(y)
        return right / max(total, 1)

    return validate


def _eval_pairs(eval_data, example: torch.Tensor) -> list:
    """Labelled evaluation batches regrouped to the IR's static batch size, as numpy (x, y) pairs."""
    b = int(example.shape[0])
    pairs = []
    for x, y in eval_data.items:
        for i in range(0, len(x) - b + 1, b):
            pairs.append((x[i:i + b].numpy(), y[i:i + b].numpy()))
    return pairs


def _quantize(ov_model, cal, example: torch.Tensor, options: dict):
    import nncf

    dataset = nncf.Dataset(cal.feeds())  # every input, by the names _name_io gave the IR
    info = {"calibration": cal.info(), "quantizer": f"nncf {nncf.__version__}"}
    eval_data = options.get("eval_data")
    max_drop = options.get("max_accuracy_drop")  # percentage points
    try:
        # accuracy control scores top-1 of one input's batches: only for single-input models
        if eval_data is not None and getattr(eval_data, "labelled", False) and max_drop is not None and len(
                cal.names) == 1:
            pairs = _eval_pairs(eval_data, example)
            quantized = nncf.quantize_with_accuracy_control(
                ov_model, calibration_dataset=dataset, validation_dataset=nncf.Dataset(pairs),
                validation_fn=_accuracy_fn(example), max_drop=float(max_drop) / 100.0,
                drop_type=nncf.DropType.ABSOLUTE, subset_size=len(cal.inputs))
            info["accuracy_control"] = {"max_drop_pp": float(max_drop), "eval_samples": len(pairs),
                                        "float_layers": float_layers(quantized)}
        else:
            quantized = nncf.quantize(ov_model, dataset, subset_size=len(cal.inputs),
                                      preset=nncf.QuantizationPreset.PERFORMANCE)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ExportError(f"NNCF INT8 quantization failed: {first}") from None
    return quantized, info


def _compress_weights(ov_model):
    """Weight-only INT8 (NNCF weight compression, per output channel): Conv/MatMul weights stored as int8 and
    decompressed by the plugin; no calibration data, no int8 compute units needed."""
    import nncf

    try:
        compressed = nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ExportError(f"NNCF weight compression failed: {first}") from None
    return compressed, {"quantization": "weight-only int8 (nncf.compress_weights INT8_ASYM)",
                        "quantizer": f"nncf {nncf.__version__}"}


_COMPUTE = {"Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul"}


def _int8_weights(node, hops: int = 4) -> bool:
    """Whether a weight input is int8: a FakeQuantize, or an int8/uint8 constant behind Convert/Multiply."""
    if node.get_type_name() == "FakeQuantize":
        return True
    if node.get_type_name() == "Constant":
        return node.get_output_element_type(0).get_type_name() in ("i8", "u8", "i4", "u4")
    return hops > 0 and any(_int8_weights(node.input_value(i).get_node(), hops - 1)
                            for i in range(node.get_input_size()))


def float_layers(ov_model) -> list[str]:
    """Compute layers (convolutions, matmuls) whose weights stayed in float after NNCF quantization: what
    accuracy control reverted (or what was never quantized)."""
    return [op.get_friendly_name() for op in ov_model.get_ordered_ops() if op.get_type_name() in _COMPUTE
            and op.get_input_size() > 1 and not _int8_weights(op.input_value(1).get_node())]


PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": None, "int8w": None}


def precision_name(ov_type) -> str:
    text = str(ov_type).lower()  # an ov.Type, printed like "<type: 'bfloat16'>" or "bf16"
    for key, name in (("bf", "bf16"), ("16", "fp16"), ("32", "fp32")):
        if key in text:
            return name
    return text


_CONV_LAYERS = {"Convolution", "GroupConvolution", "Deconvolution", "BinaryConvolution"}
_GEMM_LAYERS = {"FullyConnected", "MatMul", "Gemm", "FullyConnectedCompressed"}


def executed_precision(compiled) -> dict:
    """What the CPU/GPU plugin really runs: its execution graph (`get_runtime_model()`), each convolution /
    matrix product counted by its MACs under the runtimePrecision the plugin chose (i8/u8 = INT8)."""
    macs: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        layer = rt["layerType"].astype(str) if "layerType" in rt else ""
        if layer not in _CONV_LAYERS | _GEMM_LAYERS or op.get_input_size() < 2:
            continue
        out = op.get_output_partial_shape(0)
        x, w = op.input(0).get_partial_shape(), op.input(1).get_partial_shape()
        if out.is_dynamic or x.is_dynamic or w.is_dynamic:
            continue
        k = int(np.prod(w.to_shape()[1:])) if layer in _CONV_LAYERS else int(x.to_shape()[-1])
        prec = rt["runtimePrecision"].astype(str).lower() if "runtimePrecision" in rt else "f32"
        kind = "int8" if prec in ("i8", "u8") else precision_name(prec)
        macs[kind] = macs.get(kind, 0) + int(np.prod(out.to_shape())) * k
    total = sum(macs.values())
    return {"int8_mac_fraction": round(macs.get("int8", 0) / total, 4) if total else None,
            "macs_by_precision": macs, "source": "openvino execution graph (runtimePrecision)"}


def read_ir(path: Path, core=None):
    """`core.read_model`, with an error that names the file at fault: OpenVINO's own reads only "Exception from
    src/inference/src/cpp/core.cpp:84:" on its first line. An .xml whose root is not <net> is refused before
    OpenVINO tries every frontend on it (each prints its own parse error)."""
    path = Path(path)
    core = core or openvino_core()
    if path.suffix.lower() == ".xml":
        root = _xml_root(path)
        if root.tag != "net" or "version" not in root.attrib:
            what = f"its root element is <{root.tag}>, not <net>" if root.tag != "net" else "<net> has no version"
            raise ArtifactError(f"{path} is not an OpenVINO IR: {what}")
    try:
        return core.read_model(str(path))
    except Exception as e:
        raise ArtifactError(_ir_problem(path, e)) from None


def _xml_root(path: Path):
    try:
        with open(path, "rb") as f:  # the first element only: the rest is read once, by OpenVINO
            for _, elem in ET.iterparse(f, events=("start",)):
                return elem
    except ET.ParseError as e:
        raise ArtifactError(f"{path} is not well-formed XML ({e}): re-export the OpenVINO IR") from None
    except OSError as e:
        raise ArtifactError(f"cannot read {path}: {e.strerror or e}") from None
    raise ArtifactError(f"{path} is empty: re-export the OpenVINO IR")


def _ir_problem(path: Path, error: Exception) -> str:
    """One line for an IR OpenVINO refused: broken XML, a missing or short .bin, else OpenVINO's own reason."""
    if path.suffix.lower() == ".xml":
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as e:
            return f"{path} is not well-formed XML ({e}): re-export the OpenVINO IR"
        need = 0
        for data in root.iter("data"):
            try:
                need = max(need, int(data.get("offset", "")) + int(data.get("size", "")))
            except ValueError:
                continue
        weights = path.with_suffix(".bin")
        if need and not weights.is_file():
            return f"{weights} is missing: {path.name} keeps its weights in it (copy both files together)"
        if need and weights.stat().st_size < need:
            return (f"{weights} holds {weights.stat().st_size} bytes but {path.name} needs {need}: it is truncated "
                    "or belongs to another model")
    return f"OpenVINO cannot read {path}: {_reason(error)}"


def _reason(error: Exception) -> str:
    """The informative line of an OpenVINO exception, past its "Exception from <file>:<line>:" and
    "Check '...' failed at ..." lines."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Exception from", "Check '"))]
    return (useful or lines or [type(error).__name__])[0][:300]


def load_openvino(path: Path, precision: str = "fp32", threads: int | None = None,
                  device: str = "CPU") -> Session:
    import openvino as ov  # installed, file present: checked once by the formats table's load preamble

    if precision not in PRECISION_HINTS:
        raise ConfigError(f"OpenVINO precision {precision!r} unknown; use one of {', '.join(PRECISION_HINTS)}")
    core = openvino_core()
    config = {"PERFORMANCE_HINT": "LATENCY"}
    hint = PRECISION_HINTS[precision]
    if hint:
        config["INFERENCE_PRECISION_HINT"] = hint
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    ov_model = read_ir(path, core)
    quantized = any(op.get_type_name() == "FakeQuantize" for op in ov_model.get_ops())
    compressed = not quantized and any(  # weight-only compression: int8/uint8 weight constants
        op.get_type_name() == "Constant" and op.get_element_type() in (ov.Type.i8, ov.Type.u8)
        for op in ov_model.get_ops())
    try:
        compiled = core.compile_model(ov_model, device.upper(), config)
    except Exception as e:
        raise ArtifactError(f"OpenVINO cannot compile {path} for {device.upper()}: {_reason(e)}") from None
    executed = precision_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
    try:
        reading = executed_precision(compiled)
    except Exception as e:  # a report detail: never fail a load over it
        reading = {"int8_mac_fraction": None, "error": str(e).splitlines()[0][:200] if str(e) else type(e).__name__}
    floats = {k: v for k, v in reading.get("macs_by_precision", {}).items() if k != "int8"}
    if floats:  # the float precision most MACs ran in, not the hint: an IR's precise layers keep f32 under any
        executed = max(floats, key=floats.get)
    frac = reading.get("int8_mac_fraction")
    if frac is not None:  # the execution graph, not the IR's FakeQuantize nodes, says what runs
        executed = "int8" if frac >= 0.99 else f"int8+{executed}" if frac > 0 else executed
    elif quantized:
        executed = f"int8+{executed}"
    if compressed and (frac or 0) < 0.5:
        # int8 weights decompressed on the fly: float compute for most MACs (the plugin may still run a few
        # layers with dynamically quantized activations: their share is in int8_mac_fraction)
        executed = "int8w"
    request = compiled.create_infer_request()
    shapes = {p.get_any_name(): tuple(d.get_length() if d.is_static else -1 for d in p.get_partial_shape())
              for p in compiled.inputs}
    outputs = [p.get_any_name() for p in compiled.outputs]
    if not shapes:  # nothing to feed: nothing to measure or verify
        raise ArtifactError(f"{path} has no inputs: edgeopt measures models that take at least one input")
    name, shape = next(iter(shapes.items()))

    def run_all(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feed(feed, shapes)
        request.infer(feed)
        return {n: request.get_output_tensor(i).data.copy() for i, n in enumerate(outputs)}

    def run(x: np.ndarray) -> np.ndarray:
        return run_all({name: np.ascontiguousarray(x, dtype=np.float32)})[outputs[0]]

    def lean_call(x):
        # the lean call: preset input tensors, then infer() with no arguments
        feed = x if isinstance(x, dict) else {name: x}
        req = compiled.create_infer_request()
        for n, v in feed.items():
            req.set_tensor(n, ov.Tensor(np.ascontiguousarray(v, dtype=np.float32)))
        return req.infer

    return Session(runtime="openvino", runtime_version=ov.get_version(), precision_executed=executed,
                   input_shape=shape, run=run, lean_call=lean_call, device=device.upper(), threads=threads,
                   info={"requested_precision": precision, "executed_precision": reading,
                         "int8_mac_fraction": reading.get("int8_mac_fraction")},
                   input_shapes=shapes, output_names=outputs, run_all=run_all)
