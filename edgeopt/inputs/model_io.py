"""The structure of a model's inputs and outputs, normalized once.

Inputs: a tensor, a tuple/list of tensors (positional) or a dict name -> tensor (keyword) become an
`Inputs`: named, ordered tensors that know how to call the model, feed a runtime and make fresh random
batches of the same shapes. Outputs: tensors, tuples/lists and (nested) dicts of tensors are flattened into
an ordered dict with stable names ("output" for a lone tensor, "out"/"aux" for dict keys, "0.1" for nested
positions) that survive export, and can be re-nested. Anything else at a leaf is refused with its path."""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from edgeopt.errors import InputShapeError

SINGLE_INPUT = "input"  # the name a lone input has always had in exported artifacts
SINGLE_OUTPUT = "output"


@dataclass
class Inputs:
    names: list[str]
    tensors: list[torch.Tensor]
    keyword: bool = False  # given as a dict: the model is called with keyword arguments

    @classmethod
    def of(cls, example, model: nn.Module | None = None) -> Inputs:
        """Normalize an example (tensor, tuple/list of tensors, dict, or an Inputs) once."""
        if isinstance(example, Inputs):
            return example
        if isinstance(example, torch.Tensor):
            return cls([SINGLE_INPUT], [example])
        if isinstance(example, Mapping):
            if not example:
                raise InputShapeError("the example inputs are an empty dict")
            for k, v in example.items():
                if not isinstance(v, torch.Tensor):
                    raise InputShapeError(f"example input {k!r} is {type(v).__name__}, not a tensor")
            return cls([str(k) for k in example], list(example.values()), keyword=True)
        if isinstance(example, (tuple, list)):
            if not example:
                raise InputShapeError("the example inputs are an empty tuple")
            for i, v in enumerate(example):
                if not isinstance(v, torch.Tensor):
                    raise InputShapeError(f"example input {i} is {type(v).__name__}, not a tensor")
            if len(example) == 1:
                return cls([SINGLE_INPUT], [example[0]])
            return cls(_positional_names(model, len(example)), list(example))
        raise InputShapeError(f"example inputs must be a tensor, a tuple or a dict of tensors, not "
                              f"{type(example).__name__}")

    @classmethod
    def random(cls, shapes: Mapping[str, tuple[int, ...]] | tuple[int, ...], seed: int | None = None,
               keyword: bool = False) -> Inputs:
        """Random-normal inputs of the given shapes (a tuple for one input, name -> shape for several)."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        if not isinstance(shapes, Mapping):
            shapes = {SINGLE_INPUT: tuple(shapes)}
        return cls(list(shapes), [torch.randn(tuple(s), generator=gen) for s in shapes.values()],
                   keyword=keyword and len(shapes) > 1)

    @property
    def single(self) -> bool:
        return len(self.tensors) == 1 and not self.keyword

    @property
    def first(self) -> torch.Tensor:
        return self.tensors[0]

    @property
    def batch(self) -> int:
        return int(self.first.shape[0]) if self.first.dim() else 1

    @property
    def shape(self) -> torch.Size:
        """The first input's shape: code that only counts samples (len(batches), x.shape[0]) works on
        several inputs as on one."""
        return self.first.shape

    def __len__(self) -> int:
        return len(self.first)

    def __getitem__(self, index) -> Inputs:
        """A slice of the batch axis of every input (x[:n], x[i:j])."""
        return self.like([t[index] for t in self.tensors])

    def conform(self, given) -> Inputs:
        """`given` (a tensor, tuple/list, dict or Inputs: e.g. a calibration batch) under these names, in this
        order: a dict by name, a sequence by position. InputShapeError naming what does not fit."""
        if isinstance(given, Inputs):
            given = dict(zip(given.names, given.tensors, strict=True)) if given.keyword or set(
                given.names) == set(self.names) else given.tensors
        if isinstance(given, torch.Tensor):
            given = [given]
        if isinstance(given, Mapping):
            missing = [n for n in self.names if n not in given]
            extra = [str(k) for k in given if k not in self.names]
            if missing or extra:
                raise InputShapeError(f"inputs {sorted(map(str, given))} do not match the model's {self.names}"
                                      + (f" (missing {missing})" if missing else ""))
            given = [given[n] for n in self.names]
        if not isinstance(given, (tuple, list)) or len(given) != len(self.names):
            n = len(given) if isinstance(given, (tuple, list)) else 1
            raise InputShapeError(f"{n} input(s) given, the model takes {len(self.names)} "
                                  f"({', '.join(self.names)})")
        return self.like([torch.as_tensor(t) for t in given])

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: tuple(t.shape) for n, t in zip(self.names, self.tensors, strict=True)}

    def example(self):
        """The form the user gave: a tensor, a tuple, or a dict (for APIs that take PyTorch's convention)."""
        if self.keyword:
            return dict(zip(self.names, self.tensors, strict=True))
        return self.tensors[0] if self.single else tuple(self.tensors)

    def export_args(self) -> tuple:
        """torch.onnx.export / tracer args: positional tensors, or a trailing dict for keyword inputs."""
        return (dict(zip(self.names, self.tensors, strict=True)),) if self.keyword else tuple(self.tensors)

    def call(self, model: nn.Module):
        if self.keyword:
            return model(**dict(zip(self.names, self.tensors, strict=True)))
        return model(*self.tensors)

    def numpy(self) -> dict[str, np.ndarray]:
        return {n: np.ascontiguousarray(t.detach().float().numpy(), dtype=np.float32)
                for n, t in zip(self.names, self.tensors, strict=True)}

    def to(self, device, non_blocking: bool = False) -> Inputs:
        return self.like([t.to(device, non_blocking=non_blocking) for t in self.tensors])

    @classmethod
    def cat(cls, parts: list[Inputs]) -> Inputs:
        """Batches of the same inputs joined along the batch axis."""
        return parts[0].like([torch.cat(ts) for ts in zip(*(p.tensors for p in parts), strict=True)])

    def like(self, tensors: list[torch.Tensor]) -> Inputs:
        return Inputs(list(self.names), list(tensors), self.keyword)

    def fresh(self, gen: torch.Generator | None = None, batch: int | None = None) -> Inputs:
        """New random-normal inputs of the same shapes (batch size replaced when given)."""
        out = []
        for t in self.tensors:
            shape = (batch, *t.shape[1:]) if batch is not None and t.dim() else tuple(t.shape)
            out.append(torch.randn(shape, generator=gen))
        return self.like(out)

    def describe(self) -> str:
        return ", ".join(f"{n}:{','.join(map(str, s))}" for n, s in self.shapes.items())


def _positional_names(model: nn.Module | None, n: int) -> list[str]:
    """The forward() parameter names when they can be read, else input0, input1, ..."""
    names: list[str] = []
    if model is not None:
        try:
            params = list(inspect.signature(model.forward).parameters.values())
            names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][:n]
        except (TypeError, ValueError):
            names = []
    if len(names) < n or len(set(names)) < n:
        names = [f"input{i}" for i in range(n)]
    return names


def check_input_names(model: nn.Module, names: list[str]) -> None:
    """Named --input-shape entries must be arguments of the model's forward(): a name it does not take would
    otherwise surface only when the artifact is fed, after the whole search."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return
    if any(p.kind == p.VAR_KEYWORD for p in params) or (
            len(names) == 1 and any(p.kind == p.VAR_POSITIONAL for p in params)):
        return
    taken = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY, p.POSITIONAL_ONLY)]
    unknown = [n for n in names if n not in taken]
    if unknown:
        raise InputShapeError(f"--input-shape names an input {unknown[0]!r} the model does not take: its forward() "
                              f"takes ({', '.join(taken)}); name the input(s) after those")


def flatten_outputs(out, where: str = "the model") -> dict[str, torch.Tensor]:
    """Ordered name -> tensor for an output structure; InputShapeError naming the first non-tensor leaf."""
    if isinstance(out, torch.Tensor):
        return {SINGLE_OUTPUT: out}
    flat: dict[str, torch.Tensor] = {}
    _flatten(out, "", flat, where)
    if not flat:
        raise InputShapeError(f"{where} returns an empty {type(out).__name__}: it needs at least one output tensor")
    return flat


def _flatten(node, path: str, flat: dict, where: str) -> None:
    if isinstance(node, torch.Tensor):
        flat[path] = node
    elif isinstance(node, Mapping):
        for k, v in node.items():
            _flatten(v, f"{path}.{k}" if path else str(k), flat, where)
    elif isinstance(node, (tuple, list)):
        for i, v in enumerate(node):
            _flatten(v, f"{path}.{i}" if path else str(i), flat, where)
    else:
        raise InputShapeError(f"{where} returns {type(node).__name__} at output {path or '<root>'!r}; "
                              "every output must be a tensor (or a tuple/list/dict of tensors)")


def per_image_lists(out) -> bool:
    """Whether a model's output is one dict of detections per image (torchvision's detectors): each holds as
    many boxes as the detector finds, a count that follows the weights, so pruning may change it."""
    return isinstance(out, (list, tuple)) and bool(out) and all(isinstance(o, dict) for o in out)


def output_layout(out):
    """A template of the output structure (leaves replaced by their names), for `nest`."""
    if isinstance(out, torch.Tensor):
        return SINGLE_OUTPUT
    return _layout(out, "")


def _layout(node, path: str):
    if isinstance(node, Mapping):
        return {k: _layout(v, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
    if isinstance(node, (tuple, list)):
        return [_layout(v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(node)]
    return path


def nest(layout, values: Mapping[str, object]):
    """Re-nest named values (e.g. a runtime's numpy outputs) into the model's own output structure
    (tuples come back as lists)."""
    if isinstance(layout, str):
        return values[layout]
    if isinstance(layout, Mapping):
        return {k: nest(v, values) for k, v in layout.items()}
    return [nest(v, values) for v in layout]


def model_outputs(model: nn.Module, inputs: Inputs) -> dict[str, torch.Tensor]:
    """Run the model once (no grad) and flatten what it returns."""
    with torch.no_grad():
        return flatten_outputs(inputs.call(model))


def parse_input_shapes(specs: list[str] | tuple[str, ...] | str | None
                       ) -> tuple[int, ...] | dict[str, tuple[int, ...]] | None:
    """--input-shape values: `1,3,224,224` for one input, `image:1,3,224,224 mask:1,1,224,224` for several."""
    if specs is None:
        return None
    if isinstance(specs, str):
        specs = [specs]
    specs = [s for s in specs if s]
    if not specs:
        return None
    named: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        name, sep, dims = spec.rpartition(":")
        shape = _dims(dims, spec)
        if not sep:
            if len(specs) > 1:
                raise InputShapeError(f"--input-shape {spec!r}: with several inputs, name each one "
                                      "(e.g. image:1,3,224,224)")
            return shape
        if not name or name in named:
            raise InputShapeError(f"--input-shape {spec!r}: {'duplicate' if name else 'empty'} input name")
        named[name] = shape
    return named


def _dims(text: str, spec: str) -> tuple[int, ...]:
    shape = split_dims(text) or ()
    if not shape or any(d <= 0 for d in shape):
        raise InputShapeError(f"--input-shape {spec!r}: expected positive integers like 1,3,224,224")
    check_shape_size(shape, spec)
    return shape


def split_dims(text: str) -> tuple[int, ...] | None:
    """`1,3,224,224` or `1x3x224x224` as integers; None when any field is not one (an empty field too, so
    that `1,3,x,4` is refused rather than read as 1,3,4)."""
    try:
        return tuple(int(d) for d in re.split(r"[,x]", text.strip()))
    except ValueError:
        return None


def check_shape_size(shape: tuple[int, ...], spec: str) -> None:
    """Refuse a shape whose random example could not be allocated (one line, before any model is loaded)."""
    from edgeopt.config import shape_problem

    problem = shape_problem(shape)
    if problem:
        raise InputShapeError(f"--input-shape {spec!r}: {problem}")
