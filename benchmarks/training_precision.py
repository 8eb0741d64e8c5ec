"""What bfloat16 autocast buys fine-tuning on this machine, and what it costs in recovery.

`optimize --retrain` times a step of each model both ways and trains in bfloat16 where it is at least 1.25x faster
(edgeopt/training/mixed_precision.py). This reports, per real-library model of `real_models.py`, the two step times
that choice reads (a batch of 32, the teacher's forward beside it; random weights: the arithmetic, not the
weights, sets the time) and, for the models named by --recovery, the recovery itself: the trained model (cached by
real_models.py) with half its channels pruned and reconstructed, then fine-tuned by distillation for --steps
optimizer steps in fp32 and in bfloat16 from the same start, each scored on held-out data (segmenters: mIoU).

    python benchmarks/training_precision.py                     # the five models' step times; the Unet's recovery
    python benchmarks/training_precision.py --models unet,deit --recovery unet --steps 300 --out /tmp/tp
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import edgeopt  # noqa: E402
from benchmarks import real_models as rm  # noqa: E402
from benchmarks import synthetic_sets as sets  # noqa: E402
from edgeopt.techniques import PruneConfig  # noqa: E402
from edgeopt.training import fit  # noqa: E402
from edgeopt.training.loop import training_device  # noqa: E402
from edgeopt.training.mixed_precision import choose_precision  # noqa: E402

BATCH = 32


def step_times(name: str) -> dict:
    bench = rm.BENCHES[name]
    torch.manual_seed(0)
    model = edgeopt.load_model(bench.spec, input_shape=bench.input_shape).model.eval()
    x = torch.randn(BATCH, *bench.input_shape[1:])
    return {"model": name, **choose_precision(model, model, x, training_device())}


def _miou(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, classes: int) -> float:
    model.eval()
    inter, union = np.zeros(classes), np.zeros(classes)
    with torch.no_grad():
        for i in range(0, len(x), 16):
            p, g = model(x[i:i + 16]).argmax(1), y[i:i + 16]
            for c in range(classes):
                inter[c] += int(((p == c) & (g == c)).sum())
                union[c] += int(((p == c) | (g == c)).sum())
    return round(100 * float(np.mean(inter / np.maximum(union, 1))), 2)


def recovery(name: str, cache: Path, steps: int, ratio: float) -> dict:
    """Half pruned and reconstructed, then `steps` steps of distillation in fp32 and in bfloat16 from the same
    start: the held-out metric after each and the seconds each took."""
    bench = rm.BENCHES[name]
    if bench.data != "seg":
        raise SystemExit(f"--recovery: {name} is not a segmenter; its recovery is scored by real_models.py")
    paths = rm.data_sets(cache)
    weights, _ = rm.trained_weights(bench, paths, cache)
    teacher = edgeopt.load_model(bench.spec, weights=weights, input_shape=bench.input_shape).model.eval()
    # the test folder's halves: one fine-tunes, the other scores (as real_models.py hands it to optimize)
    imgs, masks = sets.read_masks(paths["seg"] / "test")
    x_all = rm._normalise(torch.from_numpy(imgs).permute(0, 3, 1, 2))
    y_all = torch.from_numpy(masks).long()
    half = len(x_all) // 2
    train = [(x_all[i:i + 8], y_all[i:i + 8]) for i in range(0, half, 8)]

    def metric(m):
        return _miou(m, x_all[half:], y_all[half:], rm.SEG_CLASSES)

    x = torch.randn(*bench.input_shape)
    start = edgeopt.apply(teacher, x, PruneConfig(ratio=ratio, importance="recon", reconstruct=True),
                          data=[b for b, _ in train][:8]).model
    row = {"model": name, "pruned": ratio, "teacher": metric(teacher), "start": metric(start), "steps": steps}
    epochs = max(1, round(steps / len(train)))
    for precision in ("fp32", "bf16"):
        student = copy.deepcopy(start)
        t0 = time.perf_counter()
        res = fit(student, train, teacher=teacher, epochs=epochs, lr=0.01, forecast_end=False, precision=precision)
        row[precision] = {"metric": metric(student), "seconds": round(time.perf_counter() - t0, 1),
                          "steps": res.steps}
    return row


def markdown(times: list[dict], recovered: list[dict]) -> str:
    lines = ["| model | fp32 step s | bf16 step s | gain | chosen |", "|---|---|---|---|---|"]
    for r in times:
        gain = (f"{r['fp32_step_s'] / r['bf16_step_s']:.2f}x" if r.get("bf16_step_s") else "-")
        lines.append(f"| {r['model']} | {r.get('fp32_step_s', '-')} | {r.get('bf16_step_s', '-')} | {gain} | "
                     f"{r['precision']} |")
    if recovered:
        lines += ["", "| model | pruned | teacher | start | steps | fp32: metric, s | bf16: metric, s |",
                  "|---|---|---|---|---|---|---|"]
        for r in recovered:
            lines.append(f"| {r['model']} | {int(100 * r['pruned'])} % | {r['teacher']} | {r['start']} | "
                         f"{r['fp32']['steps']} | {r['fp32']['metric']}, {r['fp32']['seconds']} | "
                         f"{r['bf16']['metric']}, {r['bf16']['seconds']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(rm.BENCHES))
    ap.add_argument("--recovery", default="unet", help="segmenters whose fine-tuning is run both ways ('' for none)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--cache", type=Path, default=rm.DEFAULT_CACHE)
    ap.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    args = ap.parse_args(argv)
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names + args.recovery.split(",") if n and n not in rm.BENCHES]
    if unknown:
        raise SystemExit(f"unknown model {unknown[0]!r}: use {', '.join(rm.BENCHES)}")
    times = [step_times(n) for n in names]
    recovered = [recovery(n, args.cache, args.steps, args.ratio) for n in args.recovery.split(",") if n]
    rm.write_results(args.out, {"times": times, "recovery": recovered}, markdown(times, recovered))


if __name__ == "__main__":
    main()
