"""The held-out data: how it is scored (`metric_for`), random inputs when there is none (fidelity), and its
split, once per run, into a selection part and a test part (decide/policy.py: HOLDOUT_*).

Everything the search decides with (screening, bisection, accuracy control, sensitivity, `select`) reads the
selection part only. The test part is touched once, after the search: for the baseline, the chosen candidate
(its accuracy budget is judged there: decide/select.py `judge_on_test`) and the best plain conversion of the
original. The split is seeded (the same images on every rerun) and stratified by class when class labels are
known without decoding; a streamed set is split by index (torch Subset), so nothing is decoded twice. Too
little data stays whole, and the report says so."""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from edgeopt.config import RunContext
from edgeopt.decide import policy
from edgeopt.decide.select import judge_on_test
from edgeopt.engine.build import evaluate_candidate
from edgeopt.errors import DataError
from edgeopt.inputs.data import Batches, StreamBatches
from edgeopt.inputs.model_io import Inputs, output_layout
from edgeopt.measure.accuracy import (
    BOX_FIDELITY_MEANING,
    FIDELITY_MEANING,
    Metric,
    default_metric,
    load_metric,
    torch_predictions,
)
from edgeopt.report import Candidate, Decision, Report, TestSplit

NO_TEST_NOTE = "test split: none — the reported accuracy is the one the search optimized on"


@dataclass
class Holdout:
    selection: Batches | StreamBatches
    test: Batches | StreamBatches | None
    record: TestSplit  # what the report says about the split (completed by `judge`)
    fallback: str | None = None  # why the task metric was set aside for fidelity (`judge_by_fidelity`), if it was

    def judge_by_fidelity(self, why: str) -> None:
        """Both parts scored by agreement with the original instead of the task metric, and the reason kept."""
        task = self.selection.metric
        boxes = task is not None and task.name in ("map50", "map")
        metric = Metric("fidelity", num_classes=task.num_classes if boxes else None, boxes=boxes,
                        meaning=f"fidelity: {BOX_FIDELITY_MEANING}" if boxes else FIDELITY_MEANING)
        for part in (self.selection, self.test):
            if part is not None:
                part.metric = metric
        self.fallback = (f"{why}: an accuracy budget on it would protect nothing, so candidates are judged by "
                         "fidelity to the original instead; check that --data matches the model (its classes, its "
                         "preprocessing: --mean/--std, --image-size) and that its weights are trained")

    def decision(self) -> Decision:
        r = self.record
        if r.split == "none":
            return Decision(technique="test_split", decision="skipped", reason=f"{r.note}: {r.get('why')}")
        return Decision(technique="test_split", decision="applied", reason=r.note)


def class_labels(data: Batches | StreamBatches) -> list[int] | None:
    """One class label per sample, when known without decoding anything (in-memory class labels, or the
    labels a streamed dataset keeps, e.g. an image folder's)."""
    if isinstance(data, StreamBatches):
        targets = getattr(data.dataset, "targets", None)
        if not data.labelled or targets is None or len(targets) != len(data):
            return None
        try:
            return [int(t) for t in targets]
        except (TypeError, ValueError):  # masks or boxes: not class labels
            return None
    if not data.labelled or not all(isinstance(y, torch.Tensor) and y.dim() == 1 for _, y in data.items):
        return None
    if any(y.is_floating_point() for _, y in data.items):
        return None
    return [int(v) for v in data.labels().tolist()]


def split_indices(n: int, labels: list[int] | None, seed: int, fraction: float
                  ) -> tuple[list[int], list[int], str] | str:
    """(selection indices, test indices, "stratified"|"random"), each sorted; or why the data stays whole."""
    if n < policy.HOLDOUT_MIN_IMAGES:
        return f"only {n} held-out images (< {policy.HOLDOUT_MIN_IMAGES}): too few to split"
    rng = random.Random(seed + 3)  # its own stream: not the one the data splits drew from
    if labels is None:
        order = list(range(n))
        rng.shuffle(order)
        k = min(max(1, round(n * fraction)), n - 1)
        return sorted(order[k:]), sorted(order[:k]), "random"
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(labels):
        by_class.setdefault(t, []).append(i)
    small = min(by_class, key=lambda c: len(by_class[c]))
    if len(by_class[small]) < policy.HOLDOUT_MIN_PER_CLASS:
        return (f"class {small} has {len(by_class[small])} held-out image(s) (< {policy.HOLDOUT_MIN_PER_CLASS}): "
                "a split stratified by class cannot put it on both sides")
    test: list[int] = []
    for c in sorted(by_class):
        members = by_class[c]
        rng.shuffle(members)
        test += members[:min(max(1, round(len(members) * fraction)), len(members) - 1)]
    chosen = set(test)
    return [i for i in range(n) if i not in chosen], sorted(test), "stratified"


def _key(data, part: str, seed: int, fraction: float) -> str | None:
    key = getattr(data, "key", None)
    return hashlib.sha256(f"{key}|{part}|{seed}|{fraction}".encode()).hexdigest() if key else None


def _take_batches(data: Batches, idx: list[int], key: str | None) -> Batches:
    """The samples `idx` of in-memory batches, re-batched at the first batch's size, in order."""
    xs = [x for x, _ in data.items]
    ys = [y for _, y in data.items]
    joined = Inputs.cat(xs) if isinstance(xs[0], Inputs) else torch.cat(xs)
    if all(isinstance(y, torch.Tensor) for y in ys):
        targets = torch.cat(ys)
    elif all(y is not None for y in ys):  # e.g. a detector's box lists, read only by the user's metric
        targets = [t for y in ys for t in y]
    else:
        targets = None
    size = max(1, len(xs[0]))
    items = []
    for i in range(0, len(idx), size):
        part = idx[i:i + size]
        t = torch.tensor(part, dtype=torch.long)
        y = None if targets is None else (targets[t] if isinstance(targets, torch.Tensor) else
                                          [targets[j] for j in part])
        items.append((joined[t], y))
    return Batches(items, key=key)


def _take_stream(data: StreamBatches, idx: list[int], key: str | None) -> StreamBatches:
    from torch.utils.data import Subset

    targets = getattr(data.dataset, "targets", None)
    sub = targets is not None and len(targets) == len(data)
    return StreamBatches(Subset(data.dataset, idx), data.batch_size, data.workers, data.labelled, key=key,
                         collate=data.collate, check=data._check,
                         targets=[targets[i] for i in idx] if sub and class_labels(data) is not None else None)


def take(data: Batches | StreamBatches, idx: list[int], key: str | None) -> Batches | StreamBatches:
    return _take_stream(data, idx, key) if isinstance(data, StreamBatches) else _take_batches(data, idx, key)


def metric_for(spec, eval_b: Batches | StreamBatches, net, ex: Inputs) -> Metric:
    """The user's metric (--metric / metric=) on labelled held-out data, else what the labels allow."""
    if spec is None:
        return _box_labels(default_metric(eval_b), eval_b, net)
    if not eval_b.labelled:
        raise DataError("--metric needs held-out data with targets: pass --data (module:function returning "
                        "'eval' as (inputs, targets) batches) or eval_data=...")
    with torch.no_grad():
        layout = output_layout(ex.call(net))
    return _box_labels(load_metric(spec, layout, num_classes=getattr(eval_b, "num_classes", None)), eval_b, net)


def degenerate(metric: Metric, baseline: float, classes: int | None) -> str | None:
    """Why the original's own score on the held-out data is no better than chance (None when it is better)."""
    if metric.name in ("map50", "map"):
        floor = policy.DEGENERATE_MAP
    elif metric.name == "top1" and classes and classes > 1:
        floor = policy.DEGENERATE_CHANCE_FACTOR * 100.0 / classes
    elif metric.name == "miou" and classes and classes > 1:
        floor = 100.0 / classes
    else:  # fidelity, a user's metric (its scale is the user's)
        return None
    if baseline > floor:
        return None
    return f"the original scores {baseline:.2f} % {metric.name} on the held-out data (chance level: {floor:.1f} %)"


BACKGROUND_NAMES = ("background", "__background__", "bg", "_background_")


def _box_labels(metric: Metric, eval_b, net) -> Metric:
    """torchvision's detectors (Faster/Mask R-CNN, SSD, SSDlite, RetinaNet, FCOS) answer labels 1..N, 0 being
    their background, where a data.yaml or COCO file numbers its classes 0..N-1: scored as they are, every box
    would carry the next class and mAP would be silently wrong. Unless the data's first class is a background
    (then the numbers already agree), their labels are read one lower, and the metric's meaning says so."""
    if metric.name not in ("map50", "map") or not _torchvision_detector(net):
        return metric
    names = getattr(eval_b, "class_names", None) or []
    if names and str(names[0]).strip().lower() in BACKGROUND_NAMES:
        return metric
    metric.label_offset = 1
    metric.meaning += ("; torchvision detector: its labels 1..N are read as the data's classes 0..N-1 (its 0 is "
                       "the background)")
    return metric


def _torchvision_detector(net) -> bool:
    try:
        from torchvision.models.detection.fcos import FCOS
        from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
        from torchvision.models.detection.retinanet import RetinaNet
        from torchvision.models.detection.ssd import SSD
    except ImportError:
        return False
    return isinstance(net, (GeneralizedRCNN, SSD, RetinaNet, FCOS))


def fidelity_inputs(ex: Inputs, n: int, seed: int) -> Batches:
    """Random held-out inputs (every named input) when there is no evaluation data."""
    x = ex.fresh(torch.Generator().manual_seed(seed + 1), batch=n)
    return Batches([(x.first if x.single else x, None)])


def fresh_inputs(ex: Inputs, n: int, seed: int) -> Batches:
    """Random test inputs for fidelity without held-out data: an independent draw (the search's inputs come
    from `fidelity_inputs` with another seed)."""
    x = ex.fresh(torch.Generator().manual_seed(seed + 2), batch=n)
    return Batches([(x.first if x.single else x, None)])


def split(full: Batches | StreamBatches, seed: int, ex: Inputs | None = None, random_inputs: bool = False,
          fraction: float = policy.HOLDOUT_TEST_FRACTION) -> Holdout:
    """Split the held-out data `full` (its `metric` already set: both parts share it). `random_inputs`: `full`
    is random fidelity inputs, not the user's data: the test part is a fresh draw instead of a share."""
    metric = getattr(full, "metric", None)
    n = len(full)
    if random_inputs:
        test = fresh_inputs(ex, policy.FIDELITY_TEST_INPUTS, seed)
        test.metric = metric
        return Holdout(full, test, TestSplit(
            split="fresh", images=len(test), selection_images=n, seed=seed,
            note=f"no held-out data: the search compared with the original on {n} random inputs; the final "
                 f"check uses {len(test)} other random inputs"))
    labels = class_labels(full)
    got = split_indices(n, labels, seed, fraction)
    if isinstance(got, str):
        return Holdout(full, None, TestSplit(split="none", selection_images=n, seed=seed, note=NO_TEST_NOTE,
                                             why=got))
    sel_idx, test_idx, how = got
    selection = take(full, sel_idx, _key(full, "selection", seed, fraction))
    test = take(full, test_idx, _key(full, "test", seed, fraction))
    selection.metric = test.metric = metric
    return Holdout(selection, test, TestSplit(
        split=how, images=len(test_idx), selection_images=len(sel_idx), fraction=fraction, seed=seed,
        note=(f"held-out data split at random{', stratified by class' if how == 'stratified' else ''} (seed {seed}): "
              f"{len(sel_idx)} images for the search (screening, bisection, accuracy control, selection), "
              f"{len(test_idx)} kept for the final check of the baseline, the chosen candidate and the best plain "
              "conversion; the accuracy budget of the choice is judged on the test images")))


def wilson(p: float, n: int, z: float = policy.CI95_Z) -> tuple[float, float]:
    """Wilson score interval of a proportion p (0..1) observed on n samples."""
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at p = 0 or 1 one end is exactly 0 or 1; computed, it misses by a rounding error
    return (0.0 if p <= 0 else max(0.0, centre - half)), (1.0 if p >= 1 else min(1.0, centre + half))


class TestEvaluator:
    """Accuracy on the test part through a candidate's runtime session, scored like `Builder.evaluate`. The
    original's reference predictions (fidelity) are computed on the test part when first needed."""

    __test__ = False  # not a pytest class

    def __init__(self, test, sessions: dict, batch: int, net):
        self.test, self.sessions, self.batch, self.net = test, sessions, batch, net
        self.reference = None

    def __call__(self, c: Candidate) -> float | None:
        session = self.sessions.get(c.id)
        if self.test is None or session is None:
            return None
        if self.test.metric.name == "fidelity" and self.reference is None:
            self.reference = torch_predictions(self.net, self.test, self.batch)
        scored = evaluate_candidate(session, self.test, self.batch, self.reference)
        c.metrics_test = getattr(scored, "metrics", None) or None
        return scored[0]

    def proportion(self) -> bool:
        """Is the test figure a share of images (one right/wrong per image), so that a binomial interval
        applies? top-1 is; fidelity is when every output is one class per sample."""
        name = self.test.metric.name
        if name == "top1":
            return True
        return name == "fidelity" and self.reference is not None and all(
            np.issubdtype(v.dtype, np.integer) and v.ndim == 1 for v in self.reference.values())


def judge(report: Report, context: RunContext, held: Holdout, sessions: dict, batch: int, net,
          check: Callable[[Report], list] | None = None) -> None:
    """After `select`: evaluate on the test part, judge the budget there (decide/select.py), then `check` the
    final choice (its latency measured again: it may hand the choice to the best plain conversion, judged on
    the test part too), and complete report.model.test_split for the choice."""
    record = held.record
    report.model.test_split = record
    evaluate = TestEvaluator(held.test, sessions, batch, net) if held.test is not None else None
    if evaluate is not None:
        report.decisions += judge_on_test(report, context, evaluate)
    if check is not None:
        report.decisions += check(report)
    if evaluate is None:
        return
    chosen = report.chosen_candidate
    if chosen is None or chosen.accuracy_test is None:
        record.interval = "no chosen candidate evaluated on the test split"
        return
    record.chosen, record.accuracy_test = chosen.id, chosen.accuracy_test
    record.accuracy_drop_test = chosen.accuracy_drop_test
    if evaluate.proportion():
        lo, hi = wilson(chosen.accuracy_test / 100, record.images)
        record.ci95 = [round(100 * lo, 2), round(100 * hi, 2)]
        record.interval = f"Wilson 95 % interval of a proportion over {record.images} test images"
    else:
        record.interval = (f"no interval: {held.test.metric.name} over {record.images} test images is not a "
                           "share of images (a binomial interval does not apply)")
