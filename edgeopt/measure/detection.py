"""Scoring detectors whose outputs are per-image box sets (torchvision's `[{"boxes", "labels", "scores"}, ...]`):
recognising such outputs among a model's flattened output names (and decoding a raw YOLO head tensor into them
for mAP), box-level fidelity with the original model (greedy matching by IoU and class, weighted by score
agreement) and mAP against labelled boxes (torchmetrics' MeanAveragePrecision with the pycocotools backend:
mAP@0.5 and mAP@0.5:0.95). A set with no boxes is a valid output everywhere."""

from __future__ import annotations

import re

import numpy as np

DETECTIONS = "detections"  # the predictions' key holding one box dict per image (an object array)
MATCH_IOU = 0.5  # a candidate's box agrees with an original's box at this IoU or more, with the same class
BOX_FIELDS = ("boxes", "labels", "scores")
_PER_IMAGE = re.compile(r"^(\d+)\.([A-Za-z_]\w*)$")
BOX_FIDELITY_MEANING = ("% agreement of the detected boxes with the original's, image by image: boxes matched "
                        f"greedily (same class, IoU >= {MATCH_IOU}), each match counting its score agreement "
                        "(1 - |score difference|) weighted by the original's score, over the original's scores "
                        "plus the scores of unmatched extra boxes; an image where both find nothing agrees 100 %")


def group_per_image(outs: dict, batch: int) -> dict:
    """Outputs named `<image>.<field>` for every image 0..batch-1 with the same fields including "boxes" (a
    per-image list of box dicts, flattened) -> {DETECTIONS: object array of `batch` dicts of numpy arrays}, the
    other outputs unchanged. Anything else is returned as it is."""
    per: dict[int, dict] = {}
    for name, v in outs.items():
        m = _PER_IMAGE.match(name)
        if m:
            per.setdefault(int(m.group(1)), {})[m.group(2)] = v
    if sorted(per) != list(range(batch)) or "boxes" not in per.get(0, {}) \
            or any(set(d) != set(per[0]) for d in per.values()):
        return outs
    dets = np.empty(batch, dtype=object)
    for i in range(batch):
        dets[i] = {k: np.asarray(v) for k, v in per[i].items()}
    rest = {k: v for k, v in outs.items() if not _PER_IMAGE.match(k)}
    return {DETECTIONS: dets, **rest}


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in `a` (n, 4) with every box in `b` (m, 4), both x1 y1 x2 y2 -> (n, m)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda t: np.clip(t[:, 2] - t[:, 0], 0, None) * np.clip(t[:, 3] - t[:, 1], 0, None)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _fields(d: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    boxes = np.asarray(d.get("boxes", np.zeros((0, 4))), np.float64).reshape(-1, 4)
    n = len(boxes)
    labels = np.asarray(d["labels"]).reshape(-1) if "labels" in d else np.zeros(n, np.int64)
    scores = np.asarray(d["scores"], np.float64).reshape(-1) if "scores" in d else np.ones(n)
    return boxes, labels, scores


def match(ref: dict, got: dict, iou: float = MATCH_IOU) -> list[tuple[int, int]]:
    """Greedy matching, the original's boxes by descending score: each takes the unmatched candidate box of
    the same class with the highest IoU, if that IoU is at least `iou`. -> [(ref index, got index)]."""
    rb, rl, rs = _fields(ref)
    gb, gl, _ = _fields(got)
    if not len(rb) or not len(gb):
        return []
    ious = box_iou(rb, gb)
    ious[rl[:, None] != gl[None, :]] = -1.0
    free = np.ones(len(gb), bool)
    pairs = []
    for i in np.argsort(-rs, kind="stable"):
        cand = np.where(free, ious[i], -1.0)
        j = int(cand.argmax())
        if cand[j] >= iou:
            free[j] = False
            pairs.append((int(i), j))
    return pairs


def image_agreement(ref: dict, got: dict) -> float:
    """One image's agreement in 0..1 (see BOX_FIDELITY_MEANING)."""
    _, _, rs = _fields(ref)
    _, _, gs = _fields(got)
    if not len(rs) and not len(gs):
        return 1.0
    pairs = match(ref, got)
    matched = sum(rs[i] * (1.0 - min(1.0, abs(rs[i] - gs[j]))) for i, j in pairs)
    extra = np.ones(len(gs), bool)
    extra[[j for _, j in pairs]] = False
    denom = rs.sum() + gs[extra].sum()
    return float(matched / denom) if denom > 0 else 0.0


def box_fidelity(got, ref) -> float:
    """Mean per-image agreement (%) of a candidate's box sets with the original's (same number of images)."""
    if len(got) != len(ref):
        return 0.0
    if not len(ref):
        return 100.0
    return float(np.mean([image_agreement(r, g) for r, g in zip(ref, got, strict=True)]) * 100)


def mean_average_precision(dets, targets) -> dict[str, float]:
    """{"map50": mAP@0.5 in %, "map": mAP@0.5:0.95 in %} of per-image box dicts against per-image targets
    ({"boxes": (k, 4) x1 y1 x2 y2, "labels": (k,)}), by torchmetrics (COCO's definition)."""
    import torch
    from torchmetrics.detection import MeanAveragePrecision

    def t(d: dict, with_scores: bool) -> dict:
        boxes, labels, scores = _fields({k: np.asarray(v) for k, v in d.items()})
        out = {"boxes": torch.as_tensor(boxes, dtype=torch.float32),
               "labels": torch.as_tensor(labels.astype(np.int64))}
        if with_scores:
            out["scores"] = torch.as_tensor(scores, dtype=torch.float32)
        return out

    try:
        import pycocotools.mask  # noqa: F401  (torchmetrics' COCO backend, imported late by it)
    except ImportError:
        from edgeopt.errors import missing_backend

        raise missing_backend("pycocotools (mAP of labelled boxes)", "detection") from None
    metric = MeanAveragePrecision(iou_type="bbox", backend="pycocotools")
    metric.update([t(d, True) for d in dets], [t(d, False) for d in targets])
    got = metric.compute()
    # torchmetrics answers -1 when the targets hold no box at all (mAP undefined): scored 0, never negative
    return {"map50": max(0.0, float(got["map_50"])) * 100, "map": max(0.0, float(got["map"])) * 100}


# Decoding a raw YOLO head for mAP, with the thresholds detectors are usually validated at (a low score floor
# so that the precision-recall curve is complete, NMS at IoU 0.7, at most 300 boxes per image)
HEAD_SCORE_FLOOR = 0.001
HEAD_NMS_IOU = 0.7
HEAD_MAX_BOXES = 300


def is_box_head(a, num_classes: int | None = None) -> bool:
    """A raw detection head: (batch, 4 + classes [+ extra], anchors), boxes first (centre x, centre y, width,
    height in input pixels), then per-class scores (YOLO's export output)."""
    a = np.asarray(a)
    return a.ndim == 3 and a.dtype != object and a.shape[2] > 1 and a.shape[1] >= 4 + (num_classes or 1)


def decode_head(head, num_classes: int | None = None) -> np.ndarray:
    """Per-image box dicts (x1 y1 x2 y2, labels, scores) of a raw head tensor (see `is_box_head`): each anchor's
    best class, a score floor, class-wise NMS and a cap on the boxes. `num_classes` limits the score channels
    (a segmenter's head carries mask coefficients after them); None reads every channel after the box."""
    import torch
    from torchvision.ops import batched_nms

    t = torch.as_tensor(np.asarray(head, np.float32))
    nc = num_classes or t.shape[1] - 4
    out = np.empty(len(t), dtype=object)
    for i, one in enumerate(t):
        xywh, cls = one[:4].T, one[4:4 + nc].T
        scores, labels = cls.max(1)
        keep = scores > HEAD_SCORE_FLOOR
        xywh, scores, labels = xywh[keep], scores[keep], labels[keep]
        boxes = torch.cat([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
        kept = batched_nms(boxes, scores, labels, HEAD_NMS_IOU)[:HEAD_MAX_BOXES]
        out[i] = {"boxes": boxes[kept].numpy(), "labels": labels[kept].numpy().astype(np.int64),
                  "scores": scores[kept].numpy()}
    return out


def as_detections(outs: dict, num_classes: int | None = None) -> dict:
    """Outputs for mAP: per-image box sets as they are, else the first raw head tensor decoded (see
    `decode_head`) under DETECTIONS; anything else unchanged (the metric then says it does not fit)."""
    if DETECTIONS in outs:
        return outs
    for k, v in outs.items():
        if is_box_head(v, num_classes):
            return {DETECTIONS: decode_head(v, num_classes), **{n: w for n, w in outs.items() if n != k}}
    return outs
