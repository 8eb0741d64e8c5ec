"""Roofline latency estimate from a target profile: call overhead + max(compute time, weight-traffic time).

Always labelled `estimated` (a profile's `call_overhead_estimated` says its overhead is assumed, too). It is
a lower bound in spirit: it assumes kernels reach the hardware's peak and that only the weights cross the
memory bus once (activations stay in cache, layers are fused), so real latency is usually higher —
`benchmarks/roofline_vs_measured.py` says by how much on this machine."""

from __future__ import annotations

from dataclasses import dataclass

from edgeopt.report import LatencyStats
from edgeopt.targets import TargetProfile

BYTES_PER_WEIGHT = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1, "int4": 0.5}


@dataclass(frozen=True)
class Roofline:
    compute_ms: float
    memory_ms: float
    overhead_ms: float
    peak_precision: str  # the peak actually used (fp32 when the target lists none for the precision)

    @property
    def total_ms(self) -> float:
        return self.overhead_ms + max(self.compute_ms, self.memory_ms)

    @property
    def bound(self) -> str:
        return "compute" if self.compute_ms >= self.memory_ms else "memory"


def roofline(target: TargetProfile, macs: int, weight_bytes: int, precision: str = "fp32",
             at_precision: bool = False) -> Roofline | None:
    """`weight_bytes`: the fp32 size of the weights (an fp32 artifact's size), scaled to `precision`; with
    `at_precision`, bytes already stored at it (an INT8 or fp16 artifact's size), counted as they are."""
    used = precision if target.peak_ops.get(precision) else "fp32"
    peak = target.peak_ops.get(used)
    if not peak:
        return None
    moved = weight_bytes if at_precision else weight_bytes * BYTES_PER_WEIGHT.get(precision, 4) / 4
    t_compute = 2 * macs / peak  # 1 MAC = 2 ops
    t_memory = moved / (target.memory_bandwidth_gbs * 1e9) if target.memory_bandwidth_gbs else 0.0
    return Roofline(t_compute * 1e3, t_memory * 1e3, target.call_overhead_ms, used)


def estimate_ms(target: TargetProfile, macs: int, weight_bytes: int, precision: str = "fp32",
                at_precision: bool = False) -> float | None:
    r = roofline(target, macs, weight_bytes, precision, at_precision)
    return None if r is None else r.total_ms


def estimate_stats(target: TargetProfile, macs: int, artifact_bytes: int, precision: str) -> LatencyStats | None:
    """An estimate shaped like measured stats: n = 0 and no samples, so no gate can mistake it for data.
    `artifact_bytes`: the candidate's artifact size, already at its precision (an INT8 file's weights are one
    byte each): counted once, never scaled down again."""
    ms = estimate_ms(target, macs, artifact_bytes, precision, at_precision=True)
    if ms is None:
        return None
    return LatencyStats(p50=ms, p90=ms, p99=ms, mean=ms, std=0.0, n=0)
