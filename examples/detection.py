"""Worked example: optimize a small single-stage detector for latency on this machine, scored by mAP@0.5
through the user-metric hook (the box decoding and NMS are the user's, as in any real detector).

Generated data (seeded, made in a second): noisy images with 1-3 objects of two classes (squares and
discs) and their boxes. The detector is a stride-8 convolutional trunk with a YOLO-style head: per grid cell,
class scores (background + 2) and a box (centre offset, width, height). `edgeopt.optimize` gets the held-out
images with their box lists as evaluation targets and `metric=map50`; --max-accuracy-drop is in mAP points.

    python examples/detection.py            # ~3 minutes on 2 CPU cores
    python examples/detection.py --small    # the version the tests run
    python examples/detection.py --retrain  # pruned candidates distilled from the trained detector too
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's edgeopt, not an installed one
from torch import nn

CLASSES = 2  # square, disc (class 0 of the head is background)
STRIDE = 8


def make_data(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, list[dict]]:
    """Images (n, 3, size, size) and per image {"boxes": (k, 4) xyxy pixels, "labels": (k,) in 1..CLASSES}."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g) * 0.3
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    targets = []
    for i in range(n):
        boxes, labels = [], []
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            cls = int(torch.randint(1, CLASSES + 1, (1,), generator=g))
            r = int(torch.randint(size // 10, size // 5, (1,), generator=g))
            cy, cx = (int(v) for v in torch.randint(r, size - r, (2,), generator=g))
            inside = ((yy - cy).abs() <= r) & ((xx - cx).abs() <= r) if cls == 1 else \
                (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            x[i, cls - 1][inside] += 1.0
            x[i, 2][inside] += 0.5
            boxes.append([cx - r, cy - r, cx + r + 1, cy + r + 1])
            labels.append(cls)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)})
    return x, targets


def block(i: int, o: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, 3, stride, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU())


class TinyDetector(nn.Module):
    """Trunk (stride 8, ResNet-ish blocks) + shared neck, a class head and a box head (YOLO-style, one box
    per cell). Returns {"scores": (N, 1+C, G, G) logits, "boxes": (N, 4, G, G) (dx, dy, log w, log h)}."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.trunk = nn.Sequential(block(3, width // 2, 2), block(width // 2, width, 2), block(width, width),
                                   block(width, width, 2), block(width, width))
        self.neck = block(width, width)
        self.cls = nn.Conv2d(width, 1 + CLASSES, 1)
        self.box = nn.Conv2d(width, 4, 1)

    def forward(self, x):
        f = self.neck(self.trunk(x))
        return {"scores": self.cls(f), "boxes": self.box(f)}


def encode(targets: list[dict], grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-cell class (0 = background) and box regression targets for the cell holding each box centre."""
    cls = torch.zeros(len(targets), grid, grid, dtype=torch.long)
    reg = torch.zeros(len(targets), 4, grid, grid)
    for i, t in enumerate(targets):
        for (x0, y0, x1, y1), lab in zip(t["boxes"].tolist(), t["labels"].tolist(), strict=True):
            cx, cy = (x0 + x1) / 2 / STRIDE, (y0 + y1) / 2 / STRIDE
            gx, gy = min(int(cx), grid - 1), min(int(cy), grid - 1)
            cls[i, gy, gx] = lab
            reg[i, :, gy, gx] = torch.tensor([cx - gx, cy - gy, torch.log(torch.tensor((x1 - x0) / STRIDE)),
                                              torch.log(torch.tensor((y1 - y0) / STRIDE))])
    return cls, reg


def decode(outputs: dict, score_min: float = 0.3, iou: float = 0.5) -> list[dict]:
    """Boxes (xyxy pixels), scores and labels per image, after NMS: the user's post-processing."""
    from torchvision.ops import batched_nms

    probs = outputs["scores"].float().softmax(1)
    reg = outputs["boxes"].float()
    n, _, gh, gw = probs.shape
    gy, gx = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    result = []
    for i in range(n):
        score, label = probs[i, 1:].max(0)
        keep = score > score_min
        cx, cy = (gx + reg[i, 0]) * STRIDE, (gy + reg[i, 1]) * STRIDE
        w, h = reg[i, 2].clamp(-4, 4).exp() * STRIDE, reg[i, 3].clamp(-4, 4).exp() * STRIDE
        boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)[keep]
        s, lab = score[keep], label[keep] + 1
        k = batched_nms(boxes, s, lab, iou)
        result.append({"boxes": boxes[k], "scores": s[k], "labels": lab[k]})
    return result


def map50(outputs: dict, targets: list[dict]) -> float:
    """mAP at IoU 0.5 in percent (torchmetrics), over all held-out images: the metric edgeopt is given."""
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(iou_thresholds=[0.5])
    metric.update(decode(outputs), targets)
    return float(metric.compute()["map_50"]) * 100


def train(model: nn.Module, x: torch.Tensor, targets: list[dict], epochs: int, batch: int = 16) -> nn.Module:
    grid = x.shape[-1] // STRIDE
    cls, reg = encode(targets, grid)
    weight = torch.tensor([0.2] + [1.0] * CLASSES)  # most cells are background
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(len(x)))
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            out = model(x[idx])
            pos = (cls[idx] > 0).unsqueeze(1).float()
            loss = nn.functional.cross_entropy(out["scores"], cls[idx], weight=weight) + \
                (nn.functional.smooth_l1_loss(out["boxes"], reg[idx], reduction="none") * pos).sum() / pos.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def batches(x: torch.Tensor, targets: list[dict], size: int = 16) -> list:
    return [(x[i:i + size], targets[i:i + size]) for i in range(0, len(x), size)]


def run(out_dir: str | Path = "out/detection", small: bool = False, retrain: bool = False, **optimize_kwargs):
    """Train the example model, then optimize it; `retrain=True` also hands edgeopt the training split, so
    pruned candidates are fine-tuned (distilled from the trained model on every output)."""
    import edgeopt

    torch.manual_seed(0)
    size, n_train, n_eval, epochs = (32, 128, 32, 6) if small else (64, 768, 128, 12)
    x, targets = make_data(n_train + n_eval, size)
    t0 = time.perf_counter()
    model = train(TinyDetector(16 if small else 32), x[:n_train], targets[:n_train], epochs)
    trained_s = time.perf_counter() - t0
    kwargs = dict(target="local", goal="latency", max_accuracy_drop=2.0, out_dir=out_dir, metric=map50,
                  calib_data=[x[i:i + 16] for i in range(0, 64, 16)],
                  eval_data=batches(x[n_train:], targets[n_train:]))
    if retrain:
        kwargs.update(retrain=True, epochs=3, train_data=batches(x[:n_train], targets[:n_train]))
    kwargs.update(optimize_kwargs)
    report = edgeopt.optimize(model, example_inputs=x[:1], **kwargs)
    return report, trained_s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="tiny images and model (what the tests run)")
    ap.add_argument("--out", default="out/detection")
    ap.add_argument("--retrain", action="store_true", help="let edgeopt fine-tune pruned candidates (slower)")
    args = ap.parse_args(argv)
    report, trained_s = run(args.out, args.small, retrain=args.retrain)
    base, chosen = report.baseline, report.chosen_candidate
    print(f"trained in {trained_s:.1f} s; baseline {base.runtime} {base.precision}: mAP@0.5 {base.accuracy:.1f}%, "
          f"p50 {base.latency_ms.p50:.2f} ms")
    if chosen is not None:
        print(f"chosen {chosen.id}: mAP@0.5 {chosen.accuracy:.1f}% (drop {chosen.accuracy_drop:+.2f} points), "
              f"p50 {chosen.latency_ms.p50:.2f} ms ({base.latency_ms.p50 / chosen.latency_ms.p50:.2f}x)")
    return 0 if chosen is not None else 1


if __name__ == "__main__":
    sys.exit(main())
