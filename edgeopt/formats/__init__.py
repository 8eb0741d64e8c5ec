"""The formats table: one row per deployable format, and everything else derived from the rows.

A row says how to export the format, how to load it on its runtime, which precisions it produces, which
files an artifact consists of, how its executed precision is read, its per-layer profiler, what a device
bundle runs, and what the remote agent accepts for it. The planner, target validation, benchmarking,
per-layer profiling, the agent and bundles read these rows: adding a format is adding a row (and the
module its references point at). Nothing heavy is imported here, so the decision layer may read the rows."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgeopt.errors import (
    ArtifactError,
    BackendMissingError,
    ConfigError,
    ExportError,
    VerificationError,
    missing_backend,
)
from edgeopt.registry import Registry, resolve

if TYPE_CHECKING:
    import torch
    from torch import nn

    from edgeopt.formats.base import ExportResult, Session


@dataclass(frozen=True)
class Backend:
    format: str  # artifact format name
    runtime: str  # runtime that executes it
    suffix: str  # the main file's suffix; it also tells an artifact's format
    export_ref: str  # "module:function" (model, example, out, precision, calib, options) -> ExportResult
    load_ref: str  # "module:function" (path, precision, threads, device) -> Session
    precisions: tuple[str, ...]  # precisions this backend can produce/run
    extra: str  # pip extra that installs it
    module: str  # python module whose presence means "installed"
    device: str = "CPU"
    # the per-layer latency table (channel allocation under a latency budget) can be measured on this runtime
    layer_timing: bool = False
    companions: tuple[str, ...] = ()  # suffixes of the other files of an artifact, written before the main one
    dists: tuple[str, ...] = ()  # distributions whose versions a device environment reports
    # fn(session, path) -> str, applied after loading; None: the loader reads it from the runtime itself
    executed_ref: str | None = None
    profile_ref: str | None = None  # per-layer profiler fn(path, x, runs, threads, precision) -> [LayerTime]
    commands_ref: str = "edgeopt.formats.device_shell:generic"  # bundle fn(target, file, precision, ...) -> dict
    device_inputs: tuple[str, ...] = ()  # formats the agent accepts for this runtime (default: its own)
    # fn(path, precision, threads) -> Session for a device input of another format (TensorRT builds its
    # engine from the uploaded ONNX on the device)
    device_load_ref: str | None = None

    @property
    def files(self) -> tuple[str, ...]:
        """Suffixes of every file of an artifact, companions first."""
        return (*self.companions, self.suffix)

    def artifact_files(self, path: Path) -> list[Path]:
        path = Path(path)
        return [path.with_suffix(s) for s in self.companions] + [path]

    @property
    def accepts(self) -> tuple[str, ...]:
        return self.device_inputs or (self.format,)

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
        return resolve(self.export_ref)(model, example, out, precision=precision, calib=calib, options=options)

    def load(self, path: Path, precision: str = "fp32", threads: int | None = None) -> Session:
        """The load preamble every runtime shares (installed, file present, precision known), then its loader."""
        self.require()
        path = _existing(path)
        if precision not in self.precisions:
            raise ConfigError(f"{self.runtime} does not run precision {precision!r} "
                              f"(supported: {', '.join(self.precisions)})")
        session = resolve(self.load_ref)(path, precision=precision, threads=threads, device=self.device)
        if self.executed_ref:
            session.precision_executed = resolve(self.executed_ref)(session, path)
        return session

    def load_on_device(self, path: Path, fmt: str, precision: str = "fp32", threads: int | None = None) -> Session:
        """What the agent runs: its own format through `load`, another accepted format through
        `device_load_ref` (which decides itself what it needs, e.g. a GPU or a fallback runtime)."""
        if fmt not in self.accepts and fmt != self.format:
            raise ConfigError(f"{self.runtime} does not run {fmt} artifacts on the device")
        if fmt == self.format or self.device_load_ref is None:
            return self.load(path, precision=precision, threads=threads)
        return resolve(self.device_load_ref)(_existing(path), precision=precision, threads=threads)

    def profile(self, path: Path, x, runs: int, threads: int | None, precision: str) -> list:
        if self.profile_ref is None:
            have = [b.runtime for _, b in BACKENDS.items() if b.profile_ref]
            raise ConfigError(f"--per-layer is available for {', '.join(have)}, not {self.runtime}")
        self.require()
        return resolve(self.profile_ref)(Path(path), x, runs, threads, precision)

    def commands(self, target, model_file: str, precision: str, onnx_input=None, sparse_2_4: bool = False) -> dict:
        """{"build": [...], "run": [...]} shell lines that build and measure the artifact on the device."""
        return resolve(self.commands_ref)(target, model_file, precision, onnx_input=onnx_input,
                                          sparse_2_4=sparse_2_4)


def _existing(path: Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"artifact {path} does not exist")
    return path


BACKENDS: Registry[Backend] = Registry("format")
BACKENDS.register("onnx", Backend(
    format="onnx", runtime="onnxruntime", suffix=".onnx",
    export_ref="edgeopt.formats.onnx:export_onnx", load_ref="edgeopt.formats.onnx:load_onnxruntime",
    precisions=("fp32", "fp16", "int8", "int8w"), extra="dev", module="onnxruntime",
    dists=("onnxruntime", "onnxruntime-gpu"), layer_timing=True,
    profile_ref="edgeopt.measure.layers:profile_onnxruntime", commands_ref="edgeopt.formats.device_shell:onnxruntime"),
    aliases=("onnxruntime", "ort"))
BACKENDS.register("openvino", Backend(
    format="openvino", runtime="openvino", suffix=".xml", companions=(".bin",),
    export_ref="edgeopt.formats.openvino:export_openvino", load_ref="edgeopt.formats.openvino:load_openvino",
    precisions=("fp32", "bf16", "fp16", "int8", "int8w"), extra="openvino", module="openvino", dists=("openvino",),
    layer_timing=True,
    profile_ref="edgeopt.measure.layers:profile_openvino", commands_ref="edgeopt.formats.device_shell:openvino",
    device_inputs=("openvino", "onnx")),  # OpenVINO reads ONNX directly
    aliases=("ov", "ir"))
# TensorRT engines are built on (and only run on) an NVIDIA GPU; `installed()` also asks for a CUDA device.
# The agent builds the engine on the device from an uploaded ONNX; an uploaded engine is opt-in (see remote).
BACKENDS.register("tensorrt", Backend(
    format="tensorrt", runtime="tensorrt", suffix=".engine", companions=(".engine.json",),
    export_ref="edgeopt.formats.tensorrt:export_tensorrt", load_ref="edgeopt.formats.tensorrt:load_tensorrt",
    precisions=("fp32", "fp16", "int8"), extra="tensorrt", module="tensorrt", device="GPU", dists=("tensorrt",),
    commands_ref="edgeopt.formats.device_shell:tensorrt", device_inputs=("onnx",),
    device_load_ref="edgeopt.formats.tensorrt:load_from_onnx"), aliases=("trt",))


def backend_for(name: str) -> Backend:
    """By format name or runtime name, with did-you-mean."""
    return BACKENDS.get(name)


def backend_for_artifact(path: Path) -> Backend:
    name = Path(path).name.lower()
    for _, b in BACKENDS.items():
        if name.endswith(b.suffix):
            return b
    raise ConfigError(f"cannot tell the runtime of {path} from its suffix {Path(path).suffix.lower()!r}; "
                      "pass --runtime")


def rows() -> list[Backend]:
    return [b for _, b in BACKENDS.items()]


def runtime_names() -> list[str]:
    return [b.runtime for b in rows()]


def layer_timing_runtimes() -> tuple[str, ...]:
    """Runtimes the per-layer latency table can be measured on, in the table's order."""
    return tuple(b.runtime for b in rows() if b.layer_timing)


def installed_runtimes() -> list[str]:
    return [b.runtime for b in rows() if b.installed()]


class _LiveView(Mapping):
    """A read-only dict computed from the rows on every access, so a row registered later is seen."""

    def __init__(self, build: Callable[[], dict]):
        self._build = build

    def __getitem__(self, key):
        return self._build()[key]

    def __iter__(self) -> Iterator:
        return iter(self._build())

    def __len__(self) -> int:
        return len(self._build())


def format_of_runtime() -> Mapping[str, str]:
    """runtime name -> format name, live."""
    return _LiveView(lambda: {b.runtime: b.format for b in rows()})


def precisions_of_format() -> Mapping[str, tuple[str, ...]]:
    """format name -> precisions, live."""
    return _LiveView(lambda: {b.format: b.precisions for b in rows()})


def device_backend(fmt: str, candidate_runtime: str | None = None,
                   target_runtimes: list[str] | None = None) -> Backend:
    """The row that runs an artifact of format `fmt` on a device. A target whose preferred runtime builds
    its own artifact there from this format (TensorRT from ONNX) gets it; else the candidate's runtime;
    else the first of the target's runtimes that accepts the format; else the format's own runtime."""
    prefs = [backend_for(r) for r in target_runtimes or [] if r in BACKENDS]
    if prefs and prefs[0].format != fmt and fmt in prefs[0].accepts and prefs[0].device_load_ref:
        return prefs[0]
    if candidate_runtime:
        return backend_for(candidate_runtime)
    return next((b for b in prefs if fmt in b.accepts), backend_for(fmt))


def device_commands(target, model_file: str, precision: str, runtime: str | None = None,
                    onnx_input=None, sparse_2_4: bool = False, artifact: Path | None = None) -> dict[str, list[str]]:
    """Shell lines that build and measure `model_file` on `target` (the bundle's commands.sh). `artifact`: the
    file itself; an ONNX file TensorRT builds on the device is checked against TensorRT's parser table first
    (ExportError naming the op it cannot parse)."""
    fmt = backend_for_artifact(Path(model_file)).format
    row = device_backend(fmt, runtime, list(target.runtimes))
    if artifact is not None and row.format == "tensorrt" and fmt == "onnx":
        from edgeopt.formats.tensorrt_parser_ops import require_parseable

        require_parseable(Path(artifact), getattr(target, "tensorrt", None))
    return row.commands(target, model_file, precision, onnx_input=onnx_input, sparse_2_4=sparse_2_4)


def device_problem(path: Path, runtime: str, tensorrt: str | None = None) -> str | None:
    """Why the device's `runtime` could not take the artifact at `path`, known before it is sent: TensorRT
    (release `tensorrt`) building its engine from an ONNX file its parser cannot read (the op named); None when
    nothing is known against it."""
    if backend_for(runtime).format != "tensorrt" or backend_for_artifact(Path(path)).format != "onnx":
        return None
    from edgeopt.formats.tensorrt_parser_ops import check

    return check(Path(path), tensorrt)


def target_export_options(target) -> dict:
    """Export options a target asks of every candidate: a target whose artifacts TensorRT builds (Jetson, NVIDIA
    GPU) gets its TensorRT version, which makes INT8 ONNX explicit Q/DQ and checks every ONNX artifact against
    TensorRT's parser table (see `export_verified`)."""
    if "tensorrt" not in getattr(target, "runtimes", []):
        return {}
    from edgeopt.formats.tensorrt_parser_ops import DEFAULT_TENSORRT

    return {"tensorrt": getattr(target, "tensorrt", None) or DEFAULT_TENSORRT}


def has_fake_quant(model: nn.Module) -> bool:
    from torch.ao.quantization import FakeQuantizeBase

    return any(isinstance(m, FakeQuantizeBase) for m in model.modules())


def export_verified(model: nn.Module, example: torch.Tensor, format: str, out: Path,
                    precision: str = "fp32", calib=None, options: dict | None = None,
                    threads: int | None = None, verify: bool = True,
                    verify_inputs: list | None = None) -> tuple[ExportResult, Session]:
    """Export, load on the runtime, and compare its outputs with PyTorch's (VerificationError on mismatch).
    options["tensorrt"] (a TensorRT version, from `target_export_options`): the ONNX goes to TensorRT, so INT8 is
    explicit Q/DQ (`qdq-tensorrt`) and an artifact TensorRT's parser cannot read is an ExportError naming the op.
    options["source"] (formats/onnx_source.py): the structure's fp32 ONNX graph, exported once and shared by
    every artifact made from it. `verify_inputs`: the batches to verify on (default: fresh inputs, or for INT8
    the calibration data's held-out samples). An OpenVINO IR converted from the ONNX graph whose float outputs
    differ from PyTorch's is converted again from the PyTorch model, and the result says so.
    result.info["seconds"]: the parts of this call that are not the conversion itself (the graph export shared
    with the structure's other artifacts, INT8 quantization, verification)."""
    backend = backend_for(format)
    for_tensorrt = backend.format == "onnx" and bool((options or {}).get("tensorrt"))
    if for_tensorrt and precision == "int8" and (options or {}).get("quant_mode", "auto") == "auto":
        options = {**(options or {}), "quant_mode": "qdq-tensorrt"}
    if precision not in backend.precisions:
        raise ConfigError(f"{backend.format} does not support precision {precision!r} "
                          f"(supported: {', '.join(backend.precisions)})")
    # a quantization-aware-trained model carries its own fake-quantizers: exported as is, they become the
    # INT8 Q/DQ (ONNX) or FakeQuantize (OpenVINO) graph; calibrating again would discard what QAT learned
    prequantized = precision == "int8" and has_fake_quant(model)
    if prequantized and backend.format == "tensorrt":  # TensorRT needs its INT8 flag for Q/DQ networks
        options = {**(options or {}), "prequantized": True}
    source = (options or {}).get("source")
    source = source if getattr(source, "model", None) is model else None
    if backend.format == "openvino" and (prequantized or getattr(source, "openvino_route", "onnx") == "torch"):
        # OpenVINO's own tracer keeps QAT's fake-quantizers as they were trained; and an IR converted from this
        # structure's ONNX graph differed from PyTorch before
        options = {**(options or {}), "route": "torch"}

    def export(opts):
        t0 = time.perf_counter()
        result = backend.export(model, example, Path(out).with_suffix(backend.suffix),
                                precision="fp32" if prequantized and backend.format != "tensorrt" else precision,
                                calib=None if prequantized else calib, options=opts)
        result.info["export_seconds"] = round(time.perf_counter() - t0, 3)
        return result, backend.load(result.path, precision=precision, threads=threads)

    result, session = export(options)
    if prequantized:
        result.info["quantization"] = "quantization-aware training (fake-quant exported as INT8)"
        calib = None
    if for_tensorrt:
        from edgeopt.formats.tensorrt_parser_ops import require_parseable

        try:
            require_parseable(result.path, options["tensorrt"])
        except ExportError:
            for f in backend.artifact_files(result.path):  # never left behind as if it were deployable
                f.unlink(missing_ok=True)
            raise
        result.info["tensorrt_parser_check"] = f"passed (TensorRT {options['tensorrt']} ONNX parser table)"
    verify_s = 0.0
    if verify:
        inputs, labels = verify_inputs, None
        if inputs is None and precision == "int8" and calib is not None and not isinstance(calib, str):
            from edgeopt.formats.calibration import Calibration, holdout

            if isinstance(calib, Calibration):  # resolved already: its batches are all there is
                inputs, overlap = list(calib.inputs), True
            else:
                inputs, labels, overlap = holdout(calib, example)
            result.info["verification_data"] = "calibration data" + (
                " (overlaps the calibration samples: too few for a held-out split)" if overlap else ", held out")
        t0 = time.perf_counter()
        try:
            result.info["verification"] = _verify(session, model, example, precision, inputs, labels, source)
        except VerificationError as e:
            if result.info.get("route") != "onnx" or precision in ("int8", "int8w"):
                raise  # quantized outputs differ for reasons of their own: converting again would not help
            # the graph through ONNX is not the model: the torch route, for this and the structure's later IRs
            if source is not None:
                source.openvino_route = "torch"
            verify_s += time.perf_counter() - t0
            first, why = result, str(e)
            result, session = export({**(options or {}), "route": "torch"})
            result.info["export_seconds"] += first.info["export_seconds"]
            result.info["onnx_route_differed"] = why
            t0 = time.perf_counter()
            result.info["verification"] = _verify(session, model, example, precision, inputs, labels, source)
        verify_s += time.perf_counter() - t0
    result.info["seconds"] = {k: v for k, v in (
        ("onnx graph export", result.info.get("graph_export_seconds", 0.0)),
        ("quantize", result.info.get("quantize_seconds", 0.0)), ("verify", round(verify_s, 3))) if v}
    return result, session


def _verify(session, model, example, precision, inputs, labels, source=None) -> dict:
    from edgeopt.formats.verify import verify_session

    return verify_session(session, model, example, precision, inputs=inputs or None, labels=labels,
                          references=source.references if source is not None else None)


def artifact_files(path: Path) -> list[Path]:
    """Every file of the artifact at `path` (companions first: an .xml never points at a missing .bin)."""
    return backend_for_artifact(path).artifact_files(path)
