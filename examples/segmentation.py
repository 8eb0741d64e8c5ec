"""Worked example: optimize a small segmenter for latency on this machine, scored by mIoU.

Generated data (seeded, made in a second): noisy images with rectangles (class 1) and discs (class 2) on
background (class 0), with their masks. A small encoder-decoder returning torchvision's dict ({"out": ...})
is trained for a few epochs, then `edgeopt.optimize` searches pruning/factorization/precisions with the
held-out masks as evaluation data: the metric is mIoU and --max-accuracy-drop is in mIoU points.

    python examples/segmentation.py            # ~2-3 minutes on 2 CPU cores
    python examples/segmentation.py --small    # the version the tests run
    python examples/segmentation.py --retrain  # pruned candidates fine-tuned too (a few minutes more)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's edgeopt, not an installed one
from torch import nn

CLASSES = 3  # background, rectangle, disc


def make_data(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (n, 3, size, size) and masks (n, size, size) of class indices."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g) * 0.3
    y = torch.zeros(n, size, size, dtype=torch.long)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for i in range(n):
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            cls = int(torch.randint(1, CLASSES, (1,), generator=g))
            r = int(torch.randint(size // 8, size // 4, (1,), generator=g))
            cy, cx = (int(v) for v in torch.randint(r, size - r, (2,), generator=g))
            inside = ((yy - cy).abs() <= r) & ((xx - cx).abs() <= r) if cls == 1 else \
                (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            y[i][inside] = cls
            x[i, cls - 1][inside] += 1.0  # a colour cue per class, plus the shape
            x[i, 2][inside] += 0.5
    return x, y


def block(i: int, o: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, 3, stride, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU())


class TinySegmenter(nn.Module):
    """Encoder (stride 4) + decoder head, upsampled to the input size; returns {"out": logits}."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.encoder = nn.Sequential(block(3, width // 2, 2), block(width // 2, width), block(width, width, 2),
                                     block(width, width))
        self.head = nn.Sequential(block(width, width), nn.Conv2d(width, CLASSES, 1))

    def forward(self, x):
        logits = self.head(self.encoder(x))
        return {"out": nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)}


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, batch: int = 16) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(len(x)))
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            loss = nn.functional.cross_entropy(model(x[idx])["out"], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def batches(x: torch.Tensor, y: torch.Tensor, size: int = 16) -> list:
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


def run(out_dir: str | Path = "out/segmentation", small: bool = False, retrain: bool = False, **optimize_kwargs):
    """Train the example model, then optimize it; `retrain=True` also hands edgeopt the training split, so
    pruned candidates are fine-tuned (distilled from the trained model on every output, with cross-entropy
    on the masks)."""
    import edgeopt

    torch.manual_seed(0)
    size, n_train, n_eval, epochs = (32, 96, 32, 3) if small else (64, 512, 128, 8)
    x, y = make_data(n_train + n_eval, size)
    t0 = time.perf_counter()
    model = train(TinySegmenter(16 if small else 32), x[:n_train], y[:n_train], epochs)
    trained_s = time.perf_counter() - t0
    kwargs = dict(target="local", goal="latency", max_accuracy_drop=2.0, out_dir=out_dir,
                  calib_data=batches(x[:64], y[:64]), eval_data=batches(x[n_train:], y[n_train:]))
    if retrain:
        kwargs.update(retrain=True, epochs=3, train_data=batches(x[:n_train], y[:n_train]))
    kwargs.update(optimize_kwargs)
    report = edgeopt.optimize(model, example_inputs=x[:1], **kwargs)
    return report, trained_s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="tiny images and model (what the tests run)")
    ap.add_argument("--out", default="out/segmentation")
    ap.add_argument("--retrain", action="store_true", help="let edgeopt fine-tune pruned candidates (slower)")
    args = ap.parse_args(argv)
    report, trained_s = run(args.out, args.small, retrain=args.retrain)
    base, chosen = report.baseline, report.chosen_candidate
    print(f"trained in {trained_s:.1f} s; baseline {base.runtime} {base.precision}: mIoU {base.accuracy:.1f}%, "
          f"p50 {base.latency_ms.p50:.2f} ms")
    if chosen is not None:
        print(f"chosen {chosen.id}: mIoU {chosen.accuracy:.1f}% (drop {chosen.accuracy_drop:+.2f} points), "
              f"p50 {chosen.latency_ms.p50:.2f} ms ({base.latency_ms.p50 / chosen.latency_ms.p50:.2f}x)")
    return 0 if chosen is not None else 1


if __name__ == "__main__":
    sys.exit(main())
