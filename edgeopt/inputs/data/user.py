"""The user's own data: lists of batches, torch Datasets and DataLoaders, from the API or `--data
module:function`. Validated with one-line DataErrors (empty, shapes, NaN/Inf, labels); streamed data is
checked batch by batch as it is read."""

from __future__ import annotations

import random
from collections.abc import Iterable

import torch

from edgeopt.errors import DataError
from edgeopt.inputs.data.batches import Batches, StreamBatches, split_item
from edgeopt.inputs.feeding import checked_columns, split_inputs_target
from edgeopt.inputs.model_io import Inputs


def checker(name: str, sample_shape: tuple[int, ...] | Inputs, num_classes: int | None = None):
    """check(batch, index) -> (float inputs, long labels or None), or a one-line DataError. `sample_shape`:
    one input's sample shape, or the example Inputs of a model with several (batches become Inputs)."""
    if isinstance(sample_shape, Inputs):
        return _multi_checker(name, sample_shape, num_classes)

    def check(batch, i: int):
        x, y = batch
        x = torch.as_tensor(x, dtype=torch.float32)
        single = x.dim() == len(sample_shape)
        if single:
            x = x.unsqueeze(0)
        y = None if y is None else _target(y, single)
        if tuple(x.shape[1:]) != tuple(sample_shape):
            raise DataError(f"{name} batch {i} has sample shape {tuple(x.shape[1:])}, "
                            f"the model takes {tuple(sample_shape)}")
        if not torch.isfinite(x).all():
            raise DataError(f"{name} batch {i} contains NaN or Inf values")
        return x, _check_target(y, len(x), name, i, num_classes)

    return check


def _check_target(y, n: int, name: str, i: int, num_classes: int | None):
    if y is not None:
        if len(y) != n:
            raise DataError(f"{name} batch {i} has {n} inputs but {len(y)} labels")
        labels = isinstance(y, torch.Tensor) and y.dim() == 1
        if labels and num_classes is not None and len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise DataError(f"{name} batch {i} has labels outside 0..{num_classes - 1}")
    return y


def _multi_checker(name: str, tmpl: Inputs, num_classes: int | None):
    """Batches of a model with several inputs: a tuple or dict of inputs (with or without a target) ->
    (Inputs named like the model's, target)."""

    def check(batch, i: int):
        x, y = batch
        cols = checked_columns(x, tmpl, i, name)  # conforms, or a one-line DataError
        single = torch.as_tensor(tmpl.conform(x).first).dim() == tmpl.first.dim() - 1  # one sample, no batch axis
        y = None if y is None else _target(y, single)
        return tmpl.like(cols), _check_target(y, len(cols[0]), name, i, num_classes)

    return check


class PairCollate:
    """A DataLoader collate for a model with several inputs: whatever the samples look like ((x1, x2), y),
    (x1, x2) or {name: x}), the batch comes out as (inputs, target or None). A class: workers pickle it."""

    def __init__(self, inner, n_inputs: int):
        self.inner, self.n_inputs = inner, n_inputs

    def __call__(self, samples):
        return split_inputs_target(self.inner(samples), self.n_inputs)


def _target(y, single: bool):
    """Class labels -> (N,) long; dense targets (masks) -> (N, H, W) long; anything else (e.g. a detector's
    list of box dicts, read only by the user's metric) is kept as it is."""
    if isinstance(y, (list, tuple)) and y and not isinstance(y[0], (int, float)) and not torch.is_tensor(y[0]):
        return list(y) if not single else [y]
    t = torch.as_tensor(y)
    if t.is_floating_point() and not torch.equal(t, t.round()):
        raise DataError("targets must be class indices (integers), not fractional values")
    t = t.long()
    if single:
        return t.unsqueeze(0) if t.dim() >= 2 else t.reshape(-1)
    if t.dim() >= 3 or (t.dim() == 2 and t.shape[1] > 1):
        return t
    return t.reshape(-1)


def _is_map_dataset(obj) -> bool:
    from torch.utils.data import Dataset, IterableDataset

    return isinstance(obj, Dataset) and not isinstance(obj, IterableDataset) and hasattr(obj, "__len__")


def as_batches(data: Iterable | None, name: str, sample_shape: tuple[int, ...] | Inputs,
               num_classes: int | None = None, batch_size: int = 32, workers: int | None = None
               ) -> Batches | StreamBatches | None:
    """Batches (in memory), a StreamBatches, a map-style Dataset or a DataLoader over one (both streamed), or
    any iterable of tensors / (tensor, label) pairs (kept in memory). For a model with several inputs
    (`sample_shape` its example Inputs) an item is a tuple or dict of inputs, alone or with a target."""
    if data is None:
        return None
    check = checker(name, sample_shape, num_classes)
    n_inputs = len(sample_shape.names) if isinstance(sample_shape, Inputs) else 1
    stream = _as_stream(data, check, batch_size, workers, n_inputs)
    if stream is not None:
        stream.items[0]  # the first batch now: a wrong shape fails before any work, not mid-search
        return stream
    split = split_item if n_inputs == 1 else (lambda item: split_inputs_target(item, n_inputs))
    pairs = data.items if isinstance(data, Batches) else [split(item) for item in data]
    if not pairs:
        raise DataError(f"{name} is empty: give at least one batch")
    return Batches([check(p, i) for i, p in enumerate(pairs)], key=getattr(data, "key", None))


def _as_stream(data, check, batch_size: int, workers: int | None, n_inputs: int = 1) -> StreamBatches | None:
    from torch.utils.data import DataLoader

    if isinstance(data, StreamBatches):
        inner = data._check

        def both(batch, i):
            return check(inner(batch, i) if inner is not None else batch, i)

        data._check = both
        return data
    if isinstance(data, DataLoader) and _is_map_dataset(data.dataset):
        ds = data.dataset
        collate = data.collate_fn if n_inputs == 1 else PairCollate(data.collate_fn, n_inputs)
        return StreamBatches(ds, data.batch_size or 1, data.num_workers, labelled=_first_labelled(ds, n_inputs),
                             collate=collate, check=check)
    if _is_map_dataset(data):
        from torch.utils.data import default_collate

        collate = None if n_inputs == 1 else PairCollate(default_collate, n_inputs)
        return StreamBatches(data, batch_size, workers, labelled=_first_labelled(data, n_inputs), check=check,
                             targets=_targets(data), collate=collate)
    return None


def _first_labelled(ds, n_inputs: int = 1) -> bool:
    if len(ds) == 0:
        raise DataError("the dataset is empty: give at least one sample")
    return split_inputs_target(ds[0], n_inputs)[1] is not None


def _targets(ds) -> list[int] | None:
    """Labels a dataset knows without decoding (torchvision's ImageFolder and ours keep `targets`)."""
    t = getattr(ds, "targets", None)
    return list(t) if t is not None and len(t) == len(ds) else None


def calibration_sample(data, size: int, seed: int = 0) -> Batches | None:
    """Streamed calibration data -> an in-memory sample of `size` samples (calibration is read many times):
    stratified when the dataset knows its labels, else a seeded random sample."""
    if not isinstance(data, StreamBatches) or len(data) <= size:
        return _decode_all(data) if isinstance(data, StreamBatches) else data
    from torch.utils.data import Subset

    targets = _targets(data.dataset)
    rng = random.Random(seed + 1)
    if targets is not None:
        by_class: dict[int, list[int]] = {}
        for i, t in enumerate(targets):
            by_class.setdefault(int(t), []).append(i)
        picks = [rng.sample(v, max(1, round(size * len(v) / len(targets)))) for _, v in sorted(by_class.items())]
        idx = [p[i] for i in range(max(map(len, picks))) for p in picks if i < len(p)]
    else:
        idx = rng.sample(range(len(data)), size)
    sub = StreamBatches(Subset(data.dataset, idx), data.batch_size, data.workers, data.labelled,
                        collate=data.collate, check=data._check)
    return _decode_all(sub)


def _decode_all(stream: StreamBatches) -> Batches:
    return Batches(list(stream), key=stream.key)


def from_function(spec: str) -> dict:
    """`module:function` or `path/file.py:function` returning a dict with calib/train/eval (lists of batches,
    Datasets or DataLoaders; any may be missing), or a (calib, train, eval) tuple."""
    from edgeopt.inputs import usercode

    fn = usercode.load_callable(spec, "data function", DataError)
    result = usercode.call(fn, spec, "data function", DataError)
    if isinstance(result, (tuple, list)) and len(result) == 3:
        return dict(zip(("calib", "train", "eval"), result, strict=True))
    if isinstance(result, dict):
        unknown = set(result) - {"calib", "train", "eval", "calib_data", "train_data", "eval_data"}
        if unknown:
            raise DataError(f"{spec} returned unknown keys {sorted(unknown)}: use calib, train, eval")
        return {k.removesuffix("_data"): v for k, v in result.items()}
    raise DataError(f"{spec} must return a dict with calib/train/eval or a (calib, train, eval) tuple")
