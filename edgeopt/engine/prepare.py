"""The prepare step `plan` and `optimize` share: context -> target -> model -> analyze -> data. What the
planner may assume (calibration data, training data) comes from the resolved data, not a guess (the
pipeline's `plan_for`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from edgeopt.config import DataOptions, RunConfig, RunContext
from edgeopt.errors import ConfigError, DataError, one_line
from edgeopt.formats import BACKENDS
from edgeopt.inputs.analyze import analyze
from edgeopt.inputs.data import (
    DataSplits,
    as_batches,
    calibration_sample,
    digits_data,
    folder_splits,
    from_function,
    make_preprocess,
)
from edgeopt.inputs.model_io import Inputs
from edgeopt.inputs.models import LoadedModel, load_model
from edgeopt.registry import Registry
from edgeopt.targets import TargetProfile, detect_local, load_target
from edgeopt.techniques import TECHNIQUES


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
            progress: Progress | None = None) -> Prepared:
    """context -> target -> model -> analyze -> data. `model`/`example`/`*_data`: objects the Python API
    passes in memory (they take the place of inputs.model / inputs.data)."""
    progress = progress or Progress()
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
    loaded = load_model(spec, weights=inputs.weights, input_shape=shape, trust_pickle=inputs.trust_pickle)
    ex = (Inputs.of(example, loaded.model) if example is not None else
          Inputs.random(loaded.input_shapes or loaded.input_shape, keyword=True))
    progress.stage("analyzing")
    summary = analyze(loaded.model, ex)
    options = inputs.data_options.model_copy(update={"seed": context.seed})
    sample = tuple(ex.first.shape[1:]) if ex.single else ex  # several inputs: batches become named Inputs
    splits = resolve_data(spec if isinstance(spec, str) else "module", inputs.data, calib_data, train_data,
                          eval_data, sample, summary.num_outputs, options, progress)
    return Prepared(config, context, profile, local, loaded, ex, summary, splits)


# data options that only an image folder (--data FOLDER, with or without --masks) reads: (flag, field)
FOLDER_OPTIONS = (("--image-size", "image_size"), ("--resize", "resize"), ("--crop", "crop"), ("--mean", "mean"),
                  ("--std", "std"), ("--val-split", "val_split"), ("--masks", "masks"))


def check_inputs(inputs, in_memory: bool = False) -> None:
    """What can be refused without the model, in one line: a --data that is no folder, 'digits' or
    module:function, an image folder without images (or with too few to hold some out), masks without their
    images, image-folder options given without an image folder (they would be ignored), a --metric or
    --data file that does not exist. Lists files only; nothing is decoded, imported or run."""
    from edgeopt.inputs import usercode
    from edgeopt.inputs.data.folder import list_folder, stratified_split

    data, opts = inputs.data, inputs.data_options
    folder = data is not None and os.path.isdir(str(data))
    given = [flag for flag, field in FOLDER_OPTIONS
             if getattr(opts, field) != DataOptions.model_fields[field].default]
    if given and not folder:
        if given[0] == "--masks":
            raise ConfigError("--masks needs --data with the image folder (same file stems as the masks)")
        where = "no --data was given" if data is None else f"--data {data!r} is not a folder"
        raise ConfigError(f"{given[0]} applies only to an image folder (--data FOLDER); {where}"
                          + (" and in-memory data is not resized" if in_memory else ""))
    for spec, what, error in ((inputs.metric, "metric function", ConfigError),
                              (data if data is not None and ":" in str(data) and not folder else None,
                               "data function", DataError)):
        if isinstance(spec, str):
            target, _ = usercode.split(spec, what, error)
            if target.endswith(".py") and not Path(target).is_file():
                raise error(f"cannot load {what} {spec}: file {target} does not exist")
    if data is None or data == "digits" or (":" in str(data) and not folder):
        return
    if not folder:
        raise ConfigError(f"--data {data!r} is neither 'digits', an existing image folder, nor module:function")
    if opts.masks is not None:
        from edgeopt.inputs.masks import pair_files

        pair_files(Path(data), Path(opts.masks))
        return
    _, files = list_folder(Path(data))
    train, held = stratified_split(files, opts.val_split, 0)
    if not held or not train:
        raise DataError(f"--data {data}: too few images to hold out {opts.val_split:.0%} for evaluation")


def resolve_data(spec: str, data, calib_data, train_data, eval_data, sample_shape, num_classes,
                 data_options: dict | DataOptions | None = None, progress: Progress | None = None) -> DataSplits:
    """--data digits | image folder (+ --masks folder) | module:function, or the API's batches / Datasets /
    DataLoaders; validated one batch at a time. Calibration read from a stream becomes a stratified in-memory
    sample (`calib_size`). `sample_shape`: one input's sample shape, or the example Inputs of a model with
    several inputs (then only module:function or in-memory data, whose items are tuples/dicts of inputs)."""
    opts = _data_options(data_options)
    if isinstance(sample_shape, Inputs) and data is not None and ":" not in str(data):
        raise ConfigError(f"--data {data}: a model with several inputs ({', '.join(sample_shape.names)}) takes "
                          "module:function data whose batches are tuples or dicts of inputs")
    if opts.masks is not None:
        from edgeopt.inputs.masks import mask_folder

        if data is None or not os.path.isdir(str(data)):
            raise ConfigError("--masks needs --data with the image folder (same file stems as the masks)")
        size = opts.image_size or tuple(sample_shape[1:])
        return mask_folder(str(data), opts.masks, (size, size) if isinstance(size, int) else size,
                           sample_shape[0], tuple(opts.mean or (0.5,)), tuple(opts.std or (0.5,)),
                           val_split=opts.val_split, seed=opts.seed, num_classes=num_classes)
    if data == "digits" or (data is None and spec == "demo" and calib_data is None and eval_data is None):
        calib, ev = digits_data()
        return DataSplits(calib, calib, ev, "digits")  # fine-tuning and calibration use the training split
    heldout_hash = None
    if data is not None:
        data = str(data)
        if os.path.isdir(data):
            pre = make_preprocess(sample_shape, opts.image_size, opts.resize, opts.crop, opts.mean, opts.std,
                                  opts.augment)
            splits = folder_splits(Path(data), pre, opts.val_split, opts.seed, opts.batch_size, opts.calib_size,
                                   opts.workers, progress)
            calib_data, train_data, eval_data = splits.calib, splits.train, splits.eval
            source, heldout_hash = splits.source, splits.heldout_hash
        elif ":" in data:
            got = from_function(data)
            calib_data, train_data, eval_data = got.get("calib"), got.get("train"), got.get("eval")
            source = f"function:{data}"
        else:
            raise ConfigError(f"--data {data!r} is neither 'digits', an image folder, nor module:function")
    else:
        source = "user" if (calib_data is not None or eval_data is not None or train_data is not None) else None
    kw = {"batch_size": opts.batch_size, "workers": opts.workers}
    calib = as_batches(calib_data, "calibration data", sample_shape, num_classes, **kw)
    return DataSplits(calibration_sample(calib, opts.calib_size, opts.seed),
                      as_batches(train_data, "training data", sample_shape, num_classes, **kw),
                      as_batches(eval_data, "evaluation data", sample_shape, num_classes, **kw), source,
                      heldout_hash)


def _data_options(options) -> DataOptions:
    if isinstance(options, DataOptions):
        return options
    try:
        return DataOptions(**{k: v for k, v in (options or {}).items() if v is not None})
    except ValidationError as e:
        raise one_line(e, "invalid data option", DataOptions) from None
