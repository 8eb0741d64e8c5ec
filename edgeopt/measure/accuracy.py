"""Accuracy of a runnable model on held-out batches, for any task, always labelled with what it is:

- top1: classification with class labels;
- miou: segmentation with masks (mean intersection over union of the per-pixel argmax, torchmetrics);
- map50 / map: detection with labelled boxes (a data.yaml, COCO JSON): mAP@0.5 / mAP@0.5:0.95 of per-image box
  outputs or of a raw YOLO head tensor decoded (measure/detection.py); map50 unless --metric map; both are
  measured and reported (`Scored.metrics`);
- fidelity: no labels; agreement with the original model, output by output (see FIDELITY_MEANING), box-level
  for per-image box outputs;
- user:<fn>: the user's metric, given all held-out outputs (in the model's own structure) and targets.

Artifacts have a static batch size, so batches are re-chunked (the last chunk padded). Per-image outputs
(torchvision detectors: one dict of boxes per image) are collected per image, never sliced as batches.
Evaluation batches carry their metric as `batches.metric` (set once by the pipeline); without it the metric
follows the labels."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from edgeopt.errors import ConfigError, DataError, first_line
from edgeopt.inputs.data import Batches
from edgeopt.inputs.model_io import Inputs, flatten_outputs, nest
from edgeopt.measure.detection import BOX_FIDELITY_MEANING, DETECTIONS, as_detections, box_fidelity, group_per_image
from edgeopt.measure.top1 import percent_correct
from edgeopt.registry import split_ref

VOID = 255  # the "ignore" label of segmentation masks: pixels that count for no class
FIDELITY_MEANING = ("fidelity: agreement with the original model on held-out inputs, the worst output counts: "
                    "% equal top-1 classes for class logits, % equal per-pixel classes for dense logits, "
                    "100 x mean per-sample cosine similarity for other outputs (box tensors, embeddings, "
                    "depth); for per-image box sets (torchvision detectors) " + BOX_FIDELITY_MEANING)
MAP_MEANING = ("map50: mAP@0.5 in % of the detected boxes against the labelled boxes (COCO's definition, "
               "torchmetrics with pycocotools; a raw head tensor is decoded first: best class per anchor, score "
               "> 0.001, NMS at IoU 0.7, at most 300 boxes); mAP@0.5:0.95 (map) is measured beside it")
MAP_NAMES = {"map50": "map50", "map@0.5": "map50", "map": "map", "map50-95": "map", "map50_95": "map",
             "map@0.5:0.95": "map"}  # --metric names of the built-in box metrics (case-insensitive)


class Scored(tuple):
    """(score, metric name), unpacked like a pair, with every figure measured beside the selection metric in
    `metrics` (e.g. {"map50": .., "map50_95": ..} for boxes) for the report."""

    def __new__(cls, value: float, name: str, metrics: dict[str, float] | None = None):
        self = super().__new__(cls, (value, name))
        self.metrics = dict(metrics or {})
        return self


@dataclass
class Metric:
    name: str  # top1 | miou | map50 | map | fidelity | user:<function>
    fn: Callable | None = None  # the user's metric
    num_classes: int | None = None  # miou; map50/map: the data's classes (the score channels of a raw head)
    # map50/map: subtracted from the model's box labels before they meet the data's classes (torchvision's
    # detectors count their classes from 1, 0 being their background)
    label_offset: int = 0
    layout: object = None  # the model's output structure, to hand the user's metric its own nesting
    meaning: str = ""
    # fidelity of a detector: a raw head tensor is decoded into boxes first, so that agreement is box-level
    boxes: bool = False


def is_logits(a: np.ndarray | torch.Tensor) -> bool:
    """(batch, classes) or (batch, classes, H, W) with several classes: argmax is the prediction."""
    return a.ndim in (2, 4) and a.shape[1] > 1


def _summary(name: str, a: np.ndarray, single: bool, full: bool) -> np.ndarray:
    """What is kept of an output to score it: its argmax for logits (small), else the values."""
    if full:
        return a
    if single and a.ndim >= 2 and not (a.ndim == 4 and a.shape[1] > 1) and not _raw_head(a):
        return a.reshape(len(a), -1).argmax(1)  # a classifier, as always
    return a.argmax(1) if is_logits(a) else a.astype(np.float32)


def _raw_head(a: np.ndarray) -> bool:
    """(batch, channels, positions) with both > 1, e.g. a YOLO head's (N, 4 + classes, anchors): values, not one
    class per sample (its flattened argmax would be a meaningless top-1)."""
    return a.ndim == 3 and a.shape[1] > 1 and a.shape[2] > 1


def _chunks(batches: Batches, batch_size: int):
    """Fixed-size chunks of the evaluation inputs, as Inputs, with the count of real samples in each (the last
    one padded). Batches are read one at a time: a streamed held-out set is never held in memory whole."""
    pending, tmpl = None, None
    for x in batches.inputs():
        tmpl = x if isinstance(x, Inputs) else Inputs.of(x)
        ts = [t.float() for t in tmpl.tensors]
        pending = ts if pending is None else [torch.cat([p, t]) for p, t in zip(pending, ts, strict=True)]
        while len(pending[0]) >= batch_size:
            yield tmpl.like([p[:batch_size] for p in pending]), batch_size
            pending = [p[batch_size:] for p in pending]
    if pending is not None and len(pending[0]):
        n = len(pending[0])
        yield tmpl.like([torch.cat([t, t.new_zeros((batch_size - n, *t.shape[1:]))]) for t in pending]), n


def predictions(run, batches: Batches, batch_size: int, full: bool | None = None,
                settled: Callable[[dict[str, np.ndarray]], bool] | None = None) -> dict[str, np.ndarray]:
    """Every evaluation sample's outputs by name (argmax summaries unless `full` or a user metric needs
    the values). `run`: a Session (all named outputs) or a callable array -> array (one output). `settled`:
    asked with the outputs so far after each chunk; when it says yes, the outputs of the samples run so far
    are returned (see `prefix_bound`)."""
    full = isinstance(getattr(batches, "metric", None), Metric) and batches.metric.fn is not None \
        if full is None else full
    named = getattr(run, "run_named", None)
    metric = getattr(batches, "metric", None)
    boxes = isinstance(metric, Metric) and metric.name in ("map50", "map")
    parts: dict[str, list[np.ndarray]] = {}
    for x, n in _chunks(batches, batch_size):
        outs = named(x.numpy()) if named else (run(x) if getattr(run, "takes_inputs", False)
                                               else {"output": np.asarray(run(x.first.numpy()))})
        outs = group_per_image(outs, len(x.first))
        if boxes:  # decoded chunk by chunk: a raw head's values over a whole held-out set would not fit memory
            outs = as_detections({k: np.asarray(v)[:n] if k != DETECTIONS else v for k, v in outs.items()},
                                 metric.num_classes)
        for k, v in outs.items():
            parts.setdefault(k, []).append(v[:n] if k == DETECTIONS else
                                           _summary(k, np.asarray(v)[:n], len(outs) == 1, full))
        if settled is not None and settled({k: np.concatenate(v) for k, v in parts.items()}):
            break
    return {k: np.concatenate(v) for k, v in parts.items()}


def prefix_bound(batches: Batches, reference=None) -> Callable[[dict[str, np.ndarray]], tuple[float, float]] | None:
    """For a metric that is a mean over samples of a 0..100 score (top-1; fidelity when no output is a
    per-image box set: the worst output's mean agreement), a function (outputs of the first n samples) ->
    (score on them, the most the whole set can score whatever the other samples give). None for the metrics a
    part of the data bounds nothing of (mAP, mIoU, a user's metric) and for streamed data."""
    metric = getattr(batches, "metric", None) or default_metric(batches)
    if metric.fn is not None or not isinstance(batches, Batches) or not batches.items:
        return None
    total = len(batches)

    def bounded(n: int, got: float) -> tuple[float, float]:
        return got, (got * n + 100.0 * (total - n)) / total

    if metric.name == "top1":
        labels = _targets(batches).numpy().reshape(-1)

        def top1(preds: dict[str, np.ndarray]) -> tuple[float, float]:
            n = len(next(iter(preds.values())))
            return bounded(n, percent_correct([(_fitting(preds, labels[:n]), labels[:n])]))
        return top1
    if metric.name == "fidelity" and isinstance(reference, dict) and DETECTIONS not in reference:
        def agreement(preds: dict[str, np.ndarray]) -> tuple[float, float]:
            n = len(next(iter(preds.values())))
            return bounded(n, fidelity(preds, {k: v[:n] for k, v in reference.items()}))
        return agreement
    return None


def torch_runner(model: torch.nn.Module) -> Callable:
    model.eval()

    def run(x: Inputs) -> dict[str, np.ndarray]:
        if any(isinstance(t, torch.Tensor) and t.dim() == 4 for t in x.tensors):
            x = x.like([t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t for t in x.tensors])
        with torch.no_grad():
            return {k: v.float().numpy() for k, v in flatten_outputs(x.call(model)).items()}

    run.takes_inputs = True
    return run


def torch_predictions(model: torch.nn.Module, batches: Batches, batch_size: int, wide: int = 64,
                      full: bool | None = None, settled=None) -> dict[str, np.ndarray]:
    """Outputs in PyTorch, in wide chunks when the model takes them (much faster than batch 1; per-sample
    results are the same in eval mode), else at the model's own batch size (e.g. a static-shape export)."""
    # oneDNN's convolutions run ~1.3x faster on channels-last maps (resnet18 at 224 on 2 cores); on a copy, so
    # the caller's model keeps its layout
    if any(isinstance(m, torch.nn.Conv2d) for m in model.modules()):
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    run = torch_runner(model)
    if wide > batch_size:
        try:
            return predictions(run, batches, wide, full, settled)
        except Exception:  # a model traced for a fixed batch
            pass
    return predictions(run, batches, batch_size, full, settled)


def _targets(batches: Batches):
    if not isinstance(batches, Batches) and hasattr(batches, "labels"):
        return batches.labels()  # a streamed set knows its labels without decoding the images
    ys = [y for _, y in batches.items]
    if all(isinstance(y, torch.Tensor) for y in ys):
        return torch.cat([y.reshape(len(y), *y.shape[1:]) for y in ys])
    out: list = []
    for y in ys:
        out.extend(list(y))
    return out


def primary(preds: dict[str, np.ndarray], dense: bool = False) -> np.ndarray:
    """The output that top-1 / mIoU are read from: 'out' (torchvision segmenters), else the first logits."""
    if "out" in preds:
        return preds["out"]
    for v in preds.values():
        if (v.ndim == 3) == dense:
            return v
    return next(iter(preds.values()))


def score(preds, batches: Batches, reference=None) -> tuple[float, str]:
    """(score in %, metric name): higher is better; --max-accuracy-drop is in points of this metric."""
    if isinstance(preds, np.ndarray):
        preds = {"output": preds}
    if isinstance(reference, np.ndarray):
        reference = {"output": reference}
    metric = getattr(batches, "metric", None) or default_metric(batches)
    if metric.fn is not None:
        return user_score(metric, preds, _targets(batches)), metric.name
    if metric.name in ("map50", "map"):
        got = detection_scores(preds, batches, metric.num_classes, metric.label_offset)
        return Scored(got[metric.name], metric.name, {"map50": got["map50"], "map50_95": got["map"]})
    if metric.name == "top1":
        labels = _targets(batches).numpy().reshape(-1)
        return percent_correct([(_fitting(preds, labels), labels)]), "top1"
    if metric.name == "miou":
        return miou(primary(preds, dense=True), _targets(batches), metric.num_classes), "miou"
    if reference is None:
        raise ConfigError("fidelity needs the original model's outputs")
    if metric.boxes:
        preds, reference = as_detections(preds, metric.num_classes), as_detections(reference, metric.num_classes)
    return fidelity(preds, reference), "fidelity"


def _shapes(preds: dict) -> str:
    return ", ".join(f"{k} {'per-image box sets' if k == DETECTIONS else tuple(v.shape)}" for k, v in preds.items())


def _fitting(preds: dict[str, np.ndarray], labels: np.ndarray) -> np.ndarray:
    """The output top-1 reads: one class (or class scores) per sample; else a one-line ConfigError naming
    --metric (e.g. a detector's raw head tensor against an image folder's class labels)."""
    p = primary(preds) if DETECTIONS not in preds else None
    if p is None or p.dtype == object or p.ndim not in (1, 2) or len(p) != len(labels):
        raise ConfigError(f"top1 (the data's class labels) does not fit the model's outputs ({_shapes(preds)}): "
                          "pass --metric file.py:fn to score them, or data labelled for them (a data.yaml for "
                          "boxes, --masks for dense outputs), or data without labels (fidelity)")
    return p


def detection_scores(preds: dict[str, np.ndarray], batches: Batches, num_classes: int | None = None,
                     label_offset: int = 0) -> dict[str, float]:
    """{"map50", "map"} (%) of the per-image box outputs (or a raw head tensor, decoded) against the data's
    boxes; a one-line ConfigError naming --metric when the outputs are neither, or the data has no boxes."""
    from edgeopt.measure.detection import mean_average_precision

    preds = as_detections(preds, num_classes)
    if DETECTIONS not in preds:
        raise ConfigError(f"mAP (the data's labelled boxes) does not fit the model's outputs ({_shapes(preds)}): "
                          "it reads per-image box dicts (boxes, labels, scores) or a raw head tensor (batch, "
                          "4 + classes, anchors); pass --metric file.py:fn to score these outputs against the boxes")
    targets = _targets(batches)
    if not (isinstance(targets, list) and all(isinstance(t, dict) and "boxes" in t for t in targets)):
        raise ConfigError("--metric map50/map needs data labelled with boxes (a data.yaml or a COCO JSON file)")
    dets = preds[DETECTIONS]
    if label_offset:
        dets = [{**d, "labels": np.asarray(d["labels"]) - label_offset} if "labels" in d else d for d in dets]
    return mean_average_precision(dets, targets)


def default_metric(batches: Batches | None) -> Metric:
    if batches is None or not batches.labelled:
        return Metric("fidelity", meaning=FIDELITY_MEANING)
    y = batches.items[0][1]
    if isinstance(y, list) and y and isinstance(y[0], dict) and "boxes" in y[0]:
        return Metric("map50", num_classes=getattr(batches, "num_classes", None), meaning=MAP_MEANING)
    if isinstance(y, torch.Tensor) and y.dim() >= 2:
        n = int(max(int(t[t != VOID].max()) if (t != VOID).any() else 0 for _, t in batches.items)) + 1
        return Metric("miou", num_classes=n, meaning="miou: mean intersection over union of the per-pixel "
                                                     "classes with the masks, in %, over classes present")
    return Metric("top1", meaning="top1: % of held-out samples whose top class is the label")


def fidelity(preds: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> float:
    """The worst output's agreement with the original model's (see FIDELITY_MEANING)."""
    if list(preds) != list(reference) and len(preds) == len(reference):
        preds = dict(zip(reference, preds.values(), strict=True))  # same structure, other names
    scores = []
    for k, ref in reference.items():
        got = preds.get(k)
        if k == DETECTIONS:
            scores.append(box_fidelity(got, ref) if got is not None and got.dtype == object else 0.0)
            continue
        if got is None or got.shape != ref.shape:
            return 0.0  # a structure that differs from the original's agrees with nothing
        if np.issubdtype(ref.dtype, np.integer):
            scores.append(percent_correct([(got, ref)]))
        else:
            a, b = got.reshape(len(got), -1).astype(np.float64), ref.reshape(len(ref), -1).astype(np.float64)
            cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
            scores.append(float(np.clip(cos, 0, 1).mean() * 100))
    return min(scores)


def miou(pred: np.ndarray, masks: torch.Tensor, num_classes: int | None) -> float:
    """Mean IoU (%) of per-pixel classes against the masks (torchmetrics' multiclass Jaccard index)."""
    from torchmetrics.functional.classification import multiclass_jaccard_index

    p = torch.as_tensor(pred).long()
    t = torch.as_tensor(masks).long().reshape(p.shape) if masks.numel() == p.numel() else None
    if t is None:
        raise DataError(f"masks of shape {tuple(masks.shape)} do not match the predictions' {tuple(p.shape)}")
    labelled = t[t != VOID]
    n = num_classes or int(max(int(p.max()), int(labelled.max()) if labelled.numel() else 0)) + 1
    p = p.clamp(0, n - 1)
    return float(multiclass_jaccard_index(p, t, num_classes=n, average="macro", ignore_index=VOID) * 100)


def user_score(metric: Metric, preds: dict[str, np.ndarray], targets) -> float:
    """Call the user's metric with the outputs re-nested in the model's structure (torch tensors over all
    held-out samples) and the targets; one-line ConfigError naming the function on any failure."""
    outs = {k: [{f: torch.as_tensor(a) for f, a in d.items()} for d in v] if k == DETECTIONS
            else torch.from_numpy(np.ascontiguousarray(v)) for k, v in preds.items()}
    if list(outs) == [DETECTIONS]:
        outs = {"output": outs[DETECTIONS]}  # the user's metric gets the detector's own list of box dicts
    layout = metric.layout
    nested = nest(layout, outs) if layout is not None and set(flatten_names(layout)) == set(outs) else (
        outs["output"] if list(outs) == ["output"] else outs)
    try:
        value = metric.fn(nested, targets)
    except Exception as e:
        raise ConfigError(f"metric {metric.name[5:]} raised {first_line(e, 160)}") from None
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not np.isfinite(value):
        raise ConfigError(f"metric {metric.name[5:]} returned {value!r}: it must return a number "
                          "(higher is better, in percent)")
    return float(value)


def flatten_names(layout) -> list[str]:
    if isinstance(layout, str):
        return [layout]
    vals = layout.values() if isinstance(layout, dict) else layout
    return [n for v in vals for n in flatten_names(v)]


def load_metric(spec, layout=None, num_classes: int | None = None) -> Metric:
    """--metric map50 | map (the built-in box metrics; `num_classes`: the box data's), file.py:fn | module:fn,
    or a callable (outputs, targets) -> score in %."""
    if isinstance(spec, str) and spec.strip().lower() in MAP_NAMES:
        name = MAP_NAMES[spec.strip().lower()]
        meaning = MAP_MEANING if name == "map50" else MAP_MEANING.replace(
            "map50: mAP@0.5", "map: mAP@0.5:0.95").replace("mAP@0.5:0.95 (map) is", "mAP@0.5 (map50) is")
        return Metric(name, num_classes=num_classes, layout=layout, meaning=meaning)
    if callable(spec):
        return Metric(f"user:{getattr(spec, '__name__', 'metric')}", fn=spec, layout=layout,
                      meaning="the user's metric (higher is better, %)")
    fn = _load_function(str(spec))
    return Metric(f"user:{split_ref(spec)[1]}", fn=fn, layout=layout,
                  meaning=f"the user's metric {spec} (higher is better, %)")


def _load_function(spec: str) -> Callable:
    """`path/file.py:fn` or `module:fn` through the one user-code loader; one-line ConfigError naming it."""
    from edgeopt.inputs import usercode

    return usercode.load_callable(spec, "metric function", ConfigError)
