"""Candidate cache under the out dir, so an interrupted or repeated run resumes instead of starting over.

Keys: (model hash, steps, runtime, precision, evaluation-data hash, edgeopt version — the caller
passes every part). Only finished results
are stored (one small JSON per entry, written atomically), so a run killed midway leaves either a complete
entry or none. Latency is never cached: it is measured interleaved in each run, with the artifact reloaded
from disk."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from edgeopt.report import write_atomic


def model_hash(model) -> str:
    """Hash of the architecture (module types and shapes) and the weights."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def data_hash(batches) -> str:
    h = hashlib.sha256()
    if batches is None:
        return "none"
    if getattr(batches, "key", None):  # e.g. an image folder: its file list and preprocessing, not its pixels
        return batches.key[:20]
    for x, y in batches.items:
        for t in getattr(x, "tensors", [x]):  # one tensor, or every named input
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        if isinstance(y, torch.Tensor):
            h.update(y.detach().cpu().numpy().tobytes())
        elif y is not None:  # e.g. a detector's box targets, read only by the user's metric
            h.update(repr(y).encode())
    return h.hexdigest()[:20]


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
