"""The data pipeline's goals, measured (benchmarks, not tests):

(a) retraining on an image folder: a small CNN trained on the digits written as a 10-class PNG folder, pruned
    30 % (L2) and fine-tuned 3 epochs with response distillation, on shuffled batches (the pipeline, three
    shuffle seeds) vs fixed class-sorted batches (what a class-sorted file list gives without per-epoch
    shuffling); and the same cut with reconstruction before the fine-tuning, as `optimize --retrain` runs it;
(b) peak memory (PSS summed over the process tree: edgeopt and its DataLoader workers) of a no-retrain
    `edgeopt optimize` on folders of N generated 224x224 images, e.g. 12,000 vs 1,200;
(c) the share of each fine-tuning epoch spent waiting for data (decoding and feeding), demo model at 64x64;
(d) `optimize --retrain` on the folder of (a): whether the chosen candidate is physically pruned.

  python benchmarks/data_pipeline.py [--parts a,b,c,d] [--images 12000,1200] [--out data_pipeline.json]

The PNGs are generated in a temporary folder and deleted afterwards."""

from __future__ import annotations

import argparse
import copy
import json
import math
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's edgeopt, not an installed one
import edgeopt  # noqa: E402
from edgeopt.inputs.data import image_folder  # noqa: E402
from edgeopt.inputs.demo import DemoNet  # noqa: E402
from edgeopt.report import write_atomic  # noqa: E402
from edgeopt.training import fit, top1  # noqa: E402
from edgeopt.training.losses import hinton_loss  # noqa: E402


def digits_folder(root: Path, size: int) -> Path:
    """scikit-learn's digits as grayscale PNGs, one sub-folder per class, files class-sorted by name."""
    from PIL import Image
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    a = (x.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    for i, (img, label) in enumerate(zip(a, y, strict=True)):
        d = root / f"digit{label}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0], mode="L").save(d / f"{i:05d}.png")
    return root


def synthetic_folder(root: Path, n: int, size: int = 224, classes: int = 10) -> Path:
    """n smooth colour images (a class-dependent tint plus a random gradient; PNG-friendly, so generating
    thousands stays quick)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    for i in range(n):
        k = i % classes
        d = root / f"class{k}"
        d.mkdir(parents=True, exist_ok=True)
        gx, gy = rng.random(2)
        base = np.array([k / classes, 1 - k / classes, rng.random()], dtype=np.float32)
        img = base[None, None, :] * 0.6 + 0.4 * (gx * ramp[None, :, None] + gy * ramp[:, None, None]) / 2
        Image.fromarray((img * 255).astype(np.uint8), mode="RGB").save(d / f"{i:06d}.png", compress_level=1)
    return root


def fit_fixed_batches(student, teacher, batches, epochs: int = 3, lr: float = 0.01, seed: int = 0) -> None:
    """The fine-tuning loop as it ran on fixed, class-sorted batches: the batch order is shuffled each epoch,
    the batches themselves are not (same optimiser, schedule and loss as edgeopt.training.fit)."""
    torch.manual_seed(seed)
    opt = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    total = epochs * len(batches)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    gen = torch.Generator().manual_seed(seed)
    teacher.eval()
    student.train()
    for _ in range(epochs):
        for i in torch.randperm(len(batches), generator=gen).tolist():
            x, y = batches[i]
            with torch.no_grad():
                t_out = teacher(x)
            loss = hinton_loss(student(x), t_out, y, 4.0, 0.7)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    student.eval()


def part_a(tmp: Path, base_epochs: int, log, seeds_n: int = 3) -> dict:
    root = digits_folder(tmp / "digits32", 32)
    s = image_folder(root, 32, 1, (0.3,), (0.4,), augment=False, batch_size=32)
    log(f"(a) {len(s.train)} training / {len(s.eval)} held-out images")
    torch.manual_seed(0)
    model = DemoNet(width=16)
    t0 = time.perf_counter()
    fit(model, s.train, epochs=base_epochs, lr=0.05)
    base = top1(model, s.eval)
    log(f"(a) original: {base:.2f} % after {base_epochs} epochs ({time.perf_counter() - t0:.0f} s)")
    example = torch.randn(1, 1, 32, 32)
    pruned = edgeopt.prune(model, example, ratio=0.3, method="l2").model
    out = {"train_images": len(s.train), "heldout_images": len(s.eval), "original_top1": round(base, 2),
           "pruned_no_finetune_top1": round(top1(pruned, s.eval), 2)}
    shuffled = copy.deepcopy(pruned)
    fit(shuffled, s.train, teacher=model, epochs=3)
    out["finetuned_shuffled_top1"] = round(top1(shuffled, s.eval), 2)
    seeds = [out["finetuned_shuffled_top1"]]  # the shuffle order (seed) moves the result by a few images
    for seed in range(1, seeds_n):
        again = copy.deepcopy(pruned)
        fit(again, s.train, teacher=model, epochs=3, seed=seed)
        seeds.append(round(top1(again, s.eval), 2))
    out["finetuned_shuffled_top1_per_seed"] = seeds
    # what `optimize --retrain` starts from: the same 30 % L2 cut with least-squares reconstruction on the
    # calibration sample (no labels), then the same fine-tuning
    calib = [b[0] if isinstance(b, (tuple, list)) else b for b in s.calib]
    rebuilt = edgeopt.prune(model, example, ratio=0.3, method="l2", data=calib, reconstruct=True).model
    out["reconstructed_no_finetune_top1"] = round(top1(rebuilt, s.eval), 2)
    per_seed = []
    for seed in range(seeds_n):
        tuned = copy.deepcopy(rebuilt)
        fit(tuned, s.train, teacher=model, epochs=3, seed=seed)
        per_seed.append(round(top1(tuned, s.eval), 2))
    out["reconstructed_finetuned_top1_per_seed"] = per_seed
    augmented = copy.deepcopy(pruned)
    s_aug = image_folder(root, 32, 1, (0.3,), (0.4,), augment=True, batch_size=32)
    fit(augmented, s_aug.train, teacher=model, epochs=3)
    out["finetuned_shuffled_augmented_top1"] = round(top1(augmented, s.eval), 2)
    sorted_batches = list(s.train)  # the fixed order: class-sorted file list, cut into batches once
    ordered = copy.deepcopy(pruned)
    fit_fixed_batches(ordered, model, sorted_batches, epochs=3)
    out["finetuned_class_sorted_top1"] = round(top1(ordered, s.eval), 2)
    log(f"(a) {out}")
    return out


MODEL_FILE = '''import torch
from torch import nn


def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, 4, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
'''


def tree_memory(proc) -> int:
    """Proportional set size of the process and its workers: forked workers share the parent's pages, which
    a sum of RSS would count once per process."""
    import psutil

    try:
        p = psutil.Process(proc.pid)
        return sum(q.memory_full_info().pss for q in [p, *p.children(recursive=True)])
    except psutil.Error:
        return 0


def part_b(tmp: Path, counts: list[int], log) -> dict:
    (tmp / "smallcnn.py").write_text(MODEL_FILE)
    out = {}
    for n in counts:
        folder = tmp / f"images{n}"
        t0 = time.perf_counter()
        synthetic_folder(folder, n)
        log(f"(b) {n} images written in {time.perf_counter() - t0:.0f} s")
        cmd = [sys.executable, "-m", "edgeopt", "optimize", "--model", f"{tmp / 'smallcnn.py'}:make",
               "--input-shape", "1,3,224,224", "--data", str(folder), "--techniques", "quantize",
               "--runtimes", "onnxruntime", "--bench-time", "1", "--max-accuracy-drop", "100",
               "--out", str(tmp / f"out{n}")]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        peak = [0]

        def watch(proc=proc, peak=peak):
            while proc.poll() is None:
                peak[0] = max(peak[0], tree_memory(proc))
                time.sleep(0.1)

        t = threading.Thread(target=watch)
        t.start()
        _, err = proc.communicate()
        t.join()
        if proc.returncode not in (0, 1):
            raise RuntimeError(f"optimize on {n} images failed: {err[-1500:]}")
        out[str(n)] = {"peak_pss_mb": round(peak[0] / 2**20), "seconds": round(time.perf_counter() - t0, 1)}
        log(f"(b) {n} images: {out[str(n)]}")
        import shutil

        shutil.rmtree(folder)
    if len(counts) > 1:
        big, small = str(max(counts)), str(min(counts))
        out["ratio_largest_to_smallest"] = round(out[big]["peak_pss_mb"] / out[small]["peak_pss_mb"], 2)
    return out


def part_d(tmp: Path, base_epochs: int, log) -> dict:
    """`optimize --retrain` on the image folder (API; the CLI builds the same run): does the search now keep a
    physically pruned model? The original is the part (a) model, trained on the folder's training split."""
    root = tmp / "digits32"
    if not root.exists():
        digits_folder(root, 32)
    s = image_folder(root, 32, 1, (0.3,), (0.4,), augment=False, batch_size=32)
    torch.manual_seed(0)
    model = DemoNet(width=16)
    fit(model, s.train, epochs=base_epochs, lr=0.05)
    t0 = time.perf_counter()
    # digits are not mirror-symmetric (a flipped 2 is no 2): augmentation off, as in part (a)
    report = edgeopt.optimize(model, torch.randn(1, 1, 32, 32), data=str(root), retrain=True, epochs=3,
                              data_options={"image_size": [32, 32], "mean": [0.3], "std": [0.4], "augment": False},
                              techniques=["prune", "fine_tune", "bn_recalibrate", "quantize"],
                              runtimes=["onnxruntime"], max_accuracy_drop=1.0, out_dir=tmp / "optimize-retrain")
    chosen = report.chosen_candidate
    base = report.baseline
    out = {"seconds": round(time.perf_counter() - t0, 1), "chosen": chosen.id if chosen else None,
           "chosen_steps": [st.technique for st in chosen.steps] if chosen else [],
           "baseline_accuracy": base.accuracy if base else None,
           "chosen_accuracy": chosen.accuracy if chosen else None,
           "chosen_params": chosen.params if chosen else None, "baseline_params": base.params if base else None,
           "physically_pruned": bool(chosen and base and chosen.params and chosen.params < base.params)}
    log(f"(d) {out}")
    return out


def part_c(tmp: Path, epochs: int, log) -> dict:
    root = digits_folder(tmp / "digits64", 64)
    out = {}
    for workers in (0, None):
        s = image_folder(root, 64, 1, (0.3,), (0.4,), augment=True, batch_size=32, workers=workers)
        torch.manual_seed(0)
        res = fit(DemoNet(), s.train, epochs=epochs, lr=0.05)
        shares = [round(100 * d / e, 1) for d, e in zip(res.data_seconds, res.epoch_seconds, strict=True)]
        key = f"workers_{s.train.workers}"
        out[key] = {"epoch_seconds": res.epoch_seconds, "data_seconds": res.data_seconds, "data_share_pct": shares}
        log(f"(c) {key}: {out[key]}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="a,b,c")
    ap.add_argument("--images", default="12000,1200", help="(b) folder sizes, comma separated")
    ap.add_argument("--base-epochs", type=int, default=8, help="(a) epochs to train the original model")
    ap.add_argument("--epochs", type=int, default=2, help="(c) fine-tuning epochs timed")
    ap.add_argument("--out", type=Path, default=Path("data_pipeline.json"))
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    result = {}
    with tempfile.TemporaryDirectory(prefix="edgeopt-data-bench-") as d:
        tmp = Path(d)
        parts = set(args.parts.split(","))
        if "a" in parts:
            result["retrain"] = part_a(tmp, args.base_epochs, log)
        if "d" in parts:
            result["optimize_retrain"] = part_d(tmp, args.base_epochs, log)
        if "c" in parts:
            result["loading"] = part_c(tmp, args.epochs, log)
        if "b" in parts:
            result["memory"] = part_b(tmp, [int(v) for v in args.images.split(",")], log)
    write_atomic(args.out, json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
