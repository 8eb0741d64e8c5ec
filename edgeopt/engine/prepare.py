"""The prepare step `plan` and `optimize` share: context -> target -> model -> analyze -> data. What the
planner may assume (calibration data, training data) comes from the resolved data, not a guess (the
pipeline's `plan_for`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from edgeopt.config import DataOptions, RunConfig, RunContext
from edgeopt.engine.phases import Phases
from edgeopt.errors import ConfigError, DataError
from edgeopt.formats import BACKENDS
from edgeopt.inputs.analyze import analyze
from edgeopt.inputs.data import DataSplits, data_form, resolve_data
from edgeopt.inputs.data.transforms import keep_flip_if_label_preserving
from edgeopt.inputs.model_io import Inputs
from edgeopt.inputs.models import LoadedModel, load_model
from edgeopt.registry import Registry
from edgeopt.targets import TargetProfile, detect_local, load_target
from edgeopt.techniques import TECHNIQUES
from edgeopt.training.modes import training_mode


class Progress:
    """No-op progress sink; the CLI passes a rich-backed one."""

    def stage(self, name: str, total: int | None = None) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def log(self, message: str) -> None: ...


@dataclass
class Prepared:
    """What `plan` and `optimize` both start from: the validated context, the target, the loaded and analysed
    model with its example inputs, and the resolved data."""

    config: RunConfig
    context: RunContext
    profile: TargetProfile
    local: TargetProfile
    loaded: LoadedModel
    ex: Inputs  # the example inputs, named (one tensor, a tuple or a dict of tensors)
    summary: object  # ModelSummary
    splits: DataSplits

    @property
    def example(self):
        """The example in PyTorch's own form (a tensor, a tuple or a dict)."""
        return self.ex.example()


def check_names(context: RunContext) -> RunContext:
    """Unknown technique or runtime names are errors with did-you-mean, before anything is loaded."""
    for t in context.techniques or ():
        TECHNIQUES.canonical(t)
    if not context.runtimes:
        return context
    runtimes: Registry = Registry("runtime")
    for _, b in BACKENDS.items():
        if b.runtime not in runtimes:
            runtimes.register(b.runtime, b)
    return context.model_copy(update={"runtimes": [runtimes.canonical(r) for r in context.runtimes]})


def prepare(config: RunConfig, model=None, example=None, eval_data=None, calib_data=None, train_data=None,
            progress: Progress | None = None, phases: Phases | None = None) -> Prepared:
    """context -> target -> model -> analyze -> data. `model`/`example`/`*_data`: objects the Python API
    passes in memory (they take the place of inputs.model / inputs.data). `phases`: where the time goes."""
    progress = progress or Progress()
    phases = phases or Phases()
    context = check_names(config.context())
    profile = load_target(context.target)
    local = detect_local()
    inputs = config.inputs
    spec = model if model is not None else inputs.model
    if spec is None:
        raise ConfigError("no model: give --model (inputs.model in a config file) or pass the model object")
    # loading a model can take minutes (the demo is trained on first use): what can be checked without it first
    check_inputs(inputs, in_memory=any(d is not None for d in (eval_data, calib_data, train_data)))
    progress.stage("loading model")
    shape = inputs.input_shape
    if example is not None:
        given = Inputs.of(example)
        shape = given.first.shape if given.single else given  # the example itself: a tuple stays positional
    elif isinstance(shape, list):
        shape = tuple(shape)
    elif isinstance(shape, dict):
        shape = {k: tuple(v) for k, v in shape.items()}
    with phases("load"):
        loaded = load_model(spec, weights=inputs.weights, input_shape=shape, trust_pickle=inputs.trust_pickle)
        ex = (Inputs.of(example, loaded.model) if example is not None else
              Inputs.random(loaded.input_shapes or loaded.input_shape, keyword=True))
    progress.stage("analyzing")
    with phases("analyze"):
        summary = analyze(loaded.model, ex)
    options = inputs.data_options.model_copy(update={"seed": context.seed})
    sample = tuple(ex.first.shape[1:]) if ex.single else ex  # several inputs: batches become named Inputs
    with phases("data"):
        splits = resolve_data(spec if isinstance(spec, str) else "module", inputs.data, calib_data, train_data,
                              eval_data, sample, summary.num_outputs, options, progress)
        if context.retrain and splits.train is not None:
            mode = training_mode(loaded.model, ex.example())
            if mode.mode == "none":
                splits.train, splits.untrained = None, f"the training split of --data is not used: {mode.reason}"
        if context.retrain:
            splits.augmentation = keep_flip_if_label_preserving(loaded.model, splits.train, splits.calib)
    return Prepared(config, context, profile, local, loaded, ex, summary, splits)


# data options that only an image folder (--data FOLDER, with or without --masks) reads: (flag, field)
FOLDER_OPTIONS = (("--image-size", "image_size"), ("--resize", "resize"), ("--crop", "crop"), ("--mean", "mean"),
                  ("--std", "std"), ("--val-split", "val_split"), ("--masks", "masks"))
# ... of which box data (a data.yaml, COCO JSON) reads these too (its images are resized whole and normalized;
# --resize/--crop are refused where it is read: a crop would cut its boxes)
BOX_DATA_OPTIONS = ("--image-size", "--mean", "--std", "--resize", "--crop")


def check_inputs(inputs, in_memory: bool = False) -> None:
    """What can be refused without the model, in one line: a --data that is no folder, 'digits',
    module:function or .npy file, an image folder without images (or with too few to hold some out), masks without their
    images, image-folder options given without an image folder (they would be ignored), a --metric or
    --data file that does not exist. Lists files only; nothing is decoded, imported or run."""
    from edgeopt.inputs import usercode
    from edgeopt.inputs.data.folder import folder_pairs

    data, opts = inputs.data, inputs.data_options
    folder = data is not None and os.path.isdir(str(data))
    given = [flag for flag, field in FOLDER_OPTIONS
             if getattr(opts, field) != DataOptions.model_fields[field].default]
    if given and not folder and data is not None and not in_memory and data_form(data) in ("yolo", "coco"):
        given = [flag for flag in given if flag not in BOX_DATA_OPTIONS]
    if given and not folder:
        if given[0] == "--masks":
            raise ConfigError("--masks needs --data with the image folder (same file stems as the masks)")
        where = "no --data was given" if data is None else f"--data {data!r} is not a folder"
        raise ConfigError(f"{given[0]} applies only to an image folder (--data FOLDER); {where}"
                          + (" and in-memory data is not resized" if in_memory else ""))
    from edgeopt.measure.accuracy import MAP_NAMES

    builtin = isinstance(inputs.metric, str) and inputs.metric.strip().lower() in MAP_NAMES
    for spec, what, error in ((None if builtin else inputs.metric, "metric function", ConfigError),
                              (data if data is not None and ":" in str(data) and not folder else None,
                               "data function", DataError)):
        if isinstance(spec, str):
            target, _ = usercode.split(spec, what, error)
            if target.endswith(".py") and not Path(target).is_file():
                raise error(f"cannot load {what} {spec}: file {target} does not exist")
    if data_form(data) != "folder":  # digits, module:function, .npy or none; anything else refused here
        return
    if opts.masks is not None:
        from edgeopt.inputs.masks import pair_files

        pair_files(Path(data), Path(opts.masks))
        return
    _, train, held, _ = folder_pairs(Path(data), opts.val_split, 0)
    if not held or not train:
        raise DataError(f"--data {data}: too few images to hold out {opts.val_split:.0%} for evaluation")


