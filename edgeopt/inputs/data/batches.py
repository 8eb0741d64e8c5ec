"""The two shapes data takes inside edgeopt, with one interface (`items`, `inputs()`, `labels()`, `labelled`,
`len()`, `key`): `Batches`, batches already in memory, and `StreamBatches`, a map-style torch Dataset read
through a DataLoader one batch at a time, so memory is bounded by the batch size and the workers, not by the
dataset size."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from edgeopt.errors import DataError

# Streaming decodes and frees one batch after another. glibc raises its mmap threshold to the size of each freed
# mmapped block (up to 32 MB), so batch-sized tensors soon come from the heap, which fragments and never shrinks:
# measured on 2,400 streamed 224x224 images, resident memory grew by one batch (19 MB) per batch read, 584 ->
# 1,931 MB; with the threshold pinned at 1 MiB it stayed at 610-655 MB. Pinning it keeps memory bounded by
# the batch size, as streaming promises.
MMAP_THRESHOLD_BYTES = 1 << 20
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number in glibc's malloc.h
_pinned = False


def bound_allocator() -> None:
    """Pin glibc's mmap threshold (once per process); a no-op elsewhere (macOS, Windows, musl)."""
    global _pinned
    if _pinned:
        return
    _pinned = True
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):  # not glibc: its allocator has no such threshold to pin
        pass


def default_workers() -> int:
    """Decode in the main process unless asked (`--workers N`): forking worker processes out of a process whose
    runtimes (OpenVINO, ONNX Runtime) already run thread pools crashed the parent here (SIGSEGV), and decoding
    measured 2 % of a fine-tuning epoch in the main process."""
    return 0


@dataclass
class Batches:
    """Batched inputs with optional labels. `labelled` tells whether accuracy can be top-1. `key`, when set,
    identifies the data without hashing its pixels (e.g. a file list and the preprocessing)."""

    items: list[tuple[torch.Tensor, torch.Tensor | None]]
    key: str | None = None

    @property
    def labelled(self) -> bool:
        return bool(self.items) and all(y is not None for _, y in self.items)

    def inputs(self) -> list[torch.Tensor]:
        return [x for x, _ in self.items]

    def labels(self) -> torch.Tensor:
        return torch.cat([y for _, y in self.items])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        return iter(self.items)

    def __len__(self) -> int:
        return sum(x.shape[0] for x, _ in self.items)


def split_item(item) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A collated batch from a DataLoader ([x, y], (x, y) or x) -> (x, y or None)."""
    if isinstance(item, (tuple, list)):
        return item[0], (item[1] if len(item) > 1 else None)
    return item, None


class _LazyItems:
    """`StreamBatches.items`: iterating streams; `items[i]` and `items[:k]` decode only those batches."""

    def __init__(self, owner: StreamBatches):
        self.owner = owner

    def __iter__(self):
        return iter(self.owner)

    def __len__(self) -> int:
        return -(-len(self.owner) // self.owner.batch_size)

    def __getitem__(self, i):
        n = len(self)
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(n))]
        if not -n <= i < n:
            raise IndexError(i)
        i %= n
        b = self.owner.batch_size
        ds = self.owner.dataset
        samples = [ds[j] for j in range(i * b, min((i + 1) * b, len(ds)))]
        return self.owner.check(split_item(self.owner.collate(samples)), i)


class StreamBatches:
    """A map-style Dataset of (image, target) samples, read in a fixed order through a DataLoader with
    `workers` processes. `check(batch, index)` validates each batch as it streams (the caller's rules);
    `targets` (when the dataset knows them without decoding) give labels without reading the images."""

    def __init__(self, dataset, batch_size: int = 32, workers: int | None = None, labelled: bool = True,
                 key: str | None = None, collate: Callable | None = None,
                 check: Callable | None = None, targets: list[int] | None = None):
        from torch.utils.data import default_collate

        if len(dataset) == 0:
            raise DataError("the dataset is empty: give at least one sample")
        bound_allocator()
        self.dataset = dataset
        self.batch_size = max(1, int(batch_size))
        self.workers = default_workers() if workers is None else max(0, int(workers))
        self._labelled = labelled
        self.key = key
        self.collate = collate or default_collate
        self._check = check
        self._labels = torch.as_tensor(targets, dtype=torch.long) if targets is not None else None

    @property
    def labelled(self) -> bool:
        return self._labelled

    @property
    def items(self) -> _LazyItems:
        return _LazyItems(self)

    def check(self, batch, index: int):
        return self._check(batch, index) if self._check is not None else batch

    def loader(self, sampler=None, batch_size: int | None = None):
        from torch.utils.data import DataLoader

        # workers only when there is decoding to spread: forking costs more than a handful of samples
        workers = self.workers if len(self.dataset) > self.batch_size else 0
        return DataLoader(self.dataset, batch_size=batch_size or self.batch_size, shuffle=False, sampler=sampler,
                          num_workers=workers, collate_fn=self.collate, pin_memory=torch.cuda.is_available())

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        ys = []
        for i, item in enumerate(iter_loader(self.loader())):
            x, y = self.check(split_item(item), i)
            ys.append(y)
            yield x, y
        if self._labels is None and ys and all(y is not None for y in ys):
            self._labels = torch.cat(ys)  # the order is fixed: later passes need not decode for labels

    def inputs(self) -> Iterator[torch.Tensor]:
        return (x for x, _ in self)

    def labels(self) -> torch.Tensor:
        if self._labels is None:
            for _ in self:
                pass
        if self._labels is None:
            raise DataError("this data has no labels")
        return self._labels

    def __len__(self) -> int:
        return len(self.dataset)


def iter_loader(loader):
    """Iterate a DataLoader; a DataError raised in a worker comes back as one line (its own message), not
    wrapped in the worker's traceback."""
    try:
        yield from loader
    except DataError as e:
        text = str(e).strip().splitlines()
        last = text[-1] if text else ""
        raise DataError(last.split("DataError: ", 1)[-1]) from None


@dataclass
class DataSplits:
    """Calibration (PTQ, BN re-estimation), training (fine-tuning) and held-out evaluation data. Evaluation
    data is never used for calibration or fine-tuning. `heldout_hash` identifies the held-out file list
    (image folders) so that a rerun can show it evaluated on the same images."""

    calib: Batches | StreamBatches | None
    train: Batches | StreamBatches | None
    eval: Batches | StreamBatches | None
    source: str | None
    heldout_hash: str | None = None
    augmentation: str | None = None  # what fine-tuning's augmentation does and why, once decided on the model
    untrained: str | None = None  # why the training split is not used (the model cannot be distilled), if so
