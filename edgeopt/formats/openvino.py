"""OpenVINO IR (.xml + .bin) converted from the structure's fp32 ONNX graph (formats/onnx_source.py: exported
once for every precision and runtime), falling back to ov.convert_model on the PyTorch model.

Weights stay fp32 in the IR for fp32/bf16/fp16: the precision actually executed is chosen at compile time by
the runtime's inference-precision hint, and reported from there. INT8 is real post-training quantization
through NNCF (`nncf.quantize` on calibration data; `nncf.quantize_with_accuracy_control` when labelled
evaluation data and a maximum accuracy drop are given in options).

OpenVINO sessions. The inference-precision hint is set explicitly and read back, because OpenVINO
runs bf16 by default on AMX and AVX-512-BF16 CPUs: the report states what was really executed (read from the
execution graph), and a float IR records the precision it was measured at (formats/openvino_precision.py).

Every Core in this process is the one `openvino_core()` returns (formats/openvino_core.py says why)."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeopt.errors import ArtifactError, ConfigError, ExportError, first_line, missing_backend
from edgeopt.formats.base import ExportResult, Session, check_feed
from edgeopt.formats.openvino_core import nncf_on_shared_core, openvino_core, openvino_reason, read_ir
from edgeopt.formats.openvino_precision import (
    PRECISION_HINTS,
    executed_precision,
    mark_layers_precise,
    pin_precision,
    precision_name,
)


@contextlib.contextmanager
def _own_argv():
    """OpenVINO's converter turns verbose (argument dumps on stdout, and tracemalloc, which slows every
    allocation) when '--verbose' is anywhere in sys.argv, so `edgeopt optimize --verbose` would switch it on:
    the process's own flags are hidden from it while it converts."""
    saved = sys.argv
    sys.argv = [a for a in saved if a != "--verbose"]
    try:
        yield
    finally:
        sys.argv = saved


def export_openvino(model: nn.Module, example: torch.Tensor, out: Path, precision: str = "fp32",
                    calib=None, options: dict | None = None) -> ExportResult:
    """options: source (an OnnxSource of this model: the IR is converted from its fp32 ONNX graph, exported
    once for every artifact of the structure), route ("onnx", the default: from the ONNX graph, the torch
    route if that fails; "torch": ov.convert_model on the PyTorch model first), dynamic_batch,
    allow_random_calib, eval_data and max_accuracy_drop (INT8 with accuracy control)."""
    try:
        import openvino as ov
    except ImportError:
        raise missing_backend("openvino", "openvino") from None
    from edgeopt.formats.onnx_source import OnnxSource

    options = dict(options or {})
    out = Path(out).with_suffix(".xml")
    source = options.get("source")
    if not isinstance(source, OnnxSource) or source.model is not model:
        source = OnnxSource(model, example)
    inputs, output_names = source.inputs, source.output_names
    example = inputs.first
    cal = None
    if precision == "int8":  # refuse missing/bad calibration data before the slow conversion
        from edgeopt.formats.calibration import resolve_calibration

        cal = resolve_calibration(calib, inputs, "int8", options.get("allow_random_calib", False))
    out.parent.mkdir(parents=True, exist_ok=True)
    dynamic = bool(options.get("dynamic_batch"))
    errors: list[str] = []
    ov_model, exporter, made = None, None, {}
    routes = ("torch", "onnx") if options.get("route") == "torch" else ("onnx", "torch")
    for route in routes:
        try:
            if route == "onnx":
                graph, made = source.graph(dynamic)
                with _own_argv():
                    ov_model = ov.convert_model(str(graph))
                exporter = f"openvino.convert_model (onnx from {made['exporter']})"
            else:
                with torch.no_grad(), warnings.catch_warnings(), _own_argv():
                    warnings.simplefilter("ignore")  # torch.jit deprecation chatter from the tracer
                    ov_model = ov.convert_model(model.eval(), example_input=inputs.example())
                exporter = "openvino.convert_model (torch)"
            _name_io(ov, ov_model, inputs, output_names, dynamic)
            break
        except Exception as e:
            ov_model = None
            errors.append(f"{route} route: {first_line(e, 300, with_type=False)}")
    if ov_model is None:
        raise ExportError("OpenVINO conversion failed: " + " | ".join(errors))
    info: dict = {"route": route, "graph_exports": source.exports, "graph_export_seconds": source.bill()}
    t0 = time.perf_counter()
    with nncf_on_shared_core():
        if precision == "int8":
            ov_model, more = _quantize(ov_model, cal, example, options)
            info.update(more, quantize_seconds=round(time.perf_counter() - t0, 3))
        elif precision == "int8w":
            ov_model, more = _compress_weights(ov_model)
            info.update(more)
    pin = pin_precision(ov_model, precision)
    tmpdir = Path(tempfile.mkdtemp(dir=out.parent, prefix=".ovtmp."))
    try:  # save beside the destination, then move both files in: never half an IR
        ov.save_model(ov_model, str(tmpdir / out.name), compress_to_fp16=False)
        if pin == "f32":
            mark_layers_precise(tmpdir / out.name)
        bin_path = out.with_suffix(".bin")
        os.replace(tmpdir / out.with_suffix(".bin").name, bin_path)
        os.replace(tmpdir / out.name, out)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return ExportResult(path=out, format="openvino", precision=precision, exporter=exporter,
                        files=[out, out.with_suffix(".bin")],
                        info={"fallback_errors": errors, "inputs": inputs.describe(), "outputs": output_names,
                              **({"onnx_fallback_errors": made["fallback_errors"]} if made.get("fallback_errors")
                                 else {}),
                              **({"pinned_precision": pin} if pin else {}), **info})


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

    from edgeopt.measure.top1 import percent_correct

    def validate(compiled, data) -> float:
        request = compiled.create_infer_request()
        return percent_correct((np.asarray(request.infer({0: x})[compiled.output(0)]), y) for x, y in data) / 100

    return validate


def _eval_pairs(eval_data, example: torch.Tensor) -> list:
    """Labelled evaluation batches regrouped to the IR's static batch size, as numpy (x, y) pairs."""
    b = int(example.shape[0])
    pairs = []
    for x, y in eval_data.items:
        for i in range(0, len(x) - b + 1, b):
            pairs.append((x[i:i + b].numpy(), y[i:i + b].numpy()))
    return pairs


# NNCF accuracy control, bounded: unbounded, it ranked and reverted a pruned DeiT-tiny's layers for 604 s (its
# PTQ took 8 s). At most AC_MAX_LAYERS layer groups go back to float (more would leave little of INT8's speed),
# ranked on AC_RANKING_SAMPLES samples.
AC_MAX_LAYERS = 8
AC_RANKING_SAMPLES = 100

# activations whose outputs are not >= 0: an 8-bit symmetric scale spends half its codes on a range they barely
# use, so their inputs are quantized asymmetrically (NNCF's MIXED preset)
SIGNED_ACTIVATIONS = frozenset({"Swish", "HSwish", "Gelu", "Elu", "PRelu", "Mish", "SoftPlus", "Selu"})


def _attention(ov_model) -> bool:
    """Whether the graph multiplies two activations (attention's QK^T and AV) or holds a fused attention op."""
    def weight(v) -> bool:
        node = v.get_node()
        while node.get_type_name() in ("Convert", "Reshape", "Transpose") and node.get_input_size():
            node = node.input_value(0).get_node()
        return node.get_type_name() == "Constant"

    return any(op.get_type_name() == "ScaledDotProductAttention" or (
        op.get_type_name() == "MatMul" and not any(weight(op.input_value(i)) for i in range(2)))
        for op in ov_model.get_ops())


# layers holding weights: where a graph's output tail (see `output_tail`) begins
WEIGHTED_OPS = frozenset({"Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul"})


def output_tail(ov_model) -> list[str]:
    """Friendly names of the ops between the last weighted layers and the results (found walking back from
    every result until a convolution or MatMul), the OpenVINO twin of the ONNX Runtime rule
    (formats/onnx_quant.py `output_tail`): a detection head's decoding adds anchors and multiplies by strides
    in pixels next to scores in 0..1, and NNCF quantized those elementwise ops (YOLOv8n lost 2.9 pp of mAP
    at INT8 on the original, ONNX Runtime with the tail in float none)."""
    tail: dict[str, object] = {}
    stack = [r.input_value(0).get_node() for r in ov_model.get_results()]
    while stack:
        node = stack.pop()
        name = node.get_friendly_name()
        if name in tail or node.get_type_name() in WEIGHTED_OPS or node.get_type_name() in ("Parameter",
                                                                                               "Constant"):
            continue
        tail[name] = node
        stack.extend(v.get_node() for v in node.input_values())
    return list(tail)


def nncf_settings(ov_model) -> dict:
    """NNCF's preset, model type and ignored scope for this graph: asymmetric activations (MIXED) when the
    graph has signed activations such as SiLU, HardSwish or GELU (YOLOv8, MobileNetV3, ViTs), the transformer
    model type, which keeps attention's sensitive ops in float, when it has attention (both as NNCF's
    documentation advises), and the output tail in float."""
    import nncf

    types = {op.get_type_name() for op in ov_model.get_ops()}
    signed = sorted(types & SIGNED_ACTIVATIONS)
    out = {"preset": nncf.QuantizationPreset.MIXED if signed else nncf.QuantizationPreset.PERFORMANCE}
    if _attention(ov_model):
        out["model_type"] = nncf.ModelType.TRANSFORMER
    tail = output_tail(ov_model)
    if tail:
        out["ignored_scope"] = nncf.IgnoredScope(names=tail, validate=False)
    return out


def for_nncf(ov_model) -> tuple[object, dict]:
    """(the graph NNCF can quantize, its settings): every INT8 IR, exported or timed layer by layer, is
    quantized this way. A clone holds only the nodes that feed the results: the ONNX frontend can leave dead
    nodes attached as consumers of live outputs (torchvision SSDlite's postprocessing), and NNCF's graph
    builder follows every consumer and fails on the first it did not list ("Could not find a node
    Unsqueeze_2116 in NNCFGraph")."""
    clone = ov_model.clone()
    return clone, nncf_settings(clone)


def _quantize(ov_model, cal, example: torch.Tensor, options: dict):
    import nncf

    ov_model, settings = for_nncf(ov_model)
    dataset = nncf.Dataset(cal.feeds())  # every input, by the names _name_io gave the IR
    info = {"calibration": cal.info(), "quantizer": f"nncf {nncf.__version__}",
            "nncf": {k: v.value for k, v in settings.items() if k != "ignored_scope"}}
    if "ignored_scope" in settings:
        info["float_output_tail"] = len(settings["ignored_scope"].names)
    eval_data = options.get("eval_data")
    max_drop = options.get("max_accuracy_drop")  # percentage points
    try:
        # accuracy control scores top-1 of one input's batches: only for single-input models
        if eval_data is not None and getattr(eval_data, "labelled", False) and max_drop is not None and len(
                cal.names) == 1:
            pairs = _eval_pairs(eval_data, example)
            from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

            restorer = AdvancedAccuracyRestorerParameters(max_num_iterations=AC_MAX_LAYERS,
                                                          ranking_subset_size=AC_RANKING_SAMPLES)
            quantized = nncf.quantize_with_accuracy_control(
                ov_model, calibration_dataset=dataset, validation_dataset=nncf.Dataset(pairs),
                validation_fn=_accuracy_fn(example), max_drop=float(max_drop) / 100.0,
                drop_type=nncf.DropType.ABSOLUTE, subset_size=len(cal.inputs),
                advanced_accuracy_restorer_parameters=restorer, **settings)
            info["accuracy_control"] = {"max_drop_pp": float(max_drop), "eval_samples": len(pairs),
                                        "float_layers": float_layers(quantized),
                                        "max_layers": AC_MAX_LAYERS, "ranking_samples": AC_RANKING_SAMPLES}
        else:
            quantized = nncf.quantize(ov_model, dataset, subset_size=len(cal.inputs), **settings)
    except Exception as e:
        raise ExportError(f"NNCF INT8 quantization failed: {first_line(e, 300, with_type=False)}") from None
    return quantized, info


def _compress_weights(ov_model):
    """Weight-only INT8 (NNCF weight compression, per output channel): Conv/MatMul weights stored as int8 and
    decompressed by the plugin; no calibration data, no int8 compute units needed."""
    import nncf

    try:
        compressed = nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    except Exception as e:
        raise ExportError(f"NNCF weight compression failed: {first_line(e, 300, with_type=False)}") from None
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
        raise ArtifactError(f"OpenVINO cannot compile {path} for {device.upper()}: {openvino_reason(e)}") from None
    executed = precision_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
    try:
        reading = executed_precision(compiled)
    except Exception as e:  # a report detail: never fail a load over it
        reading = {"int8_mac_fraction": None, "error": first_line(e, with_type=False)}
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
    # named by the IR's ports, in the compiled model's order: compiling can merge an output's tensor with an
    # upstream one (SSDlite's boxes gain "/Gather_36_output_0"), and get_any_name then returns the other name
    shapes = {p.get_any_name(): tuple(d.get_length() if d.is_static else -1 for d in c.get_partial_shape())
              for p, c in zip(ov_model.inputs, compiled.inputs, strict=True)}
    outputs = [p.get_any_name() for p in ov_model.outputs]
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
        # the lean call: preset input tensors, then infer() with no arguments, on the session's own request: an
        # infer request made per call and dropped after the timing corrupted the heap on a batch-dynamic IR
        # (OpenVINO 2026.4: a segfault later in the run, every time; none while the requests were kept)
        feed = x if isinstance(x, dict) else {name: x}
        for n, v in feed.items():
            request.set_tensor(n, ov.Tensor(np.ascontiguousarray(v, dtype=np.float32)))
        return request.infer

    return Session(runtime="openvino", runtime_version=ov.get_version(), precision_executed=executed,
                   input_shape=shape, run=run, lean_call=lean_call, device=device.upper(), threads=threads,
                   info={"requested_precision": precision, "executed_precision": reading,
                         "int8_mac_fraction": reading.get("int8_mac_fraction")},
                   input_shapes=shapes, output_names=outputs, run_all=run_all)


def compile_throughput(path: Path, precision: str = "fp32", threads: int | None = None, streams: int | None = None,
                       batch: int | None = None, device: str = "CPU"):
    """The IR compiled as a server runs it: the THROUGHPUT performance hint (its own number of streams, or
    `streams`), a batch-dynamic IR fixed at `batch` (static shapes compile to faster kernels). Options go to
    this compile_model call only, never to the shared Core. Returns (compiled model, the settings it chose)."""
    import openvino as ov

    if precision not in PRECISION_HINTS:
        raise ConfigError(f"OpenVINO precision {precision!r} unknown; use one of {', '.join(PRECISION_HINTS)}")
    core = openvino_core()
    ov_model = read_ir(path, core)
    if batch:
        shapes = {}
        for port in ov_model.inputs:
            shape = port.get_partial_shape()
            if shape[0].is_static and shape[0].get_length() != batch:
                raise ArtifactError(f"{path} has a static batch of {shape[0].get_length()}, not {batch}: export it "
                                    "with a dynamic batch axis (edgeopt export --dynamic-batch)")
            shapes[port] = ov.PartialShape([batch, *list(shape)[1:]])
        ov_model.reshape(shapes)
    config: dict = {"PERFORMANCE_HINT": "THROUGHPUT"}
    if streams:
        config["NUM_STREAMS"] = int(streams)
    hint = PRECISION_HINTS[precision]
    if hint:
        config["INFERENCE_PRECISION_HINT"] = hint
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    try:
        compiled = core.compile_model(ov_model, device.upper(), config)
    except Exception as e:
        raise ArtifactError(f"OpenVINO cannot compile {path} for {device.upper()}: {openvino_reason(e)}") from None
    settings = {"performance_hint": "THROUGHPUT", "num_streams": int(compiled.get_property("NUM_STREAMS")),
                "infer_requests": int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")),
                "inference_num_threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
                "inference_precision": precision_name(compiled.get_property("INFERENCE_PRECISION_HINT"))}
    return compiled, settings
