"""Calibration inputs for INT8 post-training quantization, for models with one input or several (every
input of a tuple- or dict-input model is fed: ONNX Runtime's and NNCF's calibration read them by name).

Scales computed from random inputs describe noise, not the model's real activations: random calibration
is refused unless the caller asks for it explicitly (`--calib random`, `calib_data="random"`), and the
result then says so. NaN/Inf in calibration data is a DataError. The pipeline calls
`resolve_calibration` too, so the CLI, the API and the optimizer refuse the same way; the optimizer resolves
the run's calibration data once and hands the same `Calibration` to every INT8 artifact."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from edgeopt.errors import DataError
from edgeopt.inputs.feeding import checked_columns, split_inputs_target
from edgeopt.inputs.model_io import Inputs

RANDOM = "random"
MAX_SAMPLES = 128  # enough for min/max and histogram calibration; more only costs time


@dataclass
class Calibration:
    inputs: list  # batches shaped like the example (its static batch size): tensors, or Inputs for several
    source: str  # "data" | "random"
    names: list[str] = field(default_factory=lambda: ["input"])  # the inputs' names, in order
    _feeds: list | None = field(default=None, repr=False, compare=False)

    def info(self) -> dict:
        return {"source": self.source, "samples": sum(int(x.shape[0]) for x in self.inputs),
                "meaningful_scales": self.source != RANDOM, "inputs": list(self.names)}

    def feeds(self) -> list[dict[str, np.ndarray]]:
        """Every batch as a runtime feed: input name -> float32 array (made once: every INT8 artifact
        calibrated on this data reads the same arrays)."""
        if self._feeds is None:
            self._feeds = [x.numpy() if isinstance(x, Inputs) else
                           {self.names[0]: np.ascontiguousarray(x.numpy(), dtype=np.float32)} for x in self.inputs]
        return self._feeds

    def fits(self, example) -> bool:
        """Whether these batches feed a model whose inputs are shaped like `example`."""
        tmpl = _template(example)
        first = self.inputs[0] if self.inputs else None
        shapes = (first.shapes if isinstance(first, Inputs) else {self.names[0]: tuple(first.shape)}
                  ) if first is not None else {}
        return list(self.names) == list(tmpl.names) and list(shapes.values()) == list(tmpl.shapes.values())


def _template(example) -> Inputs:
    return example if isinstance(example, Inputs) else Inputs.of(example)


def _pairs(calib, n_inputs: int) -> list:
    """(inputs, target or None) for each batch of Batches, StreamBatches, a tensor, or an iterable of items."""
    if hasattr(calib, "items") and not isinstance(calib, dict):  # Batches / StreamBatches
        return list(calib.items)
    if isinstance(calib, (torch.Tensor, Inputs, dict)):
        return [(calib, None)]
    return [split_inputs_target(item, n_inputs) for item in calib]


def _regroup(cols: list[torch.Tensor], tmpl: Inputs, start: int, count: int) -> list:
    """Batches of the artifact's static batch size from per-input columns of samples."""
    b = tmpl.batch
    out = []
    for i in range(start, start + count - b + 1, b):
        parts = [c[i:i + b] for c in cols]
        out.append(parts[0] if tmpl.single else tmpl.like(parts))
    return out


def resolve_calibration(calib, example, precision: str = "int8", allow_random: bool = False,
                        max_samples: int = MAX_SAMPLES, seed: int = 0) -> Calibration:
    """Calibration batches shaped like `example` (a tensor, tuple, dict or Inputs: every input), from `calib`
    (Batches, tensors, (x, y) pairs, tuples/dicts of inputs) or, only when `calib == "random"` or
    `allow_random`, from a seeded normal distribution."""
    tmpl = _template(example)
    if isinstance(calib, Calibration):  # resolved once already (the optimizer shares one across its artifacts)
        if not calib.fits(tmpl):
            raise DataError(f"calibration batches for inputs {calib.names} do not fit the model's inputs "
                            f"{tmpl.describe()}")
        return calib
    if calib is None or (isinstance(calib, str) and calib == RANDOM):
        if not (allow_random or calib == RANDOM):
            raise DataError(f"{precision} quantization needs calibration data: pass --data / calib_data "
                            "(representative inputs), or --calib random to accept meaningless scales")
        gen = torch.Generator().manual_seed(seed)
        n = max(1, min(32, max_samples) // max(1, tmpl.batch))
        batches = [tmpl.fresh(gen) for _ in range(n)]
        return Calibration([x.first if tmpl.single else x for x in batches], RANDOM, list(tmpl.names))
    if isinstance(calib, str):
        raise DataError(f"calibration {calib!r} not understood: give data, or 'random'")
    cols: list[list[torch.Tensor]] = [[] for _ in tmpl.names]
    n = 0
    for i, (x, _) in enumerate(_pairs(calib, len(tmpl.names))):
        for col, t in zip(cols, checked_columns(x, tmpl, i, "calibration"), strict=True):
            col.append(t)
        n += len(cols[0][-1])
        if n >= max_samples:
            break
    merged = [torch.cat(c)[:max_samples] for c in cols] if n else []
    groups = _regroup(merged, tmpl, 0, min(n, max_samples)) if n else []
    if not groups:
        raise DataError(f"calibration data has {min(n, max_samples)} samples, fewer than the batch size "
                        f"{tmpl.batch}")
    return Calibration(groups, "data", list(tmpl.names))


def holdout(calib, example, n: int = 24, skip: int = MAX_SAMPLES):
    """Verification inputs for a quantized artifact, from the calibration data's distribution but not the
    samples its scales were fitted on (random inputs would be out of range and judge the scales unfairly).
    Returns (input batches, label batches or None, overlaps_calibration). Labels only for class labels."""
    tmpl = _template(example)
    cols: list[list[torch.Tensor]] = [[] for _ in tmpl.names]
    ys: list = []
    for i, (x, y) in enumerate(_pairs(calib, len(tmpl.names))):
        for col, t in zip(cols, checked_columns(x, tmpl, i, "calibration"), strict=True):
            col.append(t)
        k = len(cols[0][-1])
        class_labels = isinstance(y, torch.Tensor) and y.numel() == k
        ys.extend(y.reshape(-1).split(1) if class_labels else [None] * k)
    total = len(ys)
    b = tmpl.batch
    fresh = total - skip >= n * b
    start = skip if fresh else max(0, total - n * b)
    count = min(n * b, total - start)
    merged = [torch.cat(c) for c in cols] if total else []
    # in the form the example was given (a tuple is named from the model's signature by whoever runs it)
    groups = [g if isinstance(g, torch.Tensor) else g.example() for g in _regroup(merged, tmpl, start, count)
              ] if total else []
    ys = ys[start:start + count]
    labelled = bool(ys) and all(y is not None for y in ys)
    labels = [torch.cat(ys[i:i + b]) for i in range(0, len(ys) - b + 1, b)] if labelled else None
    return groups, labels, not fresh
