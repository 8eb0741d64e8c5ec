"""Forward hooks that never outlive the block that needs them.

Capturing what a layer sees or produces (reconstruction targets, feature distillation, latency-table shapes,
MAC counting, activation-based pruning criteria) is one pattern: register hooks, run the model, remove the
hooks however the run ends. A hook left behind keeps firing on every later forward pass (and keeps its
captured tensors alive), so every capture site goes through `forward_hooks` or `capture`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def forward_hooks(hooks: Iterable[tuple[nn.Module, Callable]], *, pre: bool = False,
                  with_kwargs: bool = False) -> Iterator[list]:
    """`(module, fn)` pairs hooked for the block: `fn(module, inputs, output)` after the module runs, or
    `fn(module, inputs)` before it with `pre=True`; `with_kwargs=True` passes the keyword arguments too
    (`fn(module, inputs, kwargs[, output])`). Yields the handles; every hook is removed on exit."""
    handles = []
    try:
        for module, fn in hooks:
            register = module.register_forward_pre_hook if pre else module.register_forward_hook
            handles.append(register(fn, with_kwargs=True) if with_kwargs else register(fn))
        yield handles
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def capture(model: nn.Module, names: Iterable[str], *, what: str = "output",
            transform: Callable | None = None) -> Iterator[dict[str, list]]:
    """Collect what the named submodules produce (`what="output"`) or receive as their first positional
    input (`what="input"`) on every forward pass inside the block: `{name: [value per call]}`. `transform`
    maps each value before it is kept (e.g. `lambda t: t.detach()` or a reduction, to keep memory small)."""
    if what not in ("output", "input"):
        raise ValueError(f"capture what={what!r}: use 'output' or 'input'")
    modules = dict(model.named_modules())
    names = list(names)
    missing = [n for n in names if n not in modules]
    if missing:
        raise KeyError(f"no submodule named {missing[0]!r}")
    seen: dict[str, list] = {n: [] for n in names}
    keep = transform or (lambda value: value)

    def hook_for(name: str) -> Callable:
        if what == "output":
            return lambda module, inputs, output: seen[name].append(keep(output))
        return lambda module, inputs: seen[name].append(
            keep(inputs[0]) if inputs and isinstance(inputs[0], torch.Tensor) else None)

    with forward_hooks(((modules[n], hook_for(n)) for n in names), pre=what == "input"):
        yield seen
