"""The options `optimize` and `plan` share, and how they become one RunConfig: a `--config` file (or the
defaults), then every flag given explicitly on the command line on top. A new run option is a
`typer.Option` here plus one row in FLAGS."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from edgeopt.cli.common import parse_list

MODEL_HELP = ("demo (built-in, default), torchvision:NAME?num_classes=10, timm:NAME, ultralytics:yolov8n.yaml, "
              "smp:Unet?encoder_name=resnet18, path/file.py:factory, "
              "package.module:factory, or a torch.export .pt2 file. file.py:factory and module:factory "
              "IMPORT AND RUN that code: use only code you trust")

CONFIG = typer.Option(None, "--config", help="a run config (YAML), e.g. OUT/run.yaml saved by an earlier run; "
                      "flags given explicitly override its values")
MODEL = typer.Option("demo", help=MODEL_HELP)
WEIGHTS = typer.Option(None, help="state dict (.pth) loaded with weights_only=True")
INPUT_SHAPE = typer.Option(None, help="example input shape, batch first, e.g. 1,3,224,224; for several inputs "
                           "repeat it with names: --input-shape image:1,3,224,224 --input-shape mask:1,1,224,224")
TRUST_PICKLE = typer.Option(False, help="allow loading a full pickled model or a .pt2 archive (runs its code); "
                            "taken only from the command line, never from --config")
TARGET = typer.Option("local", help="target profile name/alias, a YAML file, or 'local'")
GOAL = typer.Option("latency", help="latency (batch 1, one request) | size | throughput (images/s under the load "
                    "of --batch-size and/or --streams; --latency-budget-ms is then the p99 of one request under it)")
STREAMS = typer.Option(None, help="--goal throughput: requests in flight at once (OpenVINO THROUGHPUT-hint streams, "
                       "concurrent ONNX Runtime sessions, TensorRT execution contexts); default: the runtime's "
                       "choice")
MAX_DROP = typer.Option(1.0, help="accuracy budget in percentage points")
RETRAIN = typer.Option(False, "--retrain/--no-retrain", help="may the model be fine-tuned? (adds Network Slimming, "
                       "IMP rewound by linear mode connectivity for size goals; the distillation kind is chosen "
                       "by a short measured screen; pruning with reconstruction is searched without fine-tuning "
                       "first, and fine-tuned only beyond the level it holds)")
FROM_SCRATCH = typer.Option(False, "--from-scratch", help="the model may be trained from scratch (implies "
                            "--retrain): pruning at initialisation (SNIP, GraSP, SynFlow) for size goals")
LATENCY_BUDGET = typer.Option(None, help="reject candidates slower than this p50 (the search stops early once "
                              "met with margin); with --goal throughput: the p99 of one request under the load")
SIZE_BUDGET = typer.Option(None, help="reject candidates larger than this on disk (compressed)")
TECHNIQUES = typer.Option(None, help="restrict to these techniques, comma separated")
RUNTIMES = typer.Option(None, help="restrict to these runtimes, e.g. onnxruntime,openvino")
DATA = typer.Option(None, help="'digits' (built-in; default for the demo), an image folder (one sub-folder per "
                    "class; train/ + val/ of them: val/ held out; images/ + masks/ for segmentation; a flat "
                    "folder: fidelity), a YOLO data.yaml (boxes: mAP@0.5 and mAP@0.5:0.95; with --retrain its train "
                    "images distil the compressed detector) or a "
                    "COCO JSON file (boxes), a .npy file of inputs shaped N,C,H,W "
                    "(calibration only), or module:function / "
                    "file.py:function returning {'calib','train','eval'} iterables (IMPORTS AND RUNS that code: "
                    "only code you trust); for several inputs each batch is a tuple or dict of inputs, alone or "
                    "with a target: ((image, mask), y)")
MASKS = typer.Option(None, help="segmentation: a folder of masks (class index per pixel) with the same file stems "
                     "as the images in --data; accuracy is then mIoU")
METRIC = typer.Option(None, help="map50 or map (mAP@0.5 / mAP@0.5:0.95 of box data; both are reported), or your "
                      "metric, file.py:fn or module:fn (IMPORTS AND RUNS that code): "
                      "fn(outputs, targets) -> score in %, higher is better (e.g. mAP with your own box decoding); "
                      "needs --data with held-out targets. --max-accuracy-drop is in points of it")
RESIZE = typer.Option(None, help="image folder: resize the shorter side to this, then center-crop (default with "
                      "--crop: crop / 0.875; without either: plain resize)")
CROP = typer.Option(None, help="image folder: center-crop size H,W or S after --resize")
AUGMENT = typer.Option(True, "--augment/--no-augment", help="random resized crop + horizontal flip when "
                       "fine-tuning (the flip only where the original model's top-1 survives it on the "
                       "calibration images; never for calibration or evaluation)")
CALIB_SIZE = typer.Option(300, help="calibration: a stratified sample of this many training images")
BATCH_SIZE = typer.Option(32, help="data batch size for fine-tuning and evaluation; with --goal throughput also "
                          "the batch of one served request (artifacts then take any batch size)")
WORKERS = typer.Option(None, help="data loading worker processes (default 0: decode in the main process)")
IMAGE_SIZE = typer.Option(None, help="image folder: resize to H,W or S (default: the model's input)")
MEAN = typer.Option(None, help="image folder: per-channel mean, e.g. 0.485,0.456,0.406 (default 0.5)")
STD = typer.Option(None, help="image folder: per-channel std (default 0.5)")
DYNAMIC_BATCH = typer.Option(False, "--dynamic-batch", help="ONNX/OpenVINO artifacts with a dynamic batch axis "
                             "(any batch size at run time); latency is measured at the batch of --input-shape")
DEVICE = typer.Option(None, "--device", help="measure latency on a remote `edgeopt agent`, e.g. http://jetson:8765; "
                      "repeat it for a fleet: agents of one kind share the candidates, each kind measures them all "
                      "(a latency column each; the first kind's is the one selected on)")
VAL_SPLIT = typer.Option(0.2, help="image folder: fraction held out per class for accuracy (never trained on; "
                         "its file-list hash goes into report.json); a folder with train/ and val/ keeps its own split")


def checked(flag: str, problem: Callable[[Any], str | None]) -> Callable[[Any], Any]:
    """A typer callback refusing a value `problem` objects to: one line naming the flag, exit 2, before the
    command does any work (the same check the run config applies where the option is also a config key)."""
    def callback(value):
        message = problem(value) if value is not None else None
        if message:
            from edgeopt.errors import ConfigError

            raise ConfigError(f"{flag} {message}")
        return value
    return callback


def threads_problem(value: int) -> str | None:
    from edgeopt.config import threads_problem as problem

    return problem(value)


def positive_problem(value: float) -> str | None:
    return None if math.isfinite(value) and value > 0 else f"must be a positive finite number, got {value}"


def at_least_one_problem(value: int) -> str | None:
    return None if value >= 1 else f"must be at least 1, got {value}"


def cluster_problem(value: str) -> str | None:
    from edgeopt.config import cluster_problem as problem

    return problem(value)


CLUSTER = typer.Option(
    None, callback=checked("--cluster", cluster_problem),
    help="build, fine-tune and screen the candidates in parallel on Ray: local:N (N local workers) or "
         "ray://HOST:PORT (a running cluster); latency is still measured here, one candidate at a time. Needs "
         "pip install 'edgeopt\\[ray]'")


def _floats(text: str | None, name: str) -> tuple[float, ...] | None:
    from edgeopt.errors import ConfigError

    if not text:
        return None
    try:
        values = tuple(float(t) for t in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(math.isfinite(v) for v in values):
        raise ConfigError(f"--{name} must be comma-separated finite numbers, got {text!r}")
    return values


def _size(text: str | None, name: str):
    """S or H,W in pixels: positive integers only (int('nan') would fail deep in the data pipeline)."""
    from edgeopt.errors import ConfigError

    if not text:
        return None
    try:
        size = tuple(int(t) for t in text.split(","))
    except ValueError:
        size = ()
    if len(size) not in (1, 2) or any(v <= 0 for v in size):
        raise ConfigError(f"--{name} must be a positive integer S or H,W in pixels, got {text!r}")
    return size[0] if len(size) == 1 else size


def _calib_random(calib: str) -> bool:
    from edgeopt.errors import ConfigError

    if calib not in ("data", "random"):
        raise ConfigError(f"--calib must be 'data' or 'random', got {calib!r}")
    return calib == "random"


def _shape(text: str | None):
    from edgeopt.inputs.models import parse_input_shape

    shape = parse_input_shape(text)
    if isinstance(shape, dict):  # several named inputs
        return {k: list(v) for k, v in shape.items()}
    return list(shape) if shape is not None else None


def _path(p: Path | None) -> str | None:
    return str(p) if p is not None else None


# CLI parameter -> (RunConfig key for RunConfig.with_flat, converter of the flag's value)
FLAGS: dict[str, tuple[str, Callable[[Any], Any] | None]] = {
    "model": ("model", None), "weights": ("weights", _path), "input_shape": ("input_shape", _shape),
    "trust_pickle": ("trust_pickle", None), "target": ("target", None), "goal": ("goal", None),
    "max_accuracy_drop": ("max_accuracy_drop", None), "retrain": ("retrain", None),
    "from_scratch": ("from_scratch", None), "sensitivity": ("sensitivity", None),
    "latency_budget_ms": ("latency_budget_ms", None), "size_budget_mb": ("size_budget_mb", None),
    "time_budget": ("time_budget_s", None), "techniques": ("techniques", parse_list),
    "runtimes": ("runtimes", parse_list), "data": ("data", None),
    "masks": ("data_options", lambda v: {"masks": _path(v)}), "metric": ("metric", None),
    "image_size": ("data_options", lambda v: {"image_size": _size(v, "image-size")}),
    "crop": ("data_options", lambda v: {"crop": _size(v, "crop")}),
    "resize": ("data_options", lambda v: {"resize": v}), "augment": ("data_options", lambda v: {"augment": v}),
    "calib_size": ("data_options", lambda v: {"calib_size": v}),
    "batch_size": ("data_options", lambda v: {"batch_size": v}), "workers": ("data_options", lambda v: {"workers": v}),
    "mean": ("data_options", lambda v: {"mean": _floats(v, "mean")}),
    "std": ("data_options", lambda v: {"std": _floats(v, "std")}),
    "val_split": ("data_options", lambda v: {"val_split": v}), "epochs": ("epochs", None),
    "calib": ("calib_random", _calib_random), "cache": ("cache", None), "threads": ("threads", None),
    "seed": ("seed", None), "bench_time": ("bench_time_s", None), "out_dir": ("out_dir", _path),
    "as_json": ("as_json", None), "device": ("device", None), "token_file": ("token_file", _path),
    "dynamic_batch": ("dynamic_batch", None), "streams": ("streams", None), "verbose": ("verbose", None),
    "cluster": ("cluster", None), "train_precision": ("train_precision", None),
}


def config_from_flags(params: dict[str, Any], explicit: set[str], config_file: Path | None = None):
    """The RunConfig of a command line: the file's (or the defaults), then the explicit flags on top."""
    from edgeopt.config import RunConfig, load_config

    flat: dict[str, Any] = {}
    for name in sorted(explicit & set(FLAGS)):
        key, convert = FLAGS[name]
        value = convert(params[name]) if convert is not None else params[name]
        flat[key] = {**flat.get(key, {}), **value} if key == "data_options" else value
    base = load_config(config_file) if config_file is not None else RunConfig()
    if "batch_size" in explicit and flat.get("goal", base.deploy.goal) == "throughput":
        flat["serve_batch"] = params["batch_size"]  # the served batch is the data batch: calibration at that shape
    return base.with_flat(**flat)


def run_config(ctx: typer.Context, config_file: Path | None, skip: tuple[str, ...] = ()):
    """RunConfig of the current command: flags count as given when they come from the command line."""
    def given(name: str) -> bool:  # by the enum's name: typer may carry its own copy of click's enum
        source = ctx.get_parameter_source(name)
        return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")

    explicit = {name for name in ctx.params if name not in skip and given(name)}
    return config_from_flags(ctx.params, explicit, config_file)
