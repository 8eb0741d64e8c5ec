"""Candidate cache under the out dir, so an interrupted or repeated run resumes instead of starting over.

An entry is keyed by everything that produced it (`producer_parts`: the model's weights, module tree and module
code, the example inputs' shapes, the contents of the evaluation / calibration / training data, the metric, the
seed, calibration from random inputs, the export options, the target, the edgeopt version; the caller adds the
candidate's step configs, runtime and precision), so runs of other models or data written into the same out dir
never answer for each other. Only finished results are stored (one small JSON per entry, written atomically),
so a run killed midway leaves either a complete entry or none. An entry records the sha256 of every file of its
artifact, checked before the artifact is reused. Latency is never cached: it is measured interleaved in each
run, with the artifact reloaded from disk."""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from pathlib import Path
from typing import Any

import torch

from edgeopt import __version__
from edgeopt.report import file_sha256, write_atomic


def _source(fn) -> str | None:
    """A user function's source (its metric edited: another cache key), else its name."""
    if fn is None:
        return None
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        return getattr(fn, "__qualname__", repr(type(fn)))


def _code(model) -> str:
    """What a module's weights do not show: the code of its module classes outside torch (a user's forward),
    and the generated code of traced / exported / scripted graphs."""
    parts = []
    for t in sorted({type(m) for m in model.modules()}, key=lambda t: f"{t.__module__}.{t.__qualname__}"):
        parts.append(f"{t.__module__}.{t.__qualname__}")
        if not t.__module__.startswith("torch."):
            try:
                parts.append(inspect.getsource(t))
            except (OSError, TypeError):  # defined where no source is kept: its name only
                pass
    for m in model.modules():
        try:
            code = getattr(m, "code", None)
        except Exception:  # e.g. a scripted module without a forward
            code = None
        if isinstance(code, str):
            parts.append(code)
    return "\n".join(parts)


def model_hash(model) -> str:
    """Hash of the architecture (module tree with each layer's settings, such as a convolution's stride that no
    weight shape shows, and the module code) and the weights."""
    h = hashlib.sha256(type(model).__name__.encode())
    h.update(re.sub(r" at 0x[0-9a-fA-F]+", "", repr(model)).encode())  # a function's address differs per process
    h.update(_code(model).encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def data_hash(batches) -> str:
    h = hashlib.sha256()
    if batches is None:
        return "none"
    if getattr(batches, "key", None):  # e.g. an image folder: its files' contents and the preprocessing
        return batches.key[:20]
    for x, y in batches.items:
        for t in getattr(x, "tensors", [x]):  # one tensor, or every named input
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        if isinstance(y, torch.Tensor):
            h.update(y.detach().cpu().numpy().tobytes())
        elif y is not None:  # e.g. a detector's box targets, read only by the user's metric
            h.update(repr(y).encode())
    return h.hexdigest()[:20]


def producer_parts(model, ex, eval_b, splits, context, export_options: dict | None, target) -> tuple:
    """Everything of a run that decides what a candidate's artifact, accuracy and screening drop are, except
    the candidate's own steps, runtime and precision (added per entry). `ex`: the example Inputs; `target`: the
    TargetProfile (its ISA decides which kernels, hence which executed precision, a runtime picks)."""
    metric = getattr(eval_b, "metric", None)
    scored = [getattr(metric, "name", None), getattr(metric, "num_classes", None), _source(getattr(metric, "fn", None))]
    inputs = {n: [list(t.shape), str(t.dtype)] for n, t in zip(ex.names, ex.tensors, strict=True)}
    return (__version__, model_hash(model), inputs, ex.keyword, data_hash(eval_b), scored,
            data_hash(splits.calib), data_hash(splits.train) if context.retrain else None, context.seed,
            context.calib_random, export_options,
            [target.name, target.arch, sorted(target.isa_features)])


def files_digest(files: list[Path], root: Path) -> dict[str, str] | None:
    """{path under root: sha256} of every file of an artifact; None when one is missing."""
    try:
        return {Path(f).relative_to(root).as_posix(): file_sha256(f) for f in files}
    except (OSError, ValueError):
        return None


def key(*parts: Any) -> str:
    text = json.dumps(list(parts), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class CandidateCache:
    """`get`/`put` of JSON-able dicts under OUT/cache/<kind>-<key>.json. Corrupt entries count as missing."""

    def __init__(self, out_dir: Path, enabled: bool = True):
        self.dir = Path(out_dir) / "cache"
        self.enabled = enabled
        self.hits = 0

    def _path(self, kind: str, k: str) -> Path:
        return self.dir / f"{kind}-{k}.json"

    def get(self, kind: str, k: str) -> dict | None:
        if not self.enabled:
            return None
        p = self._path(kind, k)
        try:
            data = json.loads(p.read_text())
        except (OSError, ValueError):
            return None
        self.hits += 1
        return data

    def put(self, kind: str, k: str, value: dict) -> None:
        if self.enabled:
            write_atomic(self._path(kind, k), json.dumps(value, default=str))
