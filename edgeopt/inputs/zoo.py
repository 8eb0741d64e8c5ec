"""Models named after the library that builds them: `torchvision:NAME`, `timm:NAME`, `ultralytics:yolov8n.yaml`
(or `ultralytics:best.pt`) and `smp:Unet`, each with `?key=value` keyword arguments. Architectures only, with
random weights: nothing is downloaded (weights=None, pretrained=False, encoder_weights=None); trained weights
come from the user's own files. A missing library is a one-line error naming the edgeopt extra that installs it;
an unknown architecture a one-line error with the closest names.

Output contracts: torchvision and timm models keep theirs. An Ultralytics model is its `nn.Module`
(DetectionModel, SegmentationModel, ...) in eval mode with its heads in export mode, the library's own switch
for deployment: a detector returns the head tensor alone, (batch, 4 + classes, anchors) with boxes as centre x,
centre y, width, height in input pixels and per-class scores after the sigmoid, no NMS (edgeopt scores and
exports that tensor; NMS is left to the application, and mAP decodes it with measure/detection.py); a
segmenter returns (that tensor with mask coefficients, prototypes). Without export mode the head would return
a (tensor, raw training maps) pair in eval mode, which no runtime needs."""

from __future__ import annotations

import contextlib
import difflib
import logging
from pathlib import Path

from torch import nn

from edgeopt.errors import ModelLoadError, first_line, missing_backend

ZOOS = ("torchvision", "timm", "ultralytics", "smp")
# the edgeopt extra that installs each optional library a model may need (to build it or to unpickle it)
LIBRARY_EXTRAS = {"timm": "timm", "ultralytics": "yolo", "segmentation_models_pytorch": "smp"}


def _did_you_mean(name: str, known, what: str) -> ModelLoadError:
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ModelLoadError(f"unknown {what} {name!r}{hint}")


def load_zoo(zoo: str, name: str, kwargs: dict, trust_pickle: bool = False) -> nn.Module:
    """The model `zoo:name?kwargs` with random weights (or, for `ultralytics:file.pt`, the checkpoint's)."""
    if zoo == "torchvision":
        return _torchvision(name, kwargs)
    if zoo == "timm":
        return _timm(name, kwargs)
    if zoo == "ultralytics":
        return ultralytics_model(name, kwargs, trust_pickle)
    return _smp(name, kwargs)


def _torchvision(name: str, kwargs: dict) -> nn.Module:
    import torchvision

    try:
        return torchvision.models.get_model(name, weights=None, **kwargs)
    except ValueError:
        raise _did_you_mean(name, torchvision.models.list_models(), "torchvision model") from None
    except TypeError as e:
        raise ModelLoadError(f"torchvision:{name}: bad keyword argument: {e}") from None


def _timm(name: str, kwargs: dict) -> nn.Module:
    try:
        import timm
    except ImportError:
        raise missing_backend("timm", "timm") from None
    if not timm.is_model(name):  # the architecture, with or without a pretrained tag (resnet18.a1_in1k)
        raise _did_you_mean(name, timm.list_models(), "timm model")
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except (RuntimeError, TypeError) as e:
        raise ModelLoadError(f"timm:{name}: {e}") from None


def _smp(name: str, kwargs: dict) -> nn.Module:
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        raise missing_backend("segmentation-models-pytorch", "smp") from None
    archs = {n for n in dir(smp) if isinstance(getattr(smp, n), type) and issubclass(getattr(smp, n), nn.Module)
             and n[:1].isupper()}
    if name not in archs:
        raise _did_you_mean(name, sorted(archs), "segmentation_models_pytorch architecture")
    if kwargs.get("encoder_weights") not in (None, "none", "None"):
        raise ModelLoadError(f"smp:{name}: encoder_weights={kwargs['encoder_weights']} would download weights; "
                             "edgeopt builds the architecture only: pass your trained weights with --weights")
    kwargs = {**kwargs, "encoder_weights": None}
    encoders = smp.encoders.get_encoder_names()
    if "encoder_name" in kwargs and kwargs["encoder_name"] not in encoders:
        raise _did_you_mean(str(kwargs["encoder_name"]), encoders, f"smp:{name} encoder_name")
    try:
        return getattr(smp, name)(**kwargs)
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        # smp names an unknown encoder in a long multi-line message: its first line suffices
        raise ModelLoadError(f"smp:{name}: {first_line(e, 200, with_type=False)}") from None


@contextlib.contextmanager
def _quiet():
    """Ultralytics logs its config overrides (`nc=80 with nc=3`) at INFO: not the run's output."""
    log = logging.getLogger("ultralytics")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def _ultralytics():
    try:
        import ultralytics  # noqa: F401
        from ultralytics.nn import tasks
    except ImportError:
        raise missing_backend("ultralytics", "yolo") from None
    return tasks


def _known_yamls() -> dict[str, Path]:
    """Every model name the installed Ultralytics can build from its bundled configs: `yolov8.yaml` and its
    scales (`yolov8n.yaml`, `yolov8s-seg.yaml`, ...), by name -> bundled file."""
    import ultralytics

    root = Path(ultralytics.__file__).parent / "cfg" / "models"
    names: dict[str, Path] = {}
    for f in root.rglob("*.yaml"):
        names[f.name] = f
        stem, dash, rest = f.stem.partition("-")
        if stem[-1:].isdigit():  # yolov8(-seg).yaml is built at the scales n, s, m, l, x
            for scale in "nsmlx":
                names[f"{stem}{scale}{dash}{rest}.yaml"] = f
    return names


def ultralytics_model(name: str, kwargs: dict, trust_pickle: bool) -> nn.Module:
    """`yolov8n.yaml` (a bundled or the user's own config: random weights) or a `.pt` checkpoint (a pickle:
    only with trust_pickle), in eval mode with export-mode heads (see the module's note)."""
    tasks = _ultralytics()
    if name.endswith((".pt", ".pth")):
        model = ultralytics_checkpoint(Path(name), trust_pickle)
    else:
        if not name.endswith((".yaml", ".yml")):
            raise ModelLoadError(f"ultralytics:{name}: name a model config (e.g. ultralytics:yolov8n.yaml) or a "
                                 "checkpoint (ultralytics:best.pt)")
        if not Path(name).is_file() and name not in _known_yamls():
            raise _did_you_mean(name, _known_yamls(), "Ultralytics model config")
        try:
            cfg = tasks.yaml_model_load(name)
        except Exception as e:
            raise ModelLoadError(f"ultralytics:{name}: {first_line(e, 200)}") from None
        task = tasks.guess_model_task(cfg)
        cls = {"detect": tasks.DetectionModel, "segment": tasks.SegmentationModel, "obb": tasks.OBBModel,
               "pose": tasks.PoseModel, "classify": tasks.ClassificationModel}.get(task)
        if cls is None:
            raise ModelLoadError(f"ultralytics:{name}: task {task!r} is not one edgeopt loads (detect, segment, "
                                 "obb, pose, classify)")
        try:
            with _quiet():
                model = cls(cfg, verbose=False, **kwargs)
        except TypeError as e:
            raise ModelLoadError(f"ultralytics:{name}: bad keyword argument: {e}") from None
        except Exception as e:
            raise ModelLoadError(f"ultralytics:{name}: {first_line(e, 200)}") from None
    return deployable(model)


def ultralytics_checkpoint(path: Path, trust_pickle: bool) -> nn.Module:
    """The model of an Ultralytics training checkpoint (a pickled dict holding the module under `ema` or
    `model`, in half precision), as float32."""
    from edgeopt.inputs.models import load_checkpoint_file

    _ultralytics()  # the pickle names Ultralytics' classes: say which extra is missing before unpickling
    obj = load_checkpoint_file(path, trust_pickle)
    model = checkpoint_module(obj)
    if model is None:
        raise ModelLoadError(f"{path} holds {type(obj).__name__} without a model under 'ema' or 'model': not an "
                             "Ultralytics checkpoint")
    return model


def checkpoint_module(obj) -> nn.Module | None:
    """The module of a training checkpoint dict (Ultralytics' layout: `ema`, else `model`) as float32, or None."""
    if not isinstance(obj, dict):
        return None
    model = obj.get("ema") if isinstance(obj.get("ema"), nn.Module) else obj.get("model")
    return model.float() if isinstance(model, nn.Module) else None


def deployable(model: nn.Module) -> nn.Module:
    """Eval mode, every Ultralytics head in export mode (its inference output alone, see the module's note)."""
    model.eval()
    for m in model.modules():
        if m is not model and isinstance(getattr(type(m), "export", None), bool):
            m.export = True
    return model
