"""Which intermediate features feature/relation distillation compares, and how they are captured.

After structured pruning the student keeps the teacher's module names (channels are cut, modules are not
renamed), so the correspondence is by name. By default we take the end of each resolution stage among the
top-level modules both models share (for a ResNet: layer2, layer3, layer4), since stage outputs carry the
representation and are cheap to match; the user may name layers instead. The penultimate embedding (RKD)
is the input of the classifier (the last Linear)."""

from __future__ import annotations

from contextlib import ExitStack

import torch
from torch import nn

from edgeopt.errors import ConfigError
from edgeopt.inputs.feeding import run_model
from edgeopt.inputs.hooks import capture, forward_hooks


def _top_level(model: nn.Module) -> dict[str, nn.Module]:
    return dict(model.named_children())


def _outputs(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    with capture(model, names) as seen, torch.no_grad():
        run_model(model.eval(), x)
    return seen


def match_layers(student: nn.Module, teacher: nn.Module, example: torch.Tensor,
                 names: list[str] | None = None, max_layers: int = 3) -> list[str]:
    """Module names to compare. User-named layers must exist in both models and yield a tensor."""
    s_mods, t_mods = dict(student.named_modules()), dict(teacher.named_modules())
    if names:
        missing = [n for n in names if n not in s_mods or n not in t_mods]
        if missing:
            raise ConfigError(f"feature layers not found in both student and teacher: {', '.join(missing)}")
        return list(names)
    common = [n for n in _top_level(teacher) if n in _top_level(student)]
    out = _outputs(teacher, common, example)
    # a module called once, producing a 4-D map; modules reused (e.g. a shared ReLU) are ambiguous
    # (a 1x1 map after global pooling carries no spatial structure to transfer)
    maps = [(n, o[0]) for n, o in out.items() if len(o) == 1 and torch.is_tensor(o[0]) and o[0].dim() == 4
            and o[0].shape[-1] * o[0].shape[-2] > 1]
    stage_end: dict[tuple[int, int], str] = {}
    for n, o in maps:
        stage_end[tuple(o.shape[-2:])] = n  # later modules at the same resolution overwrite earlier ones
    chosen = list(stage_end.values())[-max_layers:]
    if not chosen:
        raise ConfigError("no feature maps shared by student and teacher: name them with feature_layers=[...]")
    return chosen


def classifier(model: nn.Module) -> nn.Module:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError("relation distillation needs a Linear classifier (its input is the embedding)")
    return linears[-1]


class Capture:
    """Records the named outputs (features) and the classifier's input (embedding) of the latest forward
    pass, across training steps, while inside `with capture:` (the hooks are removed however training
    ends)."""

    def __init__(self, model: nn.Module, names: list[str], embedding: bool):
        mods = dict(model.named_modules())
        self.feats: dict[str, torch.Tensor] = {}
        self.embedding: torch.Tensor | None = None
        self._feature_hooks = [(mods[n], self._keep(n)) for n in names]
        self._embedding_hooks = [(classifier(model), self._keep_input)] if embedding else []
        self._hooked: ExitStack | None = None

    def __enter__(self) -> Capture:
        with ExitStack() as stack:
            stack.enter_context(forward_hooks(self._feature_hooks))
            stack.enter_context(forward_hooks(self._embedding_hooks, pre=True))
            self._hooked = stack.pop_all()
        return self

    def __exit__(self, *exc) -> None:
        hooked, self._hooked = self._hooked, None
        if hooked is not None:
            hooked.close()

    def _keep(self, name):
        def hook(m, i, o):
            self.feats[name] = o
        return hook

    def _keep_input(self, m, i):
        self.embedding = i[0]


def make_adapters(student: nn.Module, teacher: nn.Module, names: list[str], example: torch.Tensor) -> nn.ModuleDict:
    """A learned 1x1 conv (4-D maps) or Linear per layer, student channels -> teacher channels (FitNets)."""
    so, to = _outputs(student, names, example), _outputs(teacher, names, example)
    adapters = nn.ModuleDict()
    for n in names:
        s, t = so[n][-1], to[n][-1]
        key = n.replace(".", "__")
        if s.dim() == 4:
            adapters[key] = nn.Conv2d(s.shape[1], t.shape[1], 1, bias=False)
        else:
            adapters[key] = nn.Linear(s.shape[-1], t.shape[-1], bias=False)
    return adapters


class DistillStudent(nn.Module):
    """The trainable unit: student + adapters. forward returns (logits, adapted features, embedding), so one
    module (and, under torchrun, one DistributedDataParallel wrapper) owns every trained parameter. It runs
    inside `with unit.capture:` (the hooks that collect the features)."""

    def __init__(self, student: nn.Module, names: list[str], adapters: nn.ModuleDict | None, embedding: bool):
        super().__init__()
        self.student = student
        self.adapters = adapters if adapters is not None else nn.ModuleDict()
        self.names = names
        self.capture = Capture(student, names, embedding)

    def forward(self, x):
        out = run_model(self.student, x)
        feats = {}
        for n in self.names:
            f = self.capture.feats[n]
            key = n.replace(".", "__")
            feats[n] = self.adapters[key](f) if key in self.adapters else f
        return out, feats, self.capture.embedding
