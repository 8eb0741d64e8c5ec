"""The "any vision model" table: the segmentation example (mIoU), the detection example (mAP@0.5 through the
user metric) and torchvision's LR-ASPP / DeepLabV3 MobileNetV3 segmenters at 224 (random weights, nothing
downloaded; fidelity to the original on generated images) optimized for latency on this machine, each within
a time budget. Prints one markdown row per model: the chosen candidate's steps, runtime/precision, speedup over
the original on the same runtime (measured, interleaved within that run), metric and drop.

    flock /tmp/edgeopt-bench.lock python examples/any_model_table.py --time-budget 240
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
CASES = ("segmentation", "detection", "lraspp", "deeplabv3")


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", HERE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _torchvision(name: str, out_dir: Path, n_eval: int, **kw):
    """Random weights (weights=None, weights_backbone=None): nothing is downloaded. No labels: fidelity."""
    import torchvision

    import edgeopt

    factory = getattr(torchvision.models.segmentation, f"{name}_mobilenet_v3_large")
    torch.manual_seed(0)
    model = factory(weights=None, weights_backbone=None, num_classes=21, **(
        {"aux_loss": False} if name == "deeplabv3" else {})).eval()
    g = torch.Generator().manual_seed(0)
    images = torch.randn(16 + n_eval, 3, 224, 224, generator=g)  # generated images: calibration and held-out
    calib = [images[i:i + 8] for i in range(0, 16, 8)]
    heldout = [images[i:i + 8] for i in range(16, 16 + n_eval, 8)]
    return edgeopt.optimize(model, example_inputs=images[:1], target="local", goal="latency", out_dir=out_dir,
                            calib_data=calib, eval_data=heldout, **kw)


def _step(step) -> str:
    params = ", ".join(f"{k}={v}" for k, v in step.params.items() if not isinstance(v, (dict, list)))
    return f"{step.technique}({params})"


def _row(name: str, report, seconds: float) -> str:
    chosen = report.chosen_candidate
    everyone = [c for c in [report.baseline, *report.candidates] if c is not None]
    if chosen is None:
        return f"| {name} | none met the budget | — | — | — | — | {seconds:.0f} s |"
    fmt = chosen.id.rsplit("@", 1)[1].rsplit("-", 1)[0]
    original = next((c for c in everyone if c.id == f"original@{fmt}-fp32" and c.latency_ms), None)
    speed = (f"{original.latency_ms.p50 / chosen.latency_ms.p50:.2f}×" if original and chosen.latency_ms
             else "—")
    steps = " + ".join(_step(s) for s in chosen.steps) or "none (original)"
    base = f"{original.accuracy:.1f}" if original and original.accuracy is not None else "—"
    return (f"| {name} | {steps} | {chosen.runtime}/{chosen.precision_executed} | {speed} | "
            f"{chosen.metric} {chosen.accuracy:.1f} (original {base}) | {chosen.accuracy_drop:+.2f} | "
            f"{seconds:.0f} s |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time-budget", type=float, default=240.0, help="search wall-time budget per model, s")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--out", default="out/any_model_table")
    ap.add_argument("--eval-images", type=int, default=32, help="held-out generated images (torchvision models)")
    ap.add_argument("--max-accuracy-drop", type=float, default=2.0)
    args = ap.parse_args(argv)
    kw = dict(time_budget=args.time_budget, max_accuracy_drop=args.max_accuracy_drop, bench_time=5.0)
    rows = []
    for name in args.cases.split(","):
        t0 = time.perf_counter()
        out = Path(args.out) / name
        if name in ("segmentation", "detection"):
            report, _ = _example(name).run(out, **kw)
        else:
            report = _torchvision(name, out, args.eval_images, **kw)
        rows.append(_row(name, report, time.perf_counter() - t0))
        print(rows[-1], flush=True)
    print(f"\nload average {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} cores\n")
    print("| model | chosen steps | runtime/precision | speedup vs original (same runtime) | metric | drop pp "
          "| wall |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
