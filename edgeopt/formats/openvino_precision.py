"""The precision an OpenVINO model runs at: pinned in a float IR so that a plain `compile_model` runs what was
measured as far as OpenVINO allows, and read back from the compiled model's execution graph (what the plugin
really runs, not what was asked for)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

# the inference-precision hint edgeopt measures each precision with (None: no hint, as a plain compile runs it)
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



def pin_precision(ov_model, precision: str) -> str | None:
    """Record the precision a float IR is measured at in its rt_info (runtime_options/INFERENCE_PRECISION_HINT,
    what `load_openvino` passes as the hint); returns it, or None for int8/int8w and quantization-aware graphs.
    OpenVINO 2026 applies only some runtime_options at compile time, not this one, so for f32 every layer also
    gets the "precise" mark (`mark_layers_precise`). bf16 needs no mark: it is the CPU plugin's own default
    where the CPU has bf16. INT8 IRs are measured without a hint, as a plain compile runs them: their float
    layers run the CPU's default precision in both. The deploy instructions give the explicit config."""
    hint = PRECISION_HINTS.get(precision)
    if not hint or any(op.get_type_name() == "FakeQuantize" for op in ov_model.get_ops()):
        return None
    ov_model.set_rt_info(hint, ["runtime_options", "INFERENCE_PRECISION_HINT"])
    return hint


_UNMARKED = {"Parameter", "Result", "Const"}


def mark_layers_precise(xml: Path) -> None:
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
