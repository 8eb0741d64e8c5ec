"""Calibration inputs for INT8 post-training quantization.

Scales computed from random inputs describe noise, not the model's real activations: random calibration
is refused unless the caller asks for it explicitly (`--calib random`, `calib_data="random"`), and the
result then says so. NaN/Inf in calibration data is a DataError. The pipeline calls
`resolve_calibration` too, so the CLI, the API and the optimizer refuse the same way."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edgeopt.errors import DataError

RANDOM = "random"
MAX_SAMPLES = 128  # enough for min/max and histogram calibration; more only costs time


@dataclass
class Calibration:
    inputs: list[torch.Tensor]  # each shaped like the example (the artifact's static batch size)
    source: str  # "data" | "random"

    def info(self) -> dict:
        return {"source": self.source, "samples": sum(int(x.shape[0]) for x in self.inputs),
                "meaningful_scales": self.source != RANDOM}


def _tensors(calib) -> list[torch.Tensor]:
    if hasattr(calib, "inputs"):  # edgeopt.inputs.data.Batches
        return list(calib.inputs())
    if isinstance(calib, torch.Tensor):
        return [calib]
    out = []
    for item in calib:
        x = item[0] if isinstance(item, (tuple, list)) else item
        out.append(torch.as_tensor(x, dtype=torch.float32))
    return out


def resolve_calibration(calib, example: torch.Tensor, precision: str = "int8", allow_random: bool = False,
                        max_samples: int = MAX_SAMPLES, seed: int = 0) -> Calibration:
    """Calibration batches shaped like `example`, from `calib` (Batches, tensors, (x, y) pairs) or, only when
    `calib == "random"` or `allow_random`, from a seeded normal distribution."""
    if calib is None or (isinstance(calib, str) and calib == RANDOM):
        if not (allow_random or calib == RANDOM):
            raise DataError(f"{precision} quantization needs calibration data: pass --data / calib_data "
                            "(representative inputs), or --calib random to accept meaningless scales")
        gen = torch.Generator().manual_seed(seed)
        n = max(1, min(32, max_samples) // max(1, example.shape[0]))
        return Calibration([torch.randn(example.shape, generator=gen) for _ in range(n)], RANDOM)
    if isinstance(calib, str):
        raise DataError(f"calibration {calib!r} not understood: give data, or 'random'")
    batch = int(example.shape[0])
    samples: list[torch.Tensor] = []
    for i, x in enumerate(_tensors(calib)):
        if x.dim() == example.dim() - 1:
            x = x.unsqueeze(0)
        if tuple(x.shape[1:]) != tuple(example.shape[1:]):
            raise DataError(f"calibration batch {i} has sample shape {tuple(x.shape[1:])}, "
                            f"the model takes {tuple(example.shape[1:])}")
        if not torch.isfinite(x).all():
            raise DataError(f"calibration batch {i} contains NaN or Inf values")
        samples.extend(x.float().split(1))
        if len(samples) >= max_samples:
            break
    samples = samples[:max_samples]
    # the artifact has a static batch dimension: regroup the samples into batches of that size
    groups = [torch.cat(samples[i:i + batch]) for i in range(0, len(samples) - batch + 1, batch)]
    if not groups:
        raise DataError(f"calibration data has {len(samples)} samples, fewer than the batch size {batch}")
    return Calibration(groups, "data")


def _pairs(calib) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    if hasattr(calib, "items"):  # Batches
        return list(calib.items)
    if isinstance(calib, torch.Tensor):
        return [(calib, None)]
    return [(torch.as_tensor(i[0], dtype=torch.float32), None if i[1] is None else torch.as_tensor(i[1]))
            if isinstance(i, (tuple, list)) else (torch.as_tensor(i, dtype=torch.float32), None) for i in calib]


def holdout(calib, example: torch.Tensor, n: int = 24, skip: int = MAX_SAMPLES):
    """Verification inputs for a quantized artifact, from the calibration data's distribution but not the
    samples its scales were fitted on (random inputs would be out of range and judge the scales unfairly).
    Returns (input batches, label batches or None, overlaps_calibration)."""
    xs, ys = [], []
    for x, y in _pairs(calib):
        if x.dim() == example.dim() - 1:
            x = x.unsqueeze(0)
        xs.extend(x.float().split(1))
        ys.extend(y.reshape(-1).split(1) if y is not None else [None] * len(x))
    b = int(example.shape[0])
    fresh = len(xs) - skip >= n * b
    start = skip if fresh else max(0, len(xs) - n * b)
    xs, ys = xs[start:start + n * b], ys[start:start + n * b]
    groups = [torch.cat(xs[i:i + b]) for i in range(0, len(xs) - b + 1, b)]
    labelled = all(y is not None for y in ys) and bool(ys)
    labels = [torch.cat(ys[i:i + b]) for i in range(0, len(ys) - b + 1, b)] if labelled else None
    return groups, labels, not fresh
