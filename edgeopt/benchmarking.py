"""Benchmark one artifact on a runtime (the `edgeopt benchmark` command and `edgeopt.benchmark`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgeopt.backends import backend_for, backend_for_artifact
from edgeopt.bench import BenchConfig, measure
from edgeopt.errors import ArtifactError, InputShapeError
from edgeopt.report import BenchmarkResult


def benchmark_artifact(path: Path, runtime: str | None = None, precision: str = "fp32",
                       threads: int | None = None, input_shape: tuple[int, ...] | None = None,
                       config: BenchConfig | None = None) -> BenchmarkResult:
    if not path.is_file():
        raise ArtifactError(f"artifact {path} does not exist")
    backend = backend_for(runtime) if runtime else backend_for_artifact(path)
    threads = threads or os.cpu_count()
    session = backend.load(path, precision=precision, threads=threads)
    shape = tuple(input_shape) if input_shape else tuple(d if d > 0 else 1 for d in session.input_shape)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    try:
        session.run(x)  # shape check and first-run cost, outside the timed loop
    except InputShapeError:
        raise
    except Exception as e:
        raise InputShapeError(f"{path} does not run on input shape {shape}: {str(e).splitlines()[0][:200]}"
                              ) from None
    stats = measure({"m": session.lean_call(x)}, config)["m"]
    return BenchmarkResult(artifact=str(path), runtime=session.runtime, runtime_version=session.runtime_version,
                           precision=precision, precision_executed=session.precision_executed,
                           device=session.device, threads=threads, input_shape=list(shape), latency=stats)
