"""What the numbers were measured on (versions, CPU, flags, GPU, threads), and the device query that tells
whether this machine's GPU is a GPU target (so that target is measured here, not estimated)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path

from edgeopt.targets import INTERESTING_FLAGS, cpu_flags, cpu_model


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(threads: int | None = None) -> dict:
    import torch

    gpu = None
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
    flags = cpu_flags()
    versions = {d: _version(d) for d in ("torch", "torchvision", "torch-pruning", "onnx", "onnxruntime",
                                         "openvino", "nncf", "tensorrt", "tensorly")}
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        **{k: v for k, v in versions.items() if v},
        "cpu": cpu_model(),
        "cpu_flags": [f for f in INTERESTING_FLAGS if f in flags],
        "cpu_count": os.cpu_count(),
        "gpu": gpu,
        "threads": threads or torch.get_num_threads(),
    }


def _board_model() -> str | None:
    """The board's model from the device tree (a Jetson names itself there), None elsewhere."""
    for p in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
        try:
            return Path(p).read_text().strip("\x00\n ")
        except OSError:
            continue
    return None


def gpu_device() -> str | None:
    """The device query: this machine's NVIDIA GPU as a device model (a Jetson's board model, e.g. "NVIDIA Jetson
    Orin Nano Developer Kit", else the CUDA device's name, e.g. "NVIDIA A10"), or None. A GPU counts only when
    torch can use it through CUDA: TensorRT sessions and their timing run on torch's CUDA buffers and streams.
    Tests replace this function to stand for a GPU host."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        name = torch.cuda.get_device_name(0)
    except Exception:  # torch missing or a broken CUDA install: no GPU to measure on
        return None
    board = _board_model()
    return board if board and "jetson" in board.lower() else name


ANY_DISCRETE = "any-discrete"  # a `devices` entry: every NVIDIA GPU that is not a Jetson module


def gpu_matches(target, device: str | None) -> bool:
    """Whether a GPU target profile is the GPU `device` (as `gpu_device` names it): one of the profile's
    `devices` is part of the name (case-insensitive), or the profile takes any discrete GPU and this is one."""
    if target.kind != "gpu" or not device:
        return False
    name = device.lower()
    if any(d.lower() in name for d in target.devices if d != ANY_DISCRETE):
        return True
    return ANY_DISCRETE in target.devices and "jetson" not in name
