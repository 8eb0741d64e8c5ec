"""Model inputs: `demo`, library models (`torchvision:NAME?k=v`, `timm:NAME?k=v`, `ultralytics:yolov8n.yaml`,
`smp:Unet?encoder_name=resnet18`: inputs/zoo.py), `file.py:factory`, `pkg.module:factory`, `.pt2` (torch.export)
archives and full pickles, Ultralytics' .pt checkpoints among them (both only with trust_pickle). Weights load with
weights_only=True. Input files are only read, never written."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import torch
from torch import nn

from edgeopt.errors import ConfigError, InputShapeError, ModelLoadError, UnsafePickleError, first_line, missing_backend
from edgeopt.inputs import usercode
from edgeopt.inputs.model_io import Inputs
from edgeopt.inputs.safety import checkpoint_format, holds_objects
from edgeopt.inputs.zoo import LIBRARY_EXTRAS, ZOOS, checkpoint_module, deployable, load_zoo


@dataclass
class LoadedModel:
    model: nn.Module
    source: str
    input_shape: tuple[int, ...]  # the first (or only) input's
    info: dict[str, Any] = field(default_factory=dict)  # e.g. demo accuracy, training time
    input_shapes: dict[str, tuple[int, ...]] | None = None  # several named inputs (keyword arguments)


class ExportedModule(nn.Module):
    """Wraps a torch.export graph module, which was captured in eval mode and refuses .train()/.eval()."""

    def __init__(self, graph_module: nn.Module):
        super().__init__()
        self.graph = graph_module

    def train(self, mode: bool = True):
        self.training = mode  # deliberately not recursing: the exported graph's mode is fixed
        return self

    def forward(self, x):
        return self.graph(x)


def _literal(v: str) -> Any:
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def split_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """'torchvision:resnet18?num_classes=10' -> ('torchvision:resnet18', {'num_classes': 10})."""
    base, _, query = spec.partition("?")
    return base, {k: _literal(v) for k, v in parse_qsl(query, keep_blank_values=True)}


def parse_input_shape(text: str | list[str] | None) -> tuple[int, ...] | dict[str, tuple[int, ...]] | None:
    """`1,3,224,224`, or (repeated --input-shape) `image:1,3,224,224 mask:1,1,224,224` for named inputs."""
    if isinstance(text, (list, tuple)):
        if not text:
            return None
        if len(text) > 1 or ":" in text[0]:
            from edgeopt.inputs.model_io import parse_input_shapes

            return parse_input_shapes(list(text))
        text = text[0]
    if text is None:
        return None
    if ":" in text:
        from edgeopt.inputs.model_io import parse_input_shapes

        return parse_input_shapes([text])
    from edgeopt.inputs.model_io import check_shape_size, split_dims

    dims = split_dims(text)  # every field an integer: '1,3,x,4' is not 1,3,4
    if dims is None:
        raise InputShapeError(f"--input-shape {text!r} is not a list of integers like 1,3,224,224")
    if len(dims) < 2 or any(d <= 0 for d in dims):
        raise InputShapeError(f"--input-shape {text!r} needs at least 2 positive dims (batch first), "
                              "e.g. 1,3,224,224")
    check_shape_size(dims, text)
    return dims


def _from_factory(spec: str, kwargs: dict) -> nn.Module:
    """`file.py:factory` / `module:factory`: a factory called with the spec's keyword arguments, or a module
    object itself. Loaded by the one user-code loader (one-line ModelLoadError naming the spec)."""
    obj = usercode.load(spec, "model", ModelLoadError)
    if isinstance(obj, nn.Module):
        model = obj
    elif callable(obj):
        model = usercode.call(obj, spec, "model factory", ModelLoadError, **kwargs)
    else:
        model = obj
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _full_pickle_refusal(path: Path, what: str) -> UnsafePickleError:
    return UnsafePickleError(
        f"{path} is {what}: loading it runs arbitrary code. Save a state dict (torch.save(model.state_dict())) "
        "and pass it as --weights with a model spec, or pass --trust-pickle if you trust this file")


def load_checkpoint_file(path: Path, trust_pickle: bool) -> Any:
    if not path.is_file():
        raise ModelLoadError(f"file {path} does not exist")
    fmt = checkpoint_format(path)
    if fmt == "unknown":
        raise ModelLoadError(f"{path} is not a readable PyTorch checkpoint (neither a zip archive nor a pickle)")
    if fmt == "pickle":  # a plain pickle.dump: torch.load cannot read it, and only full unpickling can
        if not trust_pickle:
            raise _full_pickle_refusal(path, "a raw pickle file")
        import pickle

        try:
            with open(path, "rb") as f:
                return pickle.load(f)
        except Exception as e:
            raise ModelLoadError(f"cannot unpickle {path}: {first_line(e)}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        safe_error = e
    if not trust_pickle:
        if holds_objects(path, fmt):
            raise _full_pickle_refusal(path, "a full pickled object") from None
        raise ModelLoadError(f"{path} is not a readable PyTorch checkpoint ({first_line(safe_error, with_type=False)})"
                             ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except ModuleNotFoundError as e2:  # the pickle names a library's classes: say which extra installs it
        if (e2.name or "").split(".")[0] in LIBRARY_EXTRAS:
            lib = (e2.name or "").split(".")[0]
            raise missing_backend(lib, LIBRARY_EXTRAS[lib]) from None
        raise ModelLoadError(f"cannot load {path}: {first_line(e2)}") from None
    except Exception as e2:
        raise ModelLoadError(f"cannot load {path}: {first_line(e2)}") from None


def _load_pt2(path: Path, trust_pickle: bool) -> nn.Module:
    if checkpoint_format(path) != "zip":
        raise ModelLoadError(f"{path} is not a readable torch.export archive (not a zip archive)")
    if not trust_pickle:
        # torch.export.load unpickles records, evaluates symbolic-size expressions and runs guard code taken
        # from the archive, under names no allow-list can pin down: as unsafe as a pickle
        raise UnsafePickleError(f"{path}: loading a torch.export archive can run code stored in it (pickled "
                                "records, evaluated expressions); pass --trust-pickle if you trust this file")
    try:
        return ExportedModule(torch.export.load(str(path)).module())
    except (zipfile.BadZipFile, RuntimeError, ValueError, KeyError, AssertionError) as e:
        raise ModelLoadError(f"{path} is not a readable torch.export archive ({first_line(e, with_type=False)})"
                             ) from None


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load a state dict with weights_only=True; list the first mismatches on failure."""
    state = load_checkpoint_file(Path(path), trust_pickle=False)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{path} is not a state dict of tensors")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}")
        if shapes:
            parts.append(f"shape mismatches {shapes[:3]}{' ...' if len(shapes) > 3 else ''}")
        raise ModelLoadError(f"weights {path} do not match the model: " + "; ".join(parts))
    model.load_state_dict(state)


def load_model(spec: str | nn.Module = "demo", weights: str | Path | None = None,
               input_shape: tuple[int, ...] | None = None, trust_pickle: bool = False,
               progress=None) -> LoadedModel:
    if isinstance(spec, nn.Module):
        model, source, info, default_shape = spec, type(spec).__name__, {}, (1, 3, 224, 224)
    else:
        spec = spec.strip()
        base, kwargs = split_spec(spec)
        info: dict[str, Any] = {}
        default_shape = (1, 3, 224, 224)
        source = spec
        if base == "demo":
            from edgeopt.inputs.demo import DEMO_INPUT_SHAPE, load_demo

            model, info = load_demo(progress=progress)
            default_shape = DEMO_INPUT_SHAPE
        elif base.split(":", 1)[0] in ZOOS and ":" in base:
            zoo, name = base.split(":", 1)
            model = load_zoo(zoo, name, kwargs, trust_pickle)
        elif base.endswith(".pt2"):
            path = Path(base)
            if not path.is_file():
                raise ModelLoadError(f"model file {path} does not exist")
            model = _load_pt2(path, trust_pickle)
            info["exported_program"] = True
        elif base.endswith((".pt", ".pth", ".pkl", ".bin", ".ckpt")):
            obj = load_checkpoint_file(Path(base), trust_pickle)
            module = checkpoint_module(obj)  # a training checkpoint (Ultralytics' .pt): its model
            obj = obj if module is None else module
            if isinstance(obj, nn.Module):
                obj = deployable(obj)
            if not isinstance(obj, nn.Module):
                raise ModelLoadError(f"{base} holds {type(obj).__name__}, not a model: pass a model "
                                     "(torchvision:NAME, file.py:factory) and this file as --weights")
            model = obj
        elif ":" in base:
            model = _from_factory(base, kwargs)
        else:
            raise ConfigError(f"model {spec!r} not understood: use demo, torchvision:NAME, timm:NAME, "
                              "ultralytics:yolov8n.yaml, smp:Unet, "
                              "file.py:factory, package.module:factory or a .pt2 file")
    if weights is not None:
        load_weights(model, weights)
    if isinstance(input_shape, Inputs):  # the caller's own example: a tuple positional, a dict by name
        example = input_shape if input_shape.keyword else Inputs.of(tuple(input_shape.tensors), model)
        model.eval()
        check_forward(model, example)
        return LoadedModel(model, source, tuple(example.first.shape), info,
                           None if example.single else example.shapes)
    if isinstance(input_shape, dict):  # several named inputs (--input-shape name:dims): forward(**{name: tensor})
        shapes = {str(k): tuple(v) for k, v in input_shape.items()}
        if not isinstance(model, ExportedModule):  # an exported graph's forward(x) is our wrapper's
            from edgeopt.inputs.model_io import check_input_names

            check_input_names(model, list(shapes))
        model.eval()
        check_forward(model, shapes)
        return LoadedModel(model, source, next(iter(shapes.values())), info, shapes)
    shape = tuple(input_shape or default_shape)
    model.eval()
    check_forward(model, shape)
    return LoadedModel(model, source, shape, info)


def check_forward(model: nn.Module, shape: tuple[int, ...] | dict[str, tuple[int, ...]]):
    """Run one forward pass; a failure means the input shape is wrong for this model. The outputs may be a
    tensor, a tuple/list or a (nested) dict of tensors; any other leaf is refused, naming its path."""
    from edgeopt.inputs.model_io import flatten_outputs

    inputs = shape if isinstance(shape, Inputs) else Inputs.random(shape, keyword=True)
    try:
        with torch.no_grad():
            out = inputs.call(model)
    except Exception as e:
        where = inputs.describe() if isinstance(shape, (dict, Inputs)) else ",".join(map(str, shape))
        raise InputShapeError(f"the model fails on input shape {where}: {first_line(e, with_type=False)}") from None
    flatten_outputs(out)
    return out
