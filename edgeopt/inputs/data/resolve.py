"""The one `--data` resolver, for the command line and the API alike: 'digits', an image folder (with
`--masks`; a flat one is unlabelled), a folder holding `images/` and `masks/` (segmentation), a YOLO-layout
data.yaml or a COCO JSON file (boxes), `module:function`, a .npy file of inputs, or the API's own batches /
Datasets / DataLoaders, turned into validated calibration / training / evaluation splits."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import ValidationError

from edgeopt.config import DataOptions
from edgeopt.errors import ConfigError, DataError, first_line, one_line
from edgeopt.inputs.data.batches import DataSplits
from edgeopt.inputs.data.coco import coco_splits
from edgeopt.inputs.data.digits import digits_data
from edgeopt.inputs.data.folder import folder_splits
from edgeopt.inputs.data.transforms import make_preprocess
from edgeopt.inputs.data.user import as_batches, calibration_sample, from_function
from edgeopt.inputs.data.yolo import YAML_SUFFIXES, yolo_splits
from edgeopt.inputs.model_io import Inputs

DATA_FORMS = ("'digits', an existing image folder, a YOLO data.yaml, a COCO JSON file, a .npy file of inputs "
              "(N,C,H,W), nor module:function")
MASK_LAYOUT = ("images", "masks")  # a folder holding exactly these two: segmentation pairs, not two classes


def data_form(data) -> str | None:
    """Which form a --data value has: "digits" | "folder" | "masks" | "yolo" | "coco" | "function" | "npy" (None
    when not given), or a one-line ConfigError. Looks at the name and the file system only; nothing is read."""
    if data is None:
        return None
    text = str(data)
    if text == "digits":
        return "digits"
    if os.path.isdir(text):
        subs = sorted(p.name for p in Path(text).iterdir() if p.is_dir())
        return "masks" if subs == list(MASK_LAYOUT) else "folder"
    if Path(text).suffix in YAML_SUFFIXES and ":" not in Path(text).name:
        if not Path(text).is_file():
            raise ConfigError(f"--data {text!r}: no such data.yaml (the YOLO layout: path, train, val, names)")
        return "yolo"
    if Path(text).suffix.lower() == ".json" and ":" not in Path(text).name:
        if not Path(text).is_file():
            raise ConfigError(f"--data {text!r}: no such COCO JSON file (images, annotations, categories)")
        return "coco"
    if ":" in text:
        return "function"
    if Path(text).suffix == ".npy":
        if not Path(text).is_file():
            raise ConfigError(f"--data {text!r}: no such .npy file (an array of inputs shaped N,C,H,W)")
        return "npy"
    raise ConfigError(f"--data {text!r} is neither {DATA_FORMS}")


def resolve_data(spec: str, data, calib_data, train_data, eval_data, sample_shape, num_classes,
                 data_options: dict | DataOptions | None = None, progress=None) -> DataSplits:
    """--data digits | image folder (+ --masks folder, or images/ + masks/) | a YOLO data.yaml | a COCO JSON file |
    module:function | inputs.npy, or the API's batches /
    Datasets / DataLoaders; validated one batch at a time. Calibration read from a stream becomes a stratified
    in-memory sample (`calib_size`). `sample_shape`: one input's sample shape, or the example Inputs of a
    model with several inputs (then only module:function or in-memory data, whose items are tuples/dicts of
    inputs). A .npy file holds unlabelled inputs: calibration only. `spec` "demo" without data: digits."""
    opts = _data_options(data_options)
    if isinstance(sample_shape, Inputs) and data is not None and ":" not in str(data):
        raise ConfigError(f"--data {data}: a model with several inputs ({', '.join(sample_shape.names)}) takes "
                          "module:function data whose batches are tuples or dicts of inputs")
    masks_in = data is not None and opts.masks is None and os.path.isdir(str(data)) and data_form(data) == "masks"
    if opts.masks is not None or masks_in:
        from edgeopt.inputs.masks import mask_folder

        if data is None or not os.path.isdir(str(data)):
            raise ConfigError("--masks needs --data with the image folder (same file stems as the masks)")
        if masks_in:  # DIR/images + DIR/masks
            data, opts = Path(str(data)) / "images", opts.model_copy(update={"masks": str(Path(str(data)) / "masks")})
        size = opts.image_size or tuple(sample_shape[1:])
        return mask_folder(str(data), opts.masks, (size, size) if isinstance(size, int) else size,
                           sample_shape[0], tuple(opts.mean or (0.5,)), tuple(opts.std or (0.5,)),
                           val_split=opts.val_split, seed=opts.seed, num_classes=num_classes)
    form = data_form(data)
    if form == "digits" or (data is None and spec == "demo" and calib_data is None and eval_data is None):
        calib, ev = digits_data()
        return DataSplits(calib, calib, ev, "digits")  # fine-tuning and calibration use the training split
    heldout_hash = None
    if form == "folder":
        pre = make_preprocess(sample_shape, opts.image_size, opts.resize, opts.crop, opts.mean, opts.std,
                              opts.augment)
        splits = folder_splits(Path(str(data)), pre, opts.val_split, opts.seed, opts.batch_size, opts.calib_size,
                               opts.workers, progress)
        calib_data, train_data, eval_data = splits.calib, splits.train, splits.eval
        source, heldout_hash = splits.source, splits.heldout_hash
    elif form in ("yolo", "coco"):
        if opts.resize is not None or opts.crop is not None:
            raise ConfigError("--resize/--crop do not apply to box data: a data.yaml's images are resized to the "
                              "model's input whole (the boxes with them)")
        pre = make_preprocess(sample_shape, opts.image_size, None, None, opts.mean or (0.0,), opts.std or (1.0,),
                              False)
        if form == "yolo":
            splits = yolo_splits(Path(str(data)), pre, opts.seed, opts.batch_size, opts.calib_size, progress,
                                 workers=opts.workers)
        else:
            splits = coco_splits(Path(str(data)), pre, opts.seed, opts.batch_size, opts.calib_size, progress)
        calib_data, train_data, eval_data = splits.calib, splits.train, splits.eval
        source, heldout_hash = splits.source, splits.heldout_hash
    elif form == "function":
        got = from_function(str(data))
        calib_data, train_data, eval_data = got.get("calib"), got.get("train"), got.get("eval")
        source = f"function:{data}"
    elif form == "npy":
        calib_data, train_data, eval_data = [_read_npy(Path(str(data)))], None, None
        source = f"npy:{data}"
    else:
        source = "user" if (calib_data is not None or eval_data is not None or train_data is not None) else None
    kw = {"batch_size": opts.batch_size, "workers": opts.workers}
    calib = as_batches(calib_data, "calibration data", sample_shape, num_classes, **kw)
    ev = as_batches(eval_data, "evaluation data", sample_shape, num_classes, **kw)
    # box data's classes: a raw head's score channels (measure/detection.py), and whether the first class is a
    # background, which decides how a torchvision detector's labels are read (engine/holdout.py)
    for attr in ("num_classes", "class_names"):
        if ev is not None and getattr(eval_data, attr, None):
            setattr(ev, attr, getattr(eval_data, attr))
    return DataSplits(calibration_sample(calib, opts.calib_size, opts.seed),
                      as_batches(train_data, "training data", sample_shape, num_classes, **kw), ev, source,
                      heldout_hash)


def _read_npy(path: Path):
    import numpy as np
    import torch

    try:
        arr = np.load(path, allow_pickle=False)  # never unpickle user files
    except Exception as e:
        raise DataError(f"--data {path} is not a readable .npy array: {first_line(e, 120, with_type=False)}") from None
    return torch.from_numpy(np.asarray(arr, dtype=np.float32))


def _data_options(options) -> DataOptions:
    if isinstance(options, DataOptions):
        return options
    try:
        return DataOptions(**{k: v for k, v in (options or {}).items() if v is not None})
    except ValidationError as e:
        raise one_line(e, "invalid data option", DataOptions) from None
