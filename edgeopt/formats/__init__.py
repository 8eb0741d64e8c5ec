"""The formats/runtimes table: one row per deployable backend (export fn, load fn, precisions, pip extra),
and the one wrapper that exports, times, size-checks and verifies every artifact."""

from __future__ import annotations

import importlib
import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from edgeopt.errors import BackendMissingError, ConfigError, missing_backend
from edgeopt.formats.base import ExportResult, Session
from edgeopt.registry import Registry


def _resolve(ref: str):
    module, _, fn = ref.partition(":")
    return getattr(importlib.import_module(module), fn)


@dataclass(frozen=True)
class Backend:
    format: str  # artifact format name
    runtime: str  # runtime that executes it
    suffix: str
    export_ref: str  # "module:function", imported on use so that --help stays fast
    load_ref: str
    precisions: tuple[str, ...]  # precisions this backend can produce/run
    extra: str  # pip extra that installs it
    module: str  # python module whose presence means "installed"
    device: str = "CPU"

    def installed(self) -> bool:
        if importlib.util.find_spec(self.module) is None:
            return False
        if self.device == "GPU":  # a GPU-only runtime is of no use without a CUDA device
            import torch

            return torch.cuda.is_available()
        return True

    def missing_reason(self) -> str:
        if importlib.util.find_spec(self.module) is None:
            return f"{self.module} not installed (pip install 'edgeopt[{self.extra}]')"
        return f"{self.runtime} needs an NVIDIA GPU with CUDA; none is visible" if not self.installed() else ""

    def require(self) -> None:
        if importlib.util.find_spec(self.module) is None:
            raise missing_backend(self.module, self.extra)
        if not self.installed():
            raise BackendMissingError(self.missing_reason())

    def export(self, model: nn.Module, example: torch.Tensor, out: Path, precision: str = "fp32",
               calib=None, options: dict | None = None) -> ExportResult:
        self.require()
        return _resolve(self.export_ref)(model, example, out, precision=precision, calib=calib, options=options)

    def load(self, path: Path, precision: str = "fp32", threads: int | None = None) -> Session:
        self.require()
        return _resolve(self.load_ref)(path, precision=precision, threads=threads, device=self.device)


BACKENDS: Registry[Backend] = Registry("format")
BACKENDS.register("onnx", Backend(
    format="onnx", runtime="onnxruntime", suffix=".onnx",
    export_ref="edgeopt.formats.onnx:export_onnx", load_ref="edgeopt.formats.onnx:load_onnxruntime",
    precisions=("fp32", "fp16", "int8", "int8w"), extra="dev", module="onnxruntime"), aliases=("onnxruntime", "ort"))
BACKENDS.register("openvino", Backend(
    format="openvino", runtime="openvino", suffix=".xml",
    export_ref="edgeopt.formats.openvino:export_openvino",
    load_ref="edgeopt.formats.openvino:load_openvino",
    precisions=("fp32", "bf16", "fp16", "int8", "int8w"), extra="openvino", module="openvino"),
    aliases=("ov", "ir"))
# TensorRT engines are built on (and only run on) an NVIDIA GPU; `installed()` also asks for a CUDA device.
BACKENDS.register("tensorrt", Backend(
    format="tensorrt", runtime="tensorrt", suffix=".engine",
    export_ref="edgeopt.formats.tensorrt:export_tensorrt", load_ref="edgeopt.formats.tensorrt:load_tensorrt",
    precisions=("fp32", "fp16", "int8"), extra="tensorrt", module="tensorrt", device="GPU"), aliases=("trt",))


def backend_for(name: str) -> Backend:
    """By format name or runtime name, with did-you-mean."""
    return BACKENDS.get(name)


def backend_for_artifact(path: Path) -> Backend:
    suffix = Path(path).suffix.lower()
    for _, b in BACKENDS.items():
        if b.suffix == suffix:
            return b
    raise ConfigError(f"cannot tell the runtime of {path} from its suffix {suffix!r}; pass --runtime")


def installed_runtimes() -> list[str]:
    return [b.runtime for _, b in BACKENDS.items() if b.installed()]


def has_fake_quant(model: nn.Module) -> bool:
    from torch.ao.quantization import FakeQuantizeBase

    return any(isinstance(m, FakeQuantizeBase) for m in model.modules())


def export_verified(model: nn.Module, example: torch.Tensor, format: str, out: Path,
                    precision: str = "fp32", calib=None, options: dict | None = None,
                    threads: int | None = None, verify: bool = True) -> tuple[ExportResult, Session]:
    """Export, load on the runtime, and compare its outputs with PyTorch's (VerificationError on mismatch)."""
    from edgeopt.formats.verify import verify_session

    backend = backend_for(format)
    if precision not in backend.precisions:
        raise ConfigError(f"{backend.format} does not support precision {precision!r} "
                          f"(supported: {', '.join(backend.precisions)})")
    # a quantization-aware-trained model carries its own fake-quantizers: exported as is, they become the
    # INT8 Q/DQ (ONNX) or FakeQuantize (OpenVINO) graph; calibrating again would discard what QAT learned
    prequantized = precision == "int8" and has_fake_quant(model)
    t0 = time.perf_counter()
    if prequantized and backend.format == "tensorrt":  # TensorRT needs its INT8 flag for Q/DQ networks
        options = {**(options or {}), "prequantized": True}
    result = backend.export(model, example, Path(out).with_suffix(backend.suffix),
                            precision="fp32" if prequantized and backend.format != "tensorrt" else precision,
                            calib=None if prequantized else calib, options=options)
    if prequantized:
        result.info["quantization"] = "quantization-aware training (fake-quant exported as INT8)"
        calib = None
    result.info["export_seconds"] = round(time.perf_counter() - t0, 3)
    session = backend.load(result.path, precision=precision, threads=threads)
    if verify:
        inputs = labels = None
        if precision == "int8" and calib is not None and not isinstance(calib, str):
            from edgeopt.formats.calibration import holdout

            inputs, labels, overlap = holdout(calib, example)
            result.info["verification_data"] = "calibration data" + (
                " (overlaps the calibration samples: too few for a held-out split)" if overlap else ", held out")
        result.info["verification"] = verify_session(session, model, example, precision, inputs=inputs or None,
                                                     labels=labels)
    return result, session
