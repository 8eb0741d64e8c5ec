"""Throughput measurement: images per second as a server runs an artifact, and the latency of one request
under that load.

A server keeps several requests in flight, each a batch: OpenVINO through an `AsyncInferQueue` on a model
compiled with the THROUGHPUT performance hint (its own number of streams, or the one asked for); ONNX
Runtime and TensorRT through one session per concurrent request (its own execution context on TensorRT),
each on its own thread, the runtime threads split between them. After a warm-up, every candidate is run
for short fixed windows, round-robin in a shuffled order, like latency (measure/timing.py): drift on a
shared machine hits all of them alike. images/s is every completed image over the seconds measured at full
load (a window's drain, when the last requests finish while the other streams wait, is not billed: a server
under load never drains); each window's own images/s is kept for the gate's confidence interval."""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeopt.errors import ConfigError, InputShapeError
from edgeopt.report import ThroughputStats


@dataclass
class ThroughputConfig:
    warmup_s: float = 0.5  # per candidate: thread pools, allocation, the first requests
    window_s: float = 0.25  # one candidate's turn
    min_windows: int = 10  # per candidate (enough for the gate's confidence interval)
    max_time_s: float = 10.0  # for the whole interleaved group, warm-up excluded (at least min_windows each)


@dataclass(frozen=True)
class Load:
    """The load a server sees: a batch per request and the requests in flight (None: the runtime chooses:
    the THROUGHPUT hint's streams on OpenVINO, one on the others)."""

    batch: int = 1
    streams: int | None = None

    def __post_init__(self):
        if self.batch < 1 or (self.streams is not None and self.streams < 1):
            raise ConfigError(f"batch and streams must be at least 1, got batch {self.batch}, streams {self.streams}")


@dataclass
class Server:
    """One artifact loaded as a server runs it. `run_for(seconds)` keeps requests in flight for that long and
    returns (requests completed, per-request latencies in ms, the seconds they took at full load: until the
    last one completed, less the drain's idle streams, `busy_seconds`)."""

    run_for: Callable[[float], tuple[int, list[float], float]]
    batch: int
    streams: int
    settings: dict = field(default_factory=dict)


def served_shapes(shapes: dict[str, tuple[int, ...]], batch: int, path: Path | str = "the artifact"
                  ) -> dict[str, tuple[int, ...]]:
    """Every input at `batch`; InputShapeError naming `export --dynamic-batch` when the artifact's batch axis
    is fixed at another size."""
    out = {}
    for name, shape in shapes.items():
        if not shape:
            raise InputShapeError(f"{path}: input {name!r} is a scalar; it has no batch axis")
        if shape[0] > 0 and shape[0] != batch:
            raise InputShapeError(f"{path} has a static batch of {shape[0]}, not {batch}: export it with a dynamic "
                                  "batch axis (edgeopt export --dynamic-batch, or optimize --goal throughput)")
        out[name] = (batch, *(d if d > 0 else 1 for d in shape[1:]))
    return out


def random_feed(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}


def async_queue_server(compile_throughput: Callable, path: Path, precision: str, threads: int | None, load: Load,
                       device: str = "CPU") -> Server:
    """An AsyncInferQueue on the THROUGHPUT-hint compile (formats/openvino.py `compile_throughput`): as many
    jobs as the plugin's optimal number of infer requests (at least the streams), each request's inputs preset."""
    import openvino as ov

    compiled, settings = compile_throughput(path, precision, threads, load.streams, load.batch, device)
    shapes = {p.get_any_name(): tuple(d.get_length() for d in p.get_partial_shape()) for p in compiled.inputs}
    feed = random_feed(served_shapes(shapes, load.batch, path))
    jobs = max(settings["infer_requests"], settings["num_streams"])
    queue = ov.AsyncInferQueue(compiled, jobs)
    for i in range(jobs):
        for n, v in feed.items():
            queue[i].set_tensor(n, ov.Tensor(v))
    latencies: list[float] = []
    done_at: list[float] = []

    def finished(_request, t0: int) -> None:
        now = time.perf_counter_ns()
        latencies.append((now - t0) / 1e6)
        done_at.append(now / 1e9)

    queue.set_callback(finished)

    def run_for(seconds: float) -> tuple[int, list[float], float]:
        latencies.clear()
        done_at.clear()
        start = time.perf_counter()
        end = start + seconds
        while True:
            # wait for a free request, and start one only while the window lasts: a request started after its
            # end would run alone while the other streams sit idle
            queue.get_idle_request_id()
            if time.perf_counter() >= end:
                break
            queue.start_async(userdata=time.perf_counter_ns())
        queue.wait_all()
        return len(latencies), list(latencies), busy_seconds(start, sorted(done_at), jobs)

    return Server(run_for, load.batch, settings["num_streams"], {"runtime": ov.__name__, **settings, "jobs": jobs})


def busy_seconds(start: float, ends: list[float], streams: int) -> float:
    """The seconds a window stands for at full load: from its start to its last completion, less the time the
    streams sat idle while the last requests drained (each stream's last completion is among the last
    `streams`; it idles from then to the very last one), shared by the streams. A window a few requests long
    would otherwise bill that drain to the model and undercount its images/s by up to a request's time over
    the window's; every window starts with every stream busy at once, so there is no fill to subtract."""
    if not ends:
        return 0.0
    last = ends[-max(1, min(streams, len(ends))):]
    idle = sum(last[-1] - t for t in last) / max(1, streams)
    return max(1e-9, last[-1] - start - idle)


def threaded_server(path: Path, runtime: str, precision: str, threads: int | None, load: Load) -> Server:
    """One session per request in flight (ONNX Runtime: its own intra-op pool; TensorRT: its own execution
    context and CUDA stream), the runtime threads split between them, each driven by its own thread."""
    from edgeopt.formats import backend_for

    streams = load.streams or 1
    total = threads or os.cpu_count() or 1
    per = max(1, total // streams)
    backend = backend_for(runtime)
    sessions = [backend.load(path, precision=precision, threads=per) for _ in range(streams)]
    first = sessions[0]
    feed = random_feed(served_shapes(first.input_shapes or {"input": tuple(first.input_shape)}, load.batch, path))
    calls = [s.timed_call(feed) for s in sessions]

    def run_for(seconds: float) -> tuple[int, list[float], float]:
        per_thread: list[list[float]] = [[] for _ in calls]
        errors: list[BaseException] = []
        start = time.perf_counter()
        end = start + seconds

        ends: list[float] = []

        def drive(call, out: list[float]) -> None:
            try:
                while time.perf_counter() < end:
                    t0 = time.perf_counter_ns()
                    call()
                    out.append((time.perf_counter_ns() - t0) / 1e6)
                ends.append(time.perf_counter())
            except BaseException as e:  # re-raised on the measuring thread
                errors.append(e)

        workers = [threading.Thread(target=drive, args=(c, out), daemon=True) for c, out in zip(
            calls, per_thread, strict=True)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        if errors:
            raise errors[0]
        merged = [x for out in per_thread for x in out]
        return len(merged), merged, busy_seconds(start, sorted(ends), len(calls))

    settings = {"runtime": runtime, "sessions": streams, "threads_per_session": per,
                **({"execution_contexts": streams} if backend.device == "GPU" else {})}
    return Server(run_for, load.batch, streams, settings)


def server_for(path: Path, runtime: str, precision: str, threads: int | None, load: Load) -> Server:
    """The server of `runtime` for an artifact: the runtime's own async queue where its loader module offers a
    throughput compile (OpenVINO), a session per request in flight elsewhere."""
    import importlib

    from edgeopt.formats import backend_for

    backend = backend_for(runtime)
    compile_throughput = getattr(importlib.import_module(backend.load_ref.split(":")[0]), "compile_throughput", None)
    if compile_throughput is not None:
        backend.require()
        return async_queue_server(compile_throughput, Path(path), precision, threads, load, backend.device)
    return threaded_server(Path(path), runtime, precision, threads, load)


def stats(requests: int, latencies: list[float], seconds: float, windows: list[float], server: Server
          ) -> ThroughputStats:
    a = np.asarray(latencies or [float("nan")], dtype=np.float64)
    return ThroughputStats(
        images_s=round(requests * server.batch / seconds, 3) if seconds > 0 else 0.0,
        p50_ms=round(float(np.percentile(a, 50)), 5), p99_ms=round(float(np.percentile(a, 99)), 5),
        batch=server.batch, streams=server.streams, requests=requests, window_s=round(seconds, 4),
        samples_images_s=[round(w, 3) for w in windows], runtime_settings=server.settings)


def measure_throughput(servers: dict[str, Server], config: ThroughputConfig | None = None, seed: int = 0
                       ) -> dict[str, ThroughputStats]:
    """Warm each server up, then fixed windows round-robin in a shuffled order: as many rounds as
    `max_time_s` holds, at least `min_windows`."""
    cfg = config or ThroughputConfig()
    ids = list(servers)
    for sid in ids:
        servers[sid].run_for(cfg.warmup_s)
    rng = random.Random(seed)
    done = {sid: 0 for sid in ids}
    lat: dict[str, list[float]] = {sid: [] for sid in ids}
    secs = {sid: 0.0 for sid in ids}
    windows: dict[str, list[float]] = {sid: [] for sid in ids}
    rounds = max(cfg.min_windows, int(cfg.max_time_s / (cfg.window_s * max(1, len(ids)))))
    for _ in range(rounds):
        order = ids[:]
        rng.shuffle(order)
        for sid in order:
            n, ms, s = servers[sid].run_for(cfg.window_s)
            done[sid] += n
            lat[sid] += ms
            secs[sid] += s
            windows[sid].append(n * servers[sid].batch / s if s > 0 else 0.0)
    return {sid: stats(done[sid], lat[sid], secs[sid], windows[sid], servers[sid]) for sid in ids}


def batch_consistency(session, batch: int, seed: int = 1) -> float:
    """The artifact verified at the served batch: the largest difference between a batch of `batch` inputs run
    at once and the same inputs run one by one, relative to the outputs' scale (0 when batch is 1)."""
    if batch <= 1:
        return 0.0
    shapes = served_shapes(session.input_shapes or {"input": tuple(session.input_shape)}, batch)
    feed = random_feed(shapes, seed)
    together = session.run_named(feed)
    worst = 0.0
    for i in range(batch):
        alone = session.run_named({n: v[i:i + 1] for n, v in feed.items()})
        for name, out in alone.items():
            ref = np.asarray(together[name])[i:i + 1]
            scale = float(np.abs(ref).max()) or 1.0
            worst = max(worst, float(np.abs(np.asarray(out, dtype=np.float64) - ref).max()) / scale)
    return worst
