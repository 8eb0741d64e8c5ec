"""Target profiles: YAML files in the top-level `targets/` folder (installed as package data of
`edgeopt.target_profiles`), a custom YAML path, or `local` (detected).

Adding a device is adding a file. Data only: nothing heavy is imported here."""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgeopt.errors import TargetError, one_line
from edgeopt.registry import Registry
from edgeopt.yamlfile import load_mapping


def _profile_dir() -> Path:
    # a source checkout (editable install, worktree, CI clone) reads its own folder; an installed wheel the
    # package data that setuptools maps from it
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "targets").is_dir():
        return checkout / "targets"
    from importlib.resources import files

    return Path(str(files("edgeopt.target_profiles")))


PROFILE_DIR = _profile_dir()


def known_runtimes() -> list[str]:
    """The runtimes of the formats table. Targets sit below formats in the layers, yet a profile naming a
    runtime no row provides must fail where the profile is read (with the field's name), not later in the
    planner. The table is light to import (its rows name their modules), so it is looked up at validation
    time, by name, instead of keeping a second list of runtimes here that would go stale."""
    import importlib

    return importlib.import_module("edgeopt.formats").runtime_names()
KNOWN_PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "int8", "int4", "fp8")


class TargetProfile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    aliases: list[str] = Field(default_factory=list)
    kind: Literal["cpu", "gpu"]
    arch: str  # ISA (x86_64, aarch64) or GPU architecture (ampere, volta, hopper)
    isa_features: list[str] = Field(default_factory=list)  # avx2, avx512_vnni, amx_bf16, neon ...
    runtimes: list[str]  # in order of preference
    precisions: list[str]  # precisions the hardware accelerates
    channel_multiple: int = Field(1, ge=1)
    sparse_support: list[str] = Field(default_factory=list)  # e.g. ["2:4"]
    dla_cores: int = Field(0, ge=0)
    memory_gb: float | None = Field(None, gt=0)
    cores: int | None = Field(None, ge=1)
    clock_ghz: float | None = Field(None, gt=0)  # the clock the peak figures assume (CPU profiles)
    peak_ops: dict[str, float] = Field(default_factory=dict)  # precision -> ops/s (1 MAC = 2 ops)
    memory_bandwidth_gbs: float | None = Field(None, gt=0)
    call_overhead_ms: float = Field(0.0, ge=0)  # fixed cost of one inference call (launch, sync), roofline floor
    call_overhead_estimated: bool = False  # the overhead is assumed, not measured: estimates say so
    tensorrt: str | None = None  # the TensorRT release the device runs (its ONNX parser's supported ops)
    devices: list[str] = Field(default_factory=list)  # GPU device models that are this target (see targets.host)
    detected: bool = False  # true for `local`: built from this machine

    @field_validator("runtimes")
    @classmethod
    def _runtimes_known(cls, v: list[str]) -> list[str]:
        known = known_runtimes()
        bad = [r for r in v if r not in known]
        if bad or not v:
            raise ValueError(f"unknown runtime {bad[0]!r} (known: {', '.join(known)})" if bad
                             else "at least one runtime is needed")
        return v

    @field_validator("precisions")
    @classmethod
    def _precisions_known(cls, v: list[str]) -> list[str]:
        bad = [p for p in v if p not in KNOWN_PRECISIONS]
        if bad:
            raise ValueError(f"unknown precision {bad[0]!r} (known: {', '.join(KNOWN_PRECISIONS)})")
        if "fp32" not in v:
            raise ValueError("fp32 must be listed: it is the reference every candidate is compared with")
        return v

    @field_validator("peak_ops")
    @classmethod
    def _peaks_positive(cls, v: dict[str, float]) -> dict[str, float]:
        for k, x in v.items():
            if k not in KNOWN_PRECISIONS:
                raise ValueError(f"unknown precision {k!r} (known: {', '.join(KNOWN_PRECISIONS)})")
            if not x > 0:
                raise ValueError(f"peak ops/s for {k} must be positive, got {x}")
        if v and "fp32" not in v:
            raise ValueError("peak_ops needs an fp32 entry (the roofline falls back to it)")
        return v


def _parse(data: object, source: str) -> TargetProfile:
    if not isinstance(data, dict):
        raise TargetError(f"target profile {source}: expected a mapping of fields, got {type(data).__name__}")
    try:
        return TargetProfile(**data)
    except ValidationError as e:
        raise one_line(e, f"target profile {source}", TargetProfile, TargetError) from None


def load_profile_file(path: Path) -> TargetProfile:
    return _parse(load_mapping(path, "target profile", TargetError, "a mapping of fields"), str(path))


@lru_cache(maxsize=1)
def builtin_targets() -> Registry[TargetProfile]:
    reg: Registry[TargetProfile] = Registry("target")
    reg.register("local", None, aliases=("host",))  # resolved at call time by detection
    for f in sorted(PROFILE_DIR.glob("*.yaml")):
        prof = load_profile_file(f)
        reg.register(prof.name, prof, aliases=tuple(prof.aliases))
    return reg


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


INTERESTING_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                     "amx_tile", "amx_bf16", "amx_int8", "asimd", "asimddp", "sve", "bf16", "i8mm")


def _clock_ghz() -> float | None:
    """This CPU's clock as the kernel reports it (Linux), None elsewhere."""
    try:
        mhz = [float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
               if line.lower().startswith("cpu mhz")]
    except (OSError, ValueError, IndexError):
        return None
    return max(mhz) / 1000 if mhz else None


def _channel_multiple(flags: set[str], kind: str) -> int:
    """The channel block this machine's kernels work in: a layer whose width leaves a partial block pays for the
    whole block (AVX-512 kernels and GPU tensor cores: 16; AVX2: 8; NEON: 4)."""
    if kind == "gpu" or {"avx512f", "amx_tile"} & flags:
        return 16
    return 4 if "asimd" in flags and "avx2" not in flags else 8


def detect_local() -> TargetProfile:
    """Describe the running machine. Its GPU comes from the device query (targets.host.gpu_device)."""
    flags = cpu_flags()
    feats = [f for f in INTERESTING_FLAGS if f in flags]
    precisions = ["fp32"]
    if {"amx_bf16", "avx512_bf16", "bf16"} & flags:
        precisions.append("bf16")
    if {"avx512_vnni", "amx_int8", "avx_vnni", "asimddp", "i8mm"} & flags:
        precisions.append("int8")
    kind, arch, runtimes = "cpu", platform.machine(), ["openvino", "onnxruntime"]
    from edgeopt.targets.host import gpu_device

    gpu = gpu_device()
    if gpu:  # arch holds the device model, which GPU targets are matched against (targets.host.gpu_matches)
        kind, arch = "gpu", gpu
        runtimes = ["tensorrt", "onnxruntime"]
        precisions = ["fp32", "fp16", "int8"]
    cores = os.cpu_count() or 1
    peaks, bandwidth, overhead, desc = {}, None, 0.0, f"this machine: {cpu_model()}"
    ref = _closest_cpu_profile(set(feats), arch) if kind == "cpu" else None
    if ref is not None and ref.cores:
        # roofline figures: the closest built-in CPU profile, scaled to this machine's core count and clock
        # (an estimate, and labelled so wherever it is used)
        scale = cores / ref.cores
        ghz = _clock_ghz()
        if ghz and ref.clock_ghz:
            scale *= ghz / ref.clock_ghz
        peaks = {p: v * scale for p, v in ref.peak_ops.items() if p in precisions}
        bandwidth = ref.memory_bandwidth_gbs * min(1.0, scale) if ref.memory_bandwidth_gbs else None
        overhead = ref.call_overhead_ms
        desc += (f" (roofline figures scaled from {ref.name} to {cores} cores"
                 + (f" at {ghz:.1f} GHz)" if ghz and ref.clock_ghz else ")"))
    return TargetProfile(
        name="local", description=desc, kind=kind, arch=arch,
        isa_features=feats, runtimes=runtimes, precisions=precisions,
        channel_multiple=_channel_multiple(flags, kind),
        cores=cores, peak_ops=peaks, memory_bandwidth_gbs=bandwidth, call_overhead_ms=overhead, detected=True,
    )


def _closest_cpu_profile(features: set[str], arch: str) -> TargetProfile | None:
    """The built-in CPU profile of this architecture whose ISA features are all present here, with the
    most features (x86-amx on a Sapphire Rapids, x86-avx2 on a Haswell)."""
    best = None
    for name, p in builtin_targets().items():
        if name == "local" or p.kind != "cpu" or p.arch != arch or not set(p.isa_features) <= features:
            continue
        if best is None or len(p.isa_features) > len(best.isa_features):
            best = p
    return best


def load_target(spec: str) -> TargetProfile:
    """A built-in name or alias, `local`, or a path to a YAML profile."""
    if spec.endswith((".yaml", ".yml")) or os.sep in spec:
        return load_profile_file(Path(spec))
    reg = builtin_targets()
    name = reg.canonical(spec)
    return detect_local() if name == "local" else reg.get(name)


def list_targets() -> list[TargetProfile]:
    reg = builtin_targets()
    return [detect_local() if n == "local" else p for n, p in reg.items()]
