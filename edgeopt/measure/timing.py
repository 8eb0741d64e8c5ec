"""Latency measurement: warm-up, interleaved repetitions until the median is stable, percentiles.

Several models are measured round-robin in a shuffled order each round, so that drift on a shared
machine (another job, frequency changes) hits all of them alike and their ratio stays honest. Each turn
is a short block of runs whose first run is discarded: runtimes keep their worker threads spinning for a
while after a call (OpenVINO; ONNX Runtime's sessions are told to stop at once), and that spin must not be
billed to the next model.

Drift that comes in phases is divided out round by round (`shared_slowdown`). On a 2-core cloud VM each
vCPU ran OpenVINO 2.5x slower for stretches of 0.5-2 s (2.5 against 6-7 ms for one thread; the host, not
this process), so a short measurement's median fell in either phase depending on how many of a model's
turns the slow stretches hit: the same INT8 Unet measured 1.9 and 2.7 ms in two measurements minutes apart.
A round takes a fraction of a second, all models take their turns in it, and the slow phase slowed them
alike (1.8x here), so each round's factor is the median, over the models, of their turn's median over their
own; samples divided by it keep the figures in milliseconds at the typical round and their ratios free of
the phases: in eight 3-s measurements of five Unet candidates one ran 1.12-1.50x faster than the original as
timed and 1.13-1.19x divided."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgeopt.report import LatencyStats


@dataclass
class BenchConfig:
    warmup_runs: int = 10
    warmup_s: float = 0.2
    min_runs: int = 30
    max_runs: int = 3000
    max_time_s: float = 10.0  # for the whole interleaved group
    ci_rel: float = 0.02  # stop when the 95% CI of every median is within ±2%
    keep_samples: int = 500  # raw samples kept in the report for gates
    block: int = 4  # runs per model per turn when interleaving (the first one is discarded)


def stats_from_samples(samples_ms: list[float], keep: int = 500) -> LatencyStats:
    a = np.asarray(samples_ms, dtype=np.float64)
    return LatencyStats(
        p50=float(np.percentile(a, 50)), p90=float(np.percentile(a, 90)), p99=float(np.percentile(a, 99)),
        mean=float(a.mean()), std=float(a.std(ddof=1)) if len(a) > 1 else 0.0, n=len(a),
        samples_ms=[round(float(x), 5) for x in a[:keep]],
    )


def median_ci_rel(samples: list[float]) -> float:
    """Relative half-width of the order-statistic 95% confidence interval of the median."""
    n = len(samples)
    if n < 10:
        return math.inf
    s = sorted(samples)
    half = 1.96 * math.sqrt(n) / 2
    lo, hi = s[max(0, int(n / 2 - half))], s[min(n - 1, int(math.ceil(n / 2 + half)))]
    med = s[n // 2]
    return (hi - lo) / 2 / med if med > 0 else math.inf


def measure(fns: dict[str, Callable[[], object]], config: BenchConfig | None = None,
            on_round: Callable[[int], None] | None = None, seed: int = 0) -> dict[str, LatencyStats]:
    """Time each zero-argument callable; interleaved when there are several."""
    cfg = config or BenchConfig()
    ids = list(fns)
    rng = random.Random(seed)
    for fid in ids:  # warm-up: first runs pay for allocation, JIT and cache effects
        t_end = time.perf_counter() + cfg.warmup_s / max(1, len(ids))
        for i in range(cfg.warmup_runs * 100):
            fns[fid]()
            if i + 1 >= cfg.warmup_runs and time.perf_counter() >= t_end:
                break
    samples: dict[str, list[float]] = {fid: [] for fid in ids}
    round_of: dict[str, list[int]] = {fid: [] for fid in ids}
    block = cfg.block if len(ids) > 1 else 1
    start = time.perf_counter()
    rounds = 0
    while True:
        order = ids[:]
        rng.shuffle(order)
        for fid in order:
            fn = fns[fid]
            if block > 1:
                fn()  # absorbs the previous model's leftover thread activity
            for _ in range(max(1, block - 1)):
                t0 = time.perf_counter_ns()
                fn()
                samples[fid].append((time.perf_counter_ns() - t0) / 1e6)
                round_of[fid].append(rounds)
        rounds += 1
        if on_round and rounds % 10 == 0:
            on_round(rounds)
        n = len(samples[ids[0]])
        if n < cfg.min_runs:
            continue
        if n >= cfg.max_runs or time.perf_counter() - start >= cfg.max_time_s:
            break
        if rounds % 5 == 0 and all(median_ci_rel(samples[f]) <= cfg.ci_rel for f in ids):
            break
    factor = shared_slowdown(samples, round_of)
    if factor is None:
        return {fid: stats_from_samples(samples[fid], cfg.keep_samples) for fid in ids}
    out = {}
    for fid in ids:
        divided = [t / factor[r] for t, r in zip(samples[fid], round_of[fid], strict=True)]
        out[fid] = stats_from_samples(divided, cfg.keep_samples).model_copy(
            update={"raw_p50": float(np.percentile(samples[fid], 50))})
    return out


# fewer models or rounds than these give no shared factor worth dividing by
SHARED_MIN_MODELS = 2
SHARED_MIN_ROUNDS = 5


def shared_slowdown(samples: dict[str, list[float]], round_of: dict[str, list[int]]) -> dict[int, float] | None:
    """Per round, the slowdown every model shared (module doc): the median over the models of their turn's
    median divided by their own median, scaled so that the median round's factor is 1. None for a model
    measured alone or too few rounds."""
    ids = [f for f in samples if samples[f]]
    rounds = sorted({r for f in ids for r in round_of[f]})
    if len(ids) < SHARED_MIN_MODELS or len(rounds) < SHARED_MIN_ROUNDS:
        return None
    ratios: dict[int, list[float]] = {r: [] for r in rounds}
    for f in ids:
        own = float(np.median(samples[f]))
        turns: dict[int, list[float]] = {}
        for t, r in zip(samples[f], round_of[f], strict=True):
            turns.setdefault(r, []).append(t)
        for r, ts in turns.items():
            ratios[r].append(float(np.median(ts)) / own)
    factor = {r: float(np.median(v)) for r, v in ratios.items()}
    typical = float(np.median(list(factor.values())))
    return {r: f / typical for r, f in factor.items()}
