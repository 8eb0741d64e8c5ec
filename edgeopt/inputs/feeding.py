"""Feeding data to a model whatever the form of its inputs: one batch called on the model (a tensor, named
`Inputs`, a tuple or a dict), a technique's batches read against the model's example inputs, and a data item
split into inputs and target and checked column by column."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from edgeopt.errors import DataError, InputShapeError
from edgeopt.inputs.model_io import Inputs


def run_model(model: nn.Module, x):
    """Call the model on one batch in whatever form the data holds it: a tensor, an `Inputs` (a model with
    several inputs), a tuple/list (positional) or a dict (keyword)."""
    if isinstance(x, Inputs):
        return x.call(model)
    if isinstance(x, Mapping):
        return model(**x)
    if isinstance(x, (tuple, list)):
        return model(*x)
    return model(x)


def join_batches(batches: list, max_elements: int):
    """The batches as one batch (a tensor, or `Inputs` for several inputs) along the batch axis; None when they
    are of other forms, do not agree, or would hold more than `max_elements` input values."""
    if all(isinstance(x, torch.Tensor) for x in batches):
        parts = [[x] for x in batches]
    elif all(isinstance(x, Inputs) for x in batches):
        parts = [x.tensors for x in batches]
    else:
        return None
    if not parts or sum(t.numel() for p in parts for t in p) > max_elements:
        return None
    if any(len(p) != len(parts[0]) or any(t.dim() == 0 for t in p) for p in parts):
        return None
    try:
        return torch.cat(batches) if isinstance(batches[0], torch.Tensor) else Inputs.cat(batches)
    except RuntimeError:  # sample shapes differ between batches
        return None


def batch_inputs(data, example: Inputs) -> list | None:
    """A technique's `data` (batches of inputs, or (inputs, target) pairs) with each batch's inputs as the
    model takes them: unchanged for a one-input model, named `Inputs` for several (so a bare (image, mask)
    tuple is read as two inputs, not as an input and a label)."""
    if data is None or example.single:
        return data
    out = []
    for item in data:
        x, y = split_inputs_target(item, len(example.names))
        out.append((example.conform(x), y))
    return out


def split_inputs_target(item, n_inputs: int = 1):
    """One data item -> (inputs, target or None), whatever the number of inputs: `x`, `(x, y)`, `[x, y]`,
    `{name: x, ...}`, `((x1, x2), y)`, `({name: x}, y)`, and for a model with several inputs a bare tuple of
    exactly that many tensors (its inputs, no target)."""
    if isinstance(item, (Inputs, Mapping, torch.Tensor, np.ndarray)):
        return item, None
    if isinstance(item, (tuple, list)):
        if n_inputs > 1 and len(item) == n_inputs and all(isinstance(t, (torch.Tensor, np.ndarray)) for t in item):
            return tuple(item), None
        return item[0], (item[1] if len(item) > 1 else None)
    return item, None


def checked_columns(x, tmpl: Inputs, i: int, what: str) -> list[torch.Tensor]:
    """One data batch (any input form) as float tensors in the template's input order, a lone sample given a
    batch axis; DataError naming the batch (and the input) for a wrong count, sample shape, NaN or Inf."""
    try:
        given = tmpl.conform(x)
    except InputShapeError as e:
        raise DataError(f"{what} batch {i}: {e}") from None
    cols = []
    for name, t, ref in zip(tmpl.names, given.tensors, tmpl.tensors, strict=True):
        t = torch.as_tensor(t, dtype=torch.float32)
        t = t.unsqueeze(0) if t.dim() == ref.dim() - 1 else t
        which = "" if len(tmpl.names) == 1 else f" input {name!r}"
        if tuple(t.shape[1:]) != tuple(ref.shape[1:]):
            raise DataError(f"{what} batch {i}{which} has sample shape {tuple(t.shape[1:])}, "
                            f"the model takes {tuple(ref.shape[1:])}")
        if not torch.isfinite(t).all():
            raise DataError(f"{what} batch {i}{which} contains NaN or Inf values")
        cols.append(t)
    if len({len(t) for t in cols}) > 1:
        raise DataError(f"{what} batch {i}: its inputs have different batch sizes {[len(t) for t in cols]}")
    return cols
