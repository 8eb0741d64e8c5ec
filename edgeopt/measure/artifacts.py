"""Benchmark artifacts on their runtimes (the `edgeopt benchmark` command and `edgeopt.benchmark`).

Several artifacts are measured in one interleaved run (`edgeopt.measure.timing.measure`), so that an A/B
comparison on a shared machine is not decided by whichever ran during a quiet minute."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgeopt.errors import ArtifactError, ConfigError, InputShapeError
from edgeopt.formats import BACKENDS, backend_for, backend_for_artifact
from edgeopt.formats.base import Session
from edgeopt.measure.timing import BenchConfig, measure
from edgeopt.report import BenchmarkResult


def device_description(session: Session) -> str:
    """The GPU name, or the CPU model with the ISA flags that decide which kernels run."""
    gpu_row = session.runtime in BACKENDS and backend_for(session.runtime).device == "GPU"
    gpu_provider = session.device.endswith("ExecutionProvider") and session.device != "CPUExecutionProvider"
    if gpu_row or gpu_provider:  # ONNX Runtime on its CUDA or TensorRT execution provider
        return session.device
    from edgeopt.targets import INTERESTING_FLAGS, cpu_flags, cpu_model

    flags = cpu_flags()
    return f"CPU {cpu_model()} [{' '.join(f for f in INTERESTING_FLAGS if f in flags)}] via {session.device}"


def _shape(session: Session, input_shape: tuple[int, ...] | None, batch_size: int | None) -> tuple[int, ...]:
    shape = tuple(input_shape) if input_shape else tuple(d if d > 0 else 1 for d in session.input_shape)
    if batch_size is not None:
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
        shape = (batch_size, *shape[1:])
    return shape


def _prepare(path: Path, runtime: str | None, precision: str, threads: int, input_shape, batch_size):
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"artifact {path} does not exist")
    backend = backend_for(runtime) if runtime else backend_for_artifact(path)
    session = backend.load(path, precision=precision, threads=threads)
    shape = _shape(session, input_shape, batch_size)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    try:
        session.run(x)  # shape check and first-run cost, outside the timed loop
    except InputShapeError:
        raise
    except Exception as e:
        raise InputShapeError(f"{path} does not run on input shape {shape}: {str(e).splitlines()[0][:200]}"
                              ) from None
    return session, x, shape


def benchmark_many(paths: list[Path], runtime: str | None = None, precision: str = "fp32",
                   threads: int | None = None, input_shape: tuple[int, ...] | None = None,
                   batch_size: int | None = None, config: BenchConfig | None = None) -> list[BenchmarkResult]:
    """Measure several artifacts interleaved, run by run; one result per artifact, in order."""
    threads = threads or os.cpu_count()
    prepared = [_prepare(p, runtime, precision, threads, input_shape, batch_size) for p in paths]
    keys = [f"{i}:{p}" for i, p in enumerate(paths)]
    stats = measure({k: s.lean_call(x) for k, (s, x, _) in zip(keys, prepared, strict=True)}, config)
    return [BenchmarkResult(artifact=str(p), runtime=s.runtime, runtime_version=s.runtime_version,
                            precision=precision, precision_executed=s.precision_executed,
                            device=device_description(s), threads=threads, input_shape=list(shape),
                            latency=stats[k])
            for k, p, (s, _, shape) in zip(keys, paths, prepared, strict=True)]


def benchmark_artifact(path: Path, runtime: str | None = None, precision: str = "fp32",
                       threads: int | None = None, input_shape: tuple[int, ...] | None = None,
                       config: BenchConfig | None = None, batch_size: int | None = None) -> BenchmarkResult:
    return benchmark_many([Path(path)], runtime, precision, threads, input_shape, batch_size, config)[0]


def per_layer(path: Path, runtime: str | None = None, precision: str = "fp32", threads: int | None = None,
              input_shape: tuple[int, ...] | None = None, batch_size: int | None = None, runs: int = 20):
    """Per-layer times (slowest first) of one artifact; see edgeopt.measure.layers."""
    from edgeopt.measure.layers import profile_layers

    threads = threads or os.cpu_count()
    session, x, _ = _prepare(Path(path), runtime, precision, threads, input_shape, batch_size)
    return profile_layers(Path(path), session.runtime, x, runs=runs, threads=threads, precision=precision)
