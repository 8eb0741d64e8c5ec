"""A whole `optimize` under torchrun: rank 0 runs the search (screens, exports, measures, writes the report);
every other rank ("follower") only joins the DistributedDataParallel fine-tuning of each structure rank 0
builds. Rank 0 announces each build before it starts (Search.announce); a follower repeats it from the same
original model, example and data splits (loaded with the same seed), so the collectives inside
`edgeopt.training.fit` pair up rank by rank. A sentinel (None) ends the followers."""

from __future__ import annotations

import os
import sys

import torch
from torch import nn

from edgeopt.decide.plan import CandidateSpec
from edgeopt.engine.build import build_structure
from edgeopt.inputs.data import DataSplits
from edgeopt.training import ddp


class Leader:
    """Rank 0's side: Search.announce, and `close()` once the search is over (normally or not)."""

    def __init__(self) -> None:
        self.closed = False

    def __call__(self, structure: str, steps: list, base: str | None) -> None:
        ddp.broadcast((structure, [s.model_dump() for s in steps], base))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            ddp.broadcast(None)


def follow(net: nn.Module, example: torch.Tensor, splits: DataSplits) -> int:
    """A follower's whole part of optimize: build what rank 0 announces until the sentinel. Every built model
    is kept, because a later announcement may build on top of it (`base`). Returns the number of builds."""
    built: dict[str, nn.Module | None] = {}
    while (msg := ddp.broadcast()) is not None:
        structure, steps, base = msg
        start = net if base is None else built.get(base)
        try:
            if start is None:
                raise RuntimeError(f"base structure {base!r} was not built on this rank")
            # build_structure reads only the steps; the rest of the spec (format, precision) is rank 0's
            spec = CandidateSpec(id=structure, structure=structure, format="", steps=steps)
            built[structure] = build_structure(start, example, spec, splits.calib, splits.train,
                                               teacher=net).model
        except Exception as e:  # rank 0 meets the same failure and records it; say why in case it did not
            built[structure] = None
            print(f"edgeopt rank {os.environ.get('RANK', '?')}: building {structure} failed: "
                  f"{type(e).__name__}: {e}", file=sys.stderr)
    return len(built)


def share_cores(threads_asked: int | None) -> None:
    """N processes on one CPU machine would each start a thread per core: give each its share instead,
    unless --threads was given."""
    if threads_asked is None:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
