"""Target profiles: YAML files in this folder (package data), a custom YAML path, or `local` (detected).

Adding a device is adding a file. Data only: nothing heavy is imported here."""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeopt.errors import TargetError
from edgeopt.registry import Registry

PROFILE_DIR = Path(__file__).parent


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
    peak_ops: dict[str, float] = Field(default_factory=dict)  # precision -> ops/s (1 MAC = 2 ops)
    memory_bandwidth_gbs: float | None = Field(None, gt=0)
    detected: bool = False  # true for `local`: built from this machine


def _parse(data: object, source: str) -> TargetProfile:
    if not isinstance(data, dict):
        raise TargetError(f"target profile {source}: expected a mapping of fields, got {type(data).__name__}")
    try:
        return TargetProfile(**data)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "?"
        raise TargetError(f"target profile {source}: field '{field}': {err['msg']}") from None


def load_profile_file(path: Path) -> TargetProfile:
    path = Path(path)
    if not path.is_file():
        raise TargetError(f"target profile {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise TargetError(f"target profile {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    return _parse(data, str(path))


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


def detect_local() -> TargetProfile:
    """Describe the running machine. CUDA is checked through torch only if torch is already importable."""
    flags = cpu_flags()
    feats = [f for f in INTERESTING_FLAGS if f in flags]
    precisions = ["fp32"]
    if {"amx_bf16", "avx512_bf16", "bf16"} & flags:
        precisions.append("bf16")
    if {"avx512_vnni", "amx_int8", "avx_vnni", "asimddp", "i8mm"} & flags:
        precisions.append("int8")
    kind, arch, runtimes = "cpu", platform.machine(), ["openvino", "onnxruntime"]
    try:
        import torch

        if torch.cuda.is_available():
            kind, arch = "gpu", torch.cuda.get_device_name(0)
            runtimes = ["tensorrt", "onnxruntime"]
            precisions = ["fp32", "fp16", "int8"]
    except Exception:  # torch missing or broken CUDA: a CPU profile is still right
        pass
    return TargetProfile(
        name="local", description=f"this machine: {cpu_model()}", kind=kind, arch=arch,
        isa_features=feats, runtimes=runtimes, precisions=precisions,
        channel_multiple=16 if ("amx_tile" in flags or kind == "gpu") else 8,
        cores=os.cpu_count(), detected=True,
    )


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
