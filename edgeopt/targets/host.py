"""What the numbers were measured on: versions, CPU, flags, GPU, threads."""

from __future__ import annotations

import importlib.metadata
import os
import platform

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
