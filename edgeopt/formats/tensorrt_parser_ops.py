"""What TensorRT's ONNX parser accepts, checked statically: an ONNX artifact bound for TensorRT (a Jetson or
NVIDIA GPU target, `export --format tensorrt`, a bundle's `trtexec --onnx`, an agent job) is refused here, with
the op's name, before it leaves this machine, instead of failing the engine build on the device.

Source: the operator support matrix of onnx/onnx-tensorrt (the TensorRT ONNX parser), docs/operators.md:
- TensorRT 10: branch 10.1-GA (commit 96e7811, 2024-06-17), whose table is headed "TensorRT 10.0 supports
  operators in the inclusive range of opset 9 to opset 20"; INT8/FP8/INT4 are "quantized types", reached only
  through QuantizeLinear/DequantizeLinear (explicit quantization).
- TensorRT 8.5: branch 8.5-GA (commit fdeeaca, 2023-03-10), "TensorRT 8.5 supports operators up to Opset 17".
The tables list only the ONNX (ai.onnx) domain: ONNX Runtime's com.microsoft ops (QLinearAdd, QGemm, ...) have
no parser importer, and neither do the QOperator ops (QLinearConv, QLinearMatMul, ConvInteger, MatMulInteger,
DynamicQuantizeLinear: all "N"). A TensorRT release newer than a table is checked against the newest table of its
major version: the parser's support only grows within a major release, so that is conservative.

Restrictions checked besides the op list (the ones an edgeopt export can hit): the default-domain opset within the
table's range; QuantizeLinear's `y_zero_point` and DequantizeLinear's `x_zero_point` zero; DequantizeLinear's input
of a quantized type (INT8; FP8/INT4 from TensorRT 10): ONNX Runtime's int32 bias DequantizeLinear and uint8
activations are refused."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeopt.errors import ExportError

_COMMON = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu Clip
Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout
Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor GRU Gather GatherElements GatherND Gemm
GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample HardSigmoid HardSwish Identity
If ImageScaler InstanceNormalization IsNaN LRN LSTM LeakyRelu Less LessOrEqual Log LogSoftmax Loop
LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mod Mul Neg NonMaxSuppression
NonZero Not OneHot Or PRelu Pad ParametricSoftplus Pow QuantizeLinear RNN RandomNormal RandomNormalLike
RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RoiAlign Round
ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax
Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu
Unsqueeze Upsample Where Xor""".split())

# onnx.TensorProto data types: INT8 = 3, FLOAT8E4M3FN = 17, INT4 = 22 (UINT8 = 2 and INT32 = 6 are refused)
_INT8, _FP8, _INT4 = 3, 17, 22
_TYPE_NAMES = {1: "FLOAT", 2: "UINT8", 3: "INT8", 6: "INT32", 7: "INT64", 10: "FLOAT16", 17: "FP8", 22: "INT4"}


@dataclass(frozen=True)
class ParserTable:
    tensorrt: str  # the release the table documents (major.minor)
    source: str  # where it was read
    opset_min: int
    opset_max: int
    ops: frozenset[str]  # ai.onnx op types the parser imports
    dq_types: frozenset[int]  # ONNX data types DequantizeLinear's input may have

    @property
    def key(self) -> tuple[int, int]:
        return _version(self.tensorrt)


TABLES = (
    ParserTable("8.5", "onnx-tensorrt docs/operators.md, branch 8.5-GA (fdeeaca)", 1, 17, _COMMON,
                frozenset({_INT8})),
    ParserTable("10.0", "onnx-tensorrt docs/operators.md, branch 10.1-GA (96e7811)", 9, 20,
                _COMMON | frozenset("CastLike DeformConv Gelu GroupNormalization Hardmax IsInf LayerNormalization "
                                    "Mish".split()), frozenset({_INT8, _FP8, _INT4})),
)
DEFAULT_TENSORRT = "10.0"  # a target that names no TensorRT version: the TensorRT 10 table


def _version(text: str) -> tuple[int, int]:
    parts = [int(p) for p in str(text).split(".")[:2] if p.isdigit()]
    if not parts:
        raise ExportError(f"TensorRT version {text!r} is not a version number like 10.3")
    return (parts + [0])[0], (parts + [0])[1]


def table_for(tensorrt: str | None) -> ParserTable:
    """The table of the newest documented release not newer than `tensorrt` within its major version (a newer
    major: the newest table; an older one: the oldest)."""
    want = _version(tensorrt or DEFAULT_TENSORRT)
    same = [t for t in TABLES if t.key[0] == want[0] and t.key <= want]
    if same:
        return max(same, key=lambda t: t.key)
    older = [t for t in TABLES if t.key <= want]
    return max(older, key=lambda t: t.key) if older else min(TABLES, key=lambda t: t.key)


def _nodes(graph):
    """Every node, the ones of subgraphs (If/Loop/Scan bodies) included."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _nodes(g)


def _constants(model) -> dict:
    """name -> TensorProto of every initializer and Constant node output (subgraphs included)."""
    out = {t.name: t for t in model.graph.initializer}
    for node in _nodes(model.graph):
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value" and attr.HasField("t"):
                    out[node.output[0]] = attr.t
    return out


def problems(model, tensorrt: str | None = None) -> list[str]:
    """What keeps TensorRT's ONNX parser (release `tensorrt`) from importing `model` (an onnx ModelProto), one
    sentence each, unsupported ops first, in graph order; empty when every node and the checked restrictions pass."""
    from onnx import numpy_helper

    table = table_for(tensorrt)
    where = f"TensorRT {tensorrt or table.tensorrt}'s ONNX parser"
    found: list[str] = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and not table.opset_min <= opset <= table.opset_max:
        found.append(f"{where} reads opsets {table.opset_min}..{table.opset_max}; the graph is opset {opset}")
    consts = _constants(model)
    producer = {o: n for n in _nodes(model.graph) for o in n.output}

    def zero(name: str) -> bool | None:
        t = consts.get(name)
        return None if t is None else not numpy_helper.to_array(t).any()

    def quantized_type(name: str) -> int | None:
        if name in consts:
            return consts[name].data_type
        q = producer.get(name)
        if q is not None and q.op_type == "QuantizeLinear" and len(q.input) > 2 and q.input[2] in consts:
            return consts[q.input[2]].data_type
        return None

    for n in _nodes(model.graph):
        op = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
        at = f" (node {n.name})" if n.name else ""
        if n.domain not in ("", "ai.onnx") or n.op_type not in table.ops:
            found.append(f"{where} does not support {op}{at}")
        elif n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            if len(n.input) > 2 and n.input[2] and zero(n.input[2]) is False:
                found.append(f"{where} needs a zero zero-point on {op}{at} (symmetric quantization)")
            kind = (consts[n.input[2]].data_type if n.op_type == "QuantizeLinear" and len(n.input) > 2
                    and n.input[2] in consts else quantized_type(n.input[0]) if n.op_type == "DequantizeLinear"
                    else None)
            if kind is not None and kind not in table.dq_types:
                found.append(f"{where} does not take {_TYPE_NAMES.get(kind, kind)} in {op}{at} (quantized types: "
                             f"{', '.join(_TYPE_NAMES[t] for t in sorted(table.dq_types))})")
    # an op the parser has no importer for is the headline; restrictions on supported ops come after
    return sorted(found, key=lambda f: " does not support " not in f)


def check(path: Path, tensorrt: str | None = None) -> str | None:
    """The first reason TensorRT (release `tensorrt`) cannot parse the ONNX file at `path` (one line, naming the
    op and its node), None when it can."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    found = problems(model, tensorrt)
    if not found:
        return None
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    return found[0] + more


def require_parseable(path: Path, tensorrt: str | None = None) -> None:
    """ExportError (one line) when TensorRT cannot parse the ONNX file at `path`."""
    reason = check(path, tensorrt)
    if reason:
        raise ExportError(reason)
