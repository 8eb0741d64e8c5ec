"""Roofline latency estimate from a target profile: max(compute time, memory time). Always labelled
`estimated` — it ignores per-call overhead, kernel efficiency and layer fusion."""

from __future__ import annotations

from edgeopt.report import LatencyStats
from edgeopt.targets import TargetProfile


def estimate_ms(target: TargetProfile, macs: int, weight_bytes: int, precision: str = "fp32") -> float | None:
    peak = target.peak_ops.get(precision) or target.peak_ops.get("fp32")
    if not peak:
        return None
    bytes_per_weight = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}.get(precision, 4)
    moved = weight_bytes * bytes_per_weight / 4  # weight_bytes are fp32 sizes
    t_compute = 2 * macs / peak
    t_memory = moved / (target.memory_bandwidth_gbs * 1e9) if target.memory_bandwidth_gbs else 0.0
    return max(t_compute, t_memory) * 1e3


def estimate_stats(target: TargetProfile, macs: int, weight_bytes: int, precision: str) -> LatencyStats | None:
    ms = estimate_ms(target, macs, weight_bytes, precision)
    if ms is None:
        return None
    return LatencyStats(p50=ms, p90=ms, p99=ms, mean=ms, std=0.0, n=0)
