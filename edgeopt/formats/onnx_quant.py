"""ONNX precision conversions on an fp32 .onnx file: fp16, static INT8 (QDQ or QOperator, signed or unsigned
activations, per-channel weights) and dynamic INT8, all through ONNX Runtime's own tools.

Which static INT8 flavour is fastest depends on the CPU's kernels (measured on one Xeon: QDQ ran 3x slower than fp32
on the AMX machine), so the variants stay selectable and `benchmarks/runtimes_table.py` measures them;
DEFAULT_STATIC is the one measured fastest on this project's machines (see README, "Export and quantize")."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeopt.errors import ConfigError, ExportError

# mode -> (quant format, activation type); weights are always signed int8, per channel
STATIC_MODES = {
    "qdq-s8": ("QDQ", "QInt8"),
    "qdq-u8": ("QDQ", "QUInt8"),
    "qoperator-u8": ("QOperator", "QUInt8"),
    "qoperator-s8": ("QOperator", "QInt8"),
}
QUANT_MODES = (*STATIC_MODES, "dynamic", "auto")
DEFAULT_STATIC = "qoperator-u8"


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over a list of input arrays."""

    def __init__(self, name: str, arrays: list[np.ndarray]):
        self._it = iter([{name: a} for a in arrays])

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # pragma: no cover - only used by some calibrators
        pass


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def _has_conv(path: Path) -> bool:
    import onnx

    return any(n.op_type in ("Conv", "ConvTranspose") for n in onnx.load(str(path), load_external_data=False)
               .graph.node)


def pick_mode(src: Path, mode: str) -> str:
    """`auto`: static (DEFAULT_STATIC) for conv nets; dynamic for Linear-only graphs (transformer/MLP heads),
    whose activations vary too much per input for fixed scales and which need no calibration data."""
    if mode not in QUANT_MODES:
        raise ConfigError(f"unknown ONNX int8 mode {mode!r}; use one of {', '.join(QUANT_MODES)}")
    if mode != "auto":
        return mode
    return DEFAULT_STATIC if _has_conv(src) else "dynamic"


def quantize_int8(src: Path, dst: Path, mode: str, calib_inputs: list[np.ndarray] | None) -> dict:
    """Write the INT8 model to dst (caller renames it into place). Returns what was done."""
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
        import onnx

        name = onnx.load(str(prep), load_external_data=False).graph.input[0].name
        quantize_static(str(prep), str(dst), _Reader(name, calib_inputs), quant_format=getattr(QuantFormat, fmt),
                        per_channel=True, activation_type=getattr(QuantType, act), weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": act == "QInt8"})
        return {"quant_mode": mode, "format": fmt, "weights": "int8 per-channel",
                "activations": "s8" if act == "QInt8" else "u8", "calibration_method": "minmax"}
    except (ExportError, ConfigError):
        raise
    except Exception as e:
        raise ExportError(f"ONNX Runtime INT8 quantization ({mode}) failed: {_first_line(e)}") from None
    finally:
        prep.unlink(missing_ok=True)


def convert_fp16(src: Path, dst: Path) -> dict:
    """fp16 weights and compute with fp32 inputs/outputs (keep_io_types), so callers feed the same arrays."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    try:
        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True,
                                         op_block_list=["Resize", "Range", "TopK"])  # need fp32 on CPU EP
        onnx.save(model, str(dst))
    except Exception as e:
        raise ExportError(f"ONNX fp16 conversion failed: {_first_line(e)}") from None
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
