"""What the training loop iterates: one epoch of (x, y) batches, reshuffled every epoch from a seed (sample
by sample, so batches mix classes even when the data came class-sorted) and, under torchrun, sharded per rank
by a DistributedSampler (every rank gets the same number of batches, so DDP steps in lockstep)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from edgeopt.errors import DataError
from edgeopt.inputs.data.batches import Batches, StreamBatches, iter_loader, split_item
from edgeopt.inputs.model_io import Inputs


def _tensor_like(y) -> bool:
    if isinstance(y, torch.Tensor):
        return True
    try:
        torch.as_tensor(y)
    except (TypeError, ValueError, RuntimeError):
        return False
    return True


def _targets(y) -> torch.Tensor:
    """Class labels as one value per sample ((N,) or (N, 1)); dense targets (masks) keep their shape."""
    y = torch.as_tensor(y)
    return y.reshape(-1) if y.dim() <= 1 or (y.dim() == 2 and y.shape[1] == 1) else y


def steps_per_epoch(data) -> int:
    """The optimizer steps of one pass over training data of any accepted kind, alone (as TrainFeed.steps), read
    without loading it: a stream's length, or the batches in memory (TrainFeed re-batches them at the first
    one's size)."""
    if isinstance(data, StreamBatches):
        return -(-len(data) // data.batch_size)
    pairs = [split_item(b) for b in (data.items if isinstance(data, Batches) else data)]
    if not pairs:
        return 0
    size = max(1, int(pairs[0][0].shape[0]))
    return -(-sum(int(x.shape[0]) for x, _ in pairs) // size)


class TrainFeed:
    """Training data of any accepted kind: StreamBatches (a Dataset, decoded by workers) or batches in memory
    (Batches, lists of (x, y) or x), which are concatenated once and re-batched by sampled indices."""

    def __init__(self, data, seed: int = 0):
        self.seed = seed
        self.stream = data if isinstance(data, StreamBatches) else None
        if self.stream is not None:
            self.n, self.batch_size = len(data), data.batch_size
            self.labelled = data.labelled
            return
        items = data.items if isinstance(data, Batches) else data
        pairs = [split_item(b) for b in items]
        if not pairs:
            raise DataError("training data is empty: give at least one batch")
        xs = [x for x, _ in pairs]
        # several inputs arrive as named Inputs batches; their tensors are joined input by input
        self.x = Inputs.cat(xs) if isinstance(xs[0], Inputs) else torch.cat([torch.as_tensor(x) for x in xs])
        # targets that are not class labels or masks (a detector's box lists) train nothing directly: the
        # model is then distilled from its teacher alone
        self.labelled = all(y is not None and _tensor_like(y) for _, y in pairs)
        self.y = torch.cat([_targets(y) for _, y in pairs]) if self.labelled else None
        self.n, self.batch_size = len(self.x), max(1, int(pairs[0][0].shape[0]))

    def example(self) -> torch.Tensor | Inputs:
        """One batch of inputs (layer matching and adapter initialisation need real shapes)."""
        if self.stream is not None:
            return self.stream.items[0][0]
        return self.x[:self.batch_size]

    def _sampler(self, epoch: int, rank: int, world_size: int):
        from torch.utils.data import DistributedSampler

        # num_replicas/rank given explicitly: no process group is needed when there is only one process
        s = DistributedSampler(range(self.n), num_replicas=world_size, rank=rank, shuffle=True, seed=self.seed,
                               drop_last=world_size > 1)
        s.set_epoch(epoch)
        return s

    def steps(self, world_size: int = 1) -> int:
        per_rank = self.n // world_size if world_size > 1 else self.n
        return -(-per_rank // self.batch_size)

    def epoch(self, epoch: int, rank: int = 0, world_size: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        sampler = self._sampler(epoch, rank, world_size)
        if self.stream is not None:
            for i, item in enumerate(iter_loader(self.stream.loader(sampler=sampler))):
                yield self.stream.check(split_item(item), i)
            return
        idx = torch.tensor(list(sampler), dtype=torch.long)
        for i in range(0, len(idx), self.batch_size):
            b = idx[i:i + self.batch_size]
            yield self.x[b], (self.y[b] if self.y is not None else None)
