"""Benchmark artifacts on their runtimes (the `edgeopt benchmark` command and `edgeopt.benchmark`).

Several artifacts are measured in one interleaved run (`edgeopt.measure.timing.measure`), so that an A/B
comparison on a shared machine is not decided by whichever ran during a quiet minute."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgeopt.errors import ArtifactError, ConfigError, InputShapeError, first_line
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


def _shapes(session: Session, input_shape, batch_size: int | None) -> dict[str, tuple[int, ...]]:
    """Every input's shape: the artifact's (dynamic axes at 1), or the ones asked for (a tuple for the
    only input, name -> shape for several), with the batch axis set to --batch-size when given."""
    own = session.input_shapes or {"input": tuple(session.input_shape)}
    shapes = {n: tuple(d if d > 0 else 1 for d in s) for n, s in own.items()}
    if isinstance(input_shape, dict):
        unknown = [n for n in input_shape if n not in shapes]
        if unknown:
            raise InputShapeError(f"the artifact has no input {unknown[0]!r} (inputs: {', '.join(shapes)})")
        shapes.update({n: tuple(s) for n, s in input_shape.items()})
    elif input_shape:
        if len(shapes) > 1:
            raise InputShapeError(f"the artifact takes {len(shapes)} inputs ({', '.join(shapes)}): give each shape "
                                  "by name, e.g. --input-shape NAME:1,3,224,224")
        shapes = {next(iter(shapes)): tuple(input_shape)}
    if batch_size is not None:
        if batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
        fixed = {n: s[0] for n, s in own.items() if s and s[0] > 0 and s[0] != batch_size}
        if fixed:  # a static batch axis: the runtime would fail deep inside with a shape message
            raise InputShapeError(f"--batch-size {batch_size}: the artifact's batch axis is fixed at "
                                  f"{next(iter(fixed.values()))}; re-export it with a dynamic batch axis "
                                  "(edgeopt export --dynamic-batch, ONNX/OpenVINO) to measure other batch sizes")
        shapes = {n: (batch_size, *s[1:]) for n, s in shapes.items()}
    return shapes


def _prepare(path: Path, runtime: str | None, precision: str, threads: int, input_shape, batch_size):
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"artifact {path} does not exist")
    backend = backend_for(runtime) if runtime else backend_for_artifact(path)
    session = backend.load(path, precision=precision, threads=threads)
    shapes = _shapes(session, input_shape, batch_size)
    rng = np.random.default_rng(0)
    feed = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    try:
        session.run_named(feed)  # shape check and first-run cost, outside the timed loop
    except InputShapeError:
        raise
    except Exception as e:
        desc = ", ".join(f"{n}:{','.join(map(str, s))}" for n, s in shapes.items())
        raise InputShapeError(f"{path} does not run on input shape {desc}: {first_line(e, with_type=False)}"
                              ) from None
    return session, feed, shapes


def benchmark_many(paths: list[Path], runtime: str | None = None, precision: str = "fp32",
                   threads: int | None = None, input_shape: tuple[int, ...] | dict | None = None,
                   batch_size: int | None = None, config: BenchConfig | None = None,
                   streams: int | None = None) -> list[BenchmarkResult]:
    """Measure several artifacts interleaved, run by run; one result per artifact, in order. With `streams`
    also their throughput as a server runs them (that many requests in flight, each a batch of `batch_size`),
    interleaved alike (edgeopt.measure.throughput)."""
    from edgeopt.config import threads_problem

    problem = threads_problem(threads)  # the bound `optimize` and the CLI apply: 100000 threads hang a runtime
    if problem:
        raise ConfigError(f"threads {problem}")
    threads = threads or os.cpu_count()
    prepared = [_prepare(p, runtime, precision, threads, input_shape, batch_size) for p in paths]
    keys = [f"{i}:{p}" for i, p in enumerate(paths)]
    stats = measure({k: s.timed_call(feed) for k, (s, feed, _) in zip(keys, prepared, strict=True)}, config)
    served = {}
    if streams:
        from edgeopt.measure.throughput import Load, ThroughputConfig, measure_throughput, server_for

        load = Load(batch=batch_size or 1, streams=streams)
        servers = {k: server_for(Path(p), s.runtime, precision, threads, load)
                   for k, p, (s, _, _) in zip(keys, paths, prepared, strict=True)}
        served = measure_throughput(servers, ThroughputConfig(max_time_s=(config or BenchConfig()).max_time_s))
    return [BenchmarkResult(artifact=str(p), runtime=s.runtime, runtime_version=s.runtime_version,
                            precision=precision, precision_executed=s.precision_executed,
                            device=device_description(s), threads=threads,
                            input_shape=list(next(iter(shapes.values()))), latency=stats[k],
                            inputs={n: list(v) for n, v in shapes.items()}, outputs=list(s.output_names),
                            throughput=served.get(k))
            for k, p, (s, _, shapes) in zip(keys, paths, prepared, strict=True)]


def benchmark_artifact(path: Path, runtime: str | None = None, precision: str = "fp32",
                       threads: int | None = None, input_shape: tuple[int, ...] | None = None,
                       config: BenchConfig | None = None, batch_size: int | None = None) -> BenchmarkResult:
    return benchmark_many([Path(path)], runtime, precision, threads, input_shape, batch_size, config)[0]


def per_layer(path: Path, runtime: str | None = None, precision: str = "fp32", threads: int | None = None,
              input_shape: tuple[int, ...] | None = None, batch_size: int | None = None, runs: int = 20):
    """Per-layer times (slowest first) of one artifact; see edgeopt.measure.layers."""
    from edgeopt.measure.layers import profile_layers

    threads = threads or os.cpu_count()
    session, feed, _ = _prepare(Path(path), runtime, precision, threads, input_shape, batch_size)
    if len(feed) > 1:
        raise ConfigError("per-layer profiling takes a single-input artifact")
    x = next(iter(feed.values()))
    return profile_layers(Path(path), session.runtime, x, runs=runs, threads=threads, precision=precision)
