"""Per-image box outputs (torchvision's detector contract) are collected per image and scored box by box:
the original agrees 100 % with itself, a changed candidate's drop is real, and no boxes is a valid output."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from edgeopt.errors import ConfigError
from edgeopt.inputs.data import Batches
from edgeopt.measure.accuracy import Metric, load_metric, predictions, score, torch_predictions
from edgeopt.measure.detection import (
    DETECTIONS,
    box_fidelity,
    box_iou,
    decode_head,
    group_per_image,
    is_box_head,
    match,
)

SLOTS = 3


class BoxDetector(nn.Module):
    """torchvision-style: a batched tensor (or a list of images) in, one dict of boxes/labels/scores per image
    out, with as many boxes as slots score above 0.5 (zero for some images); `never` finds nothing at all."""

    def __init__(self, classes: int = 3, never: bool = False):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
        self.head = nn.Linear(16, SLOTS * (4 + classes + 1))
        self.classes, self.never = classes, never

    def forward(self, images):
        x = torch.stack(list(images)) if isinstance(images, (list, tuple)) else images
        size = x.shape[-1]
        f = self.head(self.body(x).mean((2, 3))).reshape(len(x), SLOTS, -1)
        xy = torch.sigmoid(f[..., :4]) * size
        boxes = torch.cat([torch.minimum(xy[..., :2], xy[..., 2:]), torch.maximum(xy[..., :2], xy[..., 2:]) + 1], -1)
        labels = f[..., 4:4 + self.classes].argmax(-1)
        scores = torch.sigmoid(8 * f[..., -1] + 4 * x.mean((1, 2, 3))[:, None])  # brightness: how many
        out = []
        for b, lab, s in zip(boxes, labels, scores, strict=True):
            keep = s > (2.0 if self.never else 0.5)
            out.append({"boxes": b[keep], "labels": lab[keep], "scores": s[keep]})
        return out


def data(n=70, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=g) + torch.rand(n, 1, 1, 1, generator=g) * 2 - 1
    return Batches([(x[i:i + 16], None) for i in range(0, n, 16)])


def detector(seed=0, **kw):
    torch.manual_seed(seed)
    return BoxDetector(**kw).eval()


def test_original_agrees_fully_with_itself_and_per_image():
    model, held = detector(), data()
    ref = torch_predictions(model, held, batch_size=8)
    assert list(ref) == [DETECTIONS] and len(ref[DETECTIONS]) == len(held)  # one box set per image
    counts = [len(d["boxes"]) for d in ref[DETECTIONS]]
    assert 0 in counts and max(counts) > 0, counts  # images without boxes are in the set
    with torch.no_grad():
        want = model(held.items[1][0])[3]  # image 19, in the second chunk of the wide run
    np.testing.assert_allclose(ref[DETECTIONS][19]["boxes"], want["boxes"].numpy(), rtol=1e-5)
    assert score(ref, held, ref) == (100.0, "fidelity")
    assert score(torch_predictions(model, held, batch_size=1, wide=1), held, ref)[0] == pytest.approx(100.0)


def test_candidate_drop_is_real():
    model, held = detector(), data()
    ref = torch_predictions(model, held, batch_size=8)
    cand = copy.deepcopy(model)
    with torch.no_grad():
        for p in cand.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    got = score(torch_predictions(cand, held, batch_size=8), held, ref)[0]
    assert 5.0 < got < 99.0, got
    other = score(torch_predictions(detector(seed=1), held, batch_size=8), held, ref)[0]
    assert other < got


def test_zero_detections_is_a_valid_output():
    model, held = detector(never=True), data(20)
    ref = torch_predictions(model, held, batch_size=8)
    assert all(len(d["boxes"]) == 0 for d in ref[DETECTIONS])
    assert score(ref, held, ref)[0] == 100.0
    some = torch_predictions(detector(), held, batch_size=8)
    assert score(some, held, ref)[0] < 100.0  # boxes where the original found none are disagreement


def test_runtime_style_named_outputs_are_grouped():
    """A session's flat names (`0.boxes`, `0.labels`, ...) are grouped per image like PyTorch's."""
    model, held = detector(), data(10)

    class Session:
        def run_named(self, feeds):
            with torch.no_grad():
                outs = model(torch.from_numpy(feeds["input"]))
            return {f"{i}.{k}": v.numpy() for i, d in enumerate(outs) for k, v in d.items()}

    ref = torch_predictions(model, held, batch_size=4)
    got = predictions(Session(), held, batch_size=4)
    assert len(got[DETECTIONS]) == 10 and score(got, held, ref)[0] == pytest.approx(100.0)


def test_matching_needs_class_and_iou():
    ref = {"boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 30.]]), "labels": np.array([1, 2]),
           "scores": np.array([0.9, 0.8])}
    same = {k: v.copy() for k, v in ref.items()}
    assert match(ref, same) == [(0, 0), (1, 1)]
    wrong_class = {**same, "labels": np.array([2, 1])}
    assert match(ref, wrong_class) == []
    shifted = {**same, "boxes": same["boxes"] + 6}  # IoU 16/184 < 0.5
    assert box_iou(ref["boxes"][:1], shifted["boxes"][:1])[0, 0] < 0.5 and match(ref, shifted) == []
    empty = {"boxes": np.zeros((0, 4)), "labels": np.zeros(0), "scores": np.zeros(0)}
    assert box_fidelity([empty], [empty]) == 100.0 and box_fidelity([empty], [ref]) == 0.0
    assert box_fidelity([ref], [empty]) == 0.0
    half = {k: v[:1] for k, v in ref.items()}
    assert box_fidelity([half], [ref]) == pytest.approx(100 * 0.9 / 1.7)


def test_names_that_are_not_per_image_box_sets_stay_as_they_are():
    outs = {"0.logits": np.zeros((2, 3)), "1.logits": np.zeros((2, 3))}
    assert group_per_image(outs, 2) is outs  # a tuple of dicts: no boxes
    outs = {"0.boxes": np.zeros((1, 4))}
    assert group_per_image(outs, 2) is outs  # one image's worth for a batch of two


def test_a_metric_that_does_not_fit_is_one_line_naming_metric():
    """A YOLO-style raw head (N, 4 + C, anchors) against an image folder's class labels."""
    x = torch.randn(8, 3, 16, 16)
    held = Batches([(x[:4], torch.zeros(4, dtype=torch.long)), (x[4:], torch.zeros(4, dtype=torch.long))])
    preds = {"0": np.zeros((8, 84, 21), np.float32), "1": np.zeros((8, 3, 2), np.float32)}
    with pytest.raises(ConfigError, match="--metric") as e:
        score(preds, held)
    assert "\n" not in str(e.value) and "(8, 84, 21)" in str(e.value)
    boxes = Batches(held.items)
    boxes.metric = Metric("map50")
    with pytest.raises(ConfigError, match="--metric"):
        score(preds, boxes)


class FixedSlots(BoxDetector):
    """Every slot kept (a static number of boxes per image): exports as it is, to ONNX with `0.boxes`, ..."""

    def forward(self, x):
        f = self.head(self.body(x).mean((2, 3))).reshape(len(x), SLOTS, -1)
        xy = torch.sigmoid(f[..., :4]) * x.shape[-1]
        boxes = torch.cat([torch.minimum(xy[..., :2], xy[..., 2:]), torch.maximum(xy[..., :2], xy[..., 2:]) + 1], -1)
        labels, scores = f[..., 4:4 + self.classes].argmax(-1), torch.sigmoid(8 * f[..., -1])
        return [{"boxes": b, "labels": c, "scores": s} for b, c, s in zip(boxes, labels, scores, strict=True)]


def test_through_a_run_the_original_scores_100_and_int8_a_real_drop(tmp_path):
    import edgeopt

    torch.manual_seed(0)
    held = data(40)
    rep = edgeopt.optimize(FixedSlots().eval(), torch.randn(1, 3, 16, 16), eval_data=held.inputs(),
                           calib_data=held.inputs()[:1], out_dir=tmp_path / "o", runtimes=["onnxruntime"],
                           techniques=["quantize"], cache=False)
    acc = {c.id: c.accuracy for c in [rep.baseline, *rep.candidates]}
    assert rep.model.metric == "fidelity" and acc["original@onnx-fp32"] == pytest.approx(100.0, abs=0.01)
    assert 50.0 < acc["original@onnx-int8"] < 100.0, acc


def _head(images: list[list[tuple]], classes: int = 2, anchors: int = 6) -> np.ndarray:
    """A raw YOLO-style head (batch, 4 + classes, anchors): per image, (cx, cy, w, h, class, score) per anchor;
    the other anchors score 0."""
    a = np.zeros((len(images), 4 + classes, anchors), np.float32)
    for i, boxes in enumerate(images):
        for j, (cx, cy, w, h, c, s) in enumerate(boxes):
            a[i, :4, j] = (cx, cy, w, h)
            a[i, 4 + c, j] = s
    return a


def test_raw_head_decodes_to_boxes_with_nms():
    head = _head([[(10, 10, 4, 4, 0, 0.9), (10.2, 10, 4, 4, 0, 0.8), (10, 10, 4, 4, 1, 0.7), (30, 30, 2, 2, 1, 1e-4)],
                  []])
    assert is_box_head(head) and not is_box_head(head[:, :, :1]) and not is_box_head(head[0])
    dets = decode_head(head, num_classes=2)
    first = dets[0]
    # the overlapping box of the same class is suppressed, the other class's kept, the one under the floor dropped
    assert first["labels"].tolist() == [0, 1] and np.allclose(first["scores"], [0.9, 0.7])
    np.testing.assert_allclose(first["boxes"][0], [8, 8, 12, 12])
    assert len(dets[1]["boxes"]) == 0  # an image with nothing detected is a valid output


def test_raw_head_scored_by_map_and_a_segmenter_head_reads_only_its_classes():
    targets = [{"boxes": torch.tensor([[8.0, 8, 12, 12]]), "labels": torch.tensor([1])}]
    batches = Batches([(torch.zeros(1, 3, 32, 32), targets)])
    batches.metric = Metric("map50", num_classes=2)
    right = {"output": _head([[(10, 10, 4, 4, 1, 0.9)]])}
    wrong = {"output": _head([[(10, 10, 4, 4, 0, 0.9)]])}
    got = score(right, batches)
    assert got == (100.0, "map50") and got.metrics == {"map50": 100.0, "map50_95": 100.0}
    assert score(wrong, batches)[0] == 0.0
    # a segmenter's head: mask coefficients after the class scores are not classes
    seg = np.concatenate([right["output"], np.full((1, 3, 6), 0.99, np.float32)], 1)
    assert score({"output": seg}, batches)[0] == 100.0
    batches.metric = load_metric("mAP@0.5:0.95")
    assert batches.metric.name == "map" and score(right, batches)[1] == "map"
