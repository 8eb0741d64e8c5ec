"""Trained-weights benchmark of models from libraries no one here wrote: Ultralytics YOLOv8n and torchvision
SSDlite (detection, mAP@0.5), segmentation_models_pytorch Unet with a resnet18 encoder (mIoU), timm DeiT-tiny
and ConvNeXt-atto (top-1). Each is trained here on data generated offline (benchmarks/synthetic_sets.py:
scikit-learn's digits and drawn shapes; nothing is downloaded), with the library's own loss, for a fixed
number of steps, enough that its metric means something; the weights are cached (`--cache`, default
/tmp/edgeopt-bench-cache/real/) so a rerun only optimizes. Then `edgeopt.optimize` runs as a user runs it: the
model by its zoo spec with `weights=` the trained state dict, `data=` the folder / data.yaml in the layout
users have, `max_accuracy_drop=1` on the task metric, no retraining (or `--retrain`), `--time-budget` per model.

One row per model: the original's metric on the test split, the chosen candidate, its metric and drop on the
test split (report.json: the candidate's `accuracy_test`, `model.test_split`), its speedup over the original's
best plain conversion (the report's headline `speedup_vs_best_plain`, measured interleaved within the run) and
the wall time of the optimize call. Results: benchmarks/results/real_models-<date>.json and .md.

    python benchmarks/real_models.py [--models yolov8n,ssdlite,unet,deit,convnext] [--time-budget 300]
        [--retrain] [--cache DIR] [--threads N]

Wall times on a shared machine are noisy; the speedups are ratios measured interleaved within each run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import edgeopt  # noqa: E402
from benchmarks import synthetic_sets as sets  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_CACHE = Path("/tmp/edgeopt-bench-cache/real")
DET_SIZE, CLS_SIZE, SEG_SIZE, SEG_CLASSES = 160, 96, 128, 1 + len(sets.SHAPES)


@dataclass
class Bench:
    """One benchmarked model: its zoo spec, input shape, which data set it reads, its metric, its trainer."""

    name: str
    spec: str
    input_shape: tuple[int, ...]
    data: str  # "det" | "cls" | "seg"
    metric: str | None
    train: str  # the name of the function in this module that trains it
    train_steps: int  # optimizer steps (a fixed count: a wall-time budget trains less on a loaded machine)


HERE = Path(__file__).resolve()
BENCHES = {b.name: b for b in (
    Bench("yolov8n", "ultralytics:yolov8n.yaml?nc=10", (1, 3, DET_SIZE, DET_SIZE), "det", "map50", "train_yolo", 1000),
    # torchvision's SSDlite builder fixes its internal resize at 320 (a `size` keyword clashes with it): built by
    # the factory below, which resizes to the canvases' 160 instead (4x less compute, same architecture)
    Bench("ssdlite", f"{HERE}:ssdlite_160", (1, 3, DET_SIZE, DET_SIZE), "det_tv", "map50", "train_ssd", 1000),
    Bench("unet", f"smp:Unet?encoder_name=resnet18&encoder_weights=none&classes={SEG_CLASSES}",
          (1, 3, SEG_SIZE, SEG_SIZE), "seg", None, "train_unet", 800),
    Bench("deit", "timm:deit_tiny_patch16_224?img_size=96&num_classes=10", (1, 3, CLS_SIZE, CLS_SIZE), "cls", None,
          "train_classifier", 2000),
    Bench("convnext", "timm:convnext_atto?num_classes=10", (1, 3, CLS_SIZE, CLS_SIZE), "cls", None,
          "train_classifier", 1500),
)}


def ssdlite_160():
    """torchvision's ssdlite320_mobilenet_v3_large (no weights, 10 digits + background) resizing to 160 px."""
    import torchvision

    model = torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
                                                                      num_classes=11)
    model.transform.min_size, model.transform.max_size, model.transform.fixed_size = (DET_SIZE,), DET_SIZE, \
        (DET_SIZE, DET_SIZE)
    return model


# ---------------------------------------------------------------- data (generated once, cached)

def data_sets(cache: Path, small: bool = False) -> dict[str, Path]:
    """The three generated sets under cache/data (written on first use): {"det": data.yaml, "cls": the
    classification folders' parent, "seg": the mask folders' parent}. `small`: a few images each (tests)."""
    root = cache / "data"
    paths = {"det": root / "det" / "data.yaml", "det_tv": root / "det_tv" / "data.yaml", "cls": root / "cls",
             "seg": root / "seg"}
    done = root / ".complete"
    if not done.exists():
        if small:
            sets.write_detection_set(root / "det", n_train=8, n_val=4)
            sets.write_classification_set(root / "cls", size=CLS_SIZE, train_copies=1, test_copies=1, limit=20)
            sets.write_segmentation_set(root / "seg", n_train=8, n_test=8, size=SEG_SIZE)
        else:
            sets.write_detection_set(root / "det", size=DET_SIZE)
            sets.write_classification_set(root / "cls", size=CLS_SIZE)
            sets.write_segmentation_set(root / "seg", size=SEG_SIZE)
        torchvision_labels(root / "det", root / "det_tv")
        done.write_text("ok\n")
    return paths


def torchvision_labels(src: Path, dst: Path) -> None:
    """The detection set as a torchvision detector's labels see it: class c is label c + 1 (0 is the
    background), so a data.yaml whose `names` start with the background; the images are links to the
    originals. edgeopt compares a model's labels with the data's class indices as they are."""
    names = ", ".join(["'__background__'"] + [f"'{d}'" for d in range(10)])
    for split in ("train", "val"):
        (dst / "images" / split).mkdir(parents=True, exist_ok=True)
        (dst / "labels" / split).mkdir(parents=True, exist_ok=True)
        for img in sorted((src / "images" / split).glob("*.png")):
            link = dst / "images" / split / img.name
            if not link.exists():
                link.symlink_to(img)
            rows = [line.split() for line in (src / "labels" / split / f"{img.stem}.txt").read_text().splitlines()
                    if line.strip()]
            (dst / "labels" / split / f"{img.stem}.txt").write_text(
                "".join(f"{int(r[0]) + 1} {' '.join(r[1:])}\n" for r in rows))
    (dst / "data.yaml").write_text(f"path: {dst}\ntrain: images/train\nval: images/val\nnames: [{names}]\n")


# training images per class a classifier's --retrain fine-tunes on (and calibration samples from)
CLS_TUNE_PER_CLASS = 60


def classification_split(cls: Path, dst: Path, per_class: int = CLS_TUNE_PER_CLASS) -> Path:
    """The classification set as a user's split folder (links to its images): `train/<class>/` the first
    `per_class` training digits (copy 0), `val/<class>/` every test digit once (copy 0). The test folder holds two
    jittered copies of each digit, so splitting it in halves put a copy of half the held-out digits among the
    images --retrain fine-tuned on, and copies of one digit on both sides of the selection/test split."""
    if (dst / ".complete").exists():
        return dst
    for part, src, limit in (("train", cls / "train", per_class), ("val", cls / "test", None)):
        for cdir in sorted(p for p in src.iterdir() if p.is_dir()):
            out = dst / part / cdir.name
            if part == "val" and not (dst / "train" / cdir.name).is_dir():
                continue  # a class with no training image (the tests' tiny set): no class index to score it by
            for img in sorted(cdir.glob("0_*.png"))[:limit]:
                out.mkdir(parents=True, exist_ok=True)
                if not (out / img.name).exists():
                    (out / img.name).symlink_to(img.resolve())
    (dst / ".complete").write_text("ok\n")
    return dst


def optimize_data(bench: Bench, paths: dict[str, Path]) -> tuple[str, dict]:
    """What a user passes to optimize for this model: `data=` and `data_options=`. Held out: images the model
    was never trained on (selection + test parts). The segmentation test folder's other half calibrates (and
    fine-tunes with --retrain); a classifier calibrates and fine-tunes on training images (a split folder), a
    detector on the data.yaml's train split."""
    if bench.data in ("det", "det_tv"):
        return str(paths[bench.data]), {}
    if bench.data == "cls":
        return str(classification_split(paths["cls"], paths["cls"].parent / "cls_split")), {}
    return str(paths["seg"] / "test"), {"val_split": 0.5}


def write_results(stem: Path | None, record: dict, md: str) -> None:
    """Print the table `md`; with `stem`, write it to STEM.md and `record` to STEM.json."""
    print(md)
    if stem is not None:
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".json").write_text(json.dumps(record, indent=1))
        stem.with_suffix(".md").write_text(md + "\n")


# ---------------------------------------------------------------- training (the library's own loss)

class Schedule:
    """Exactly `steps` optimizer steps (a count, not a wall time: on a shared machine a time budget trains a
    model less the busier the machine is), the learning rate warmed up over the first 5 %, then cosine-decayed
    to 0 by the last step."""

    def __init__(self, opt, steps: int):
        self.opt, self.steps, self.step = opt, steps, 0
        self.base = [g["lr"] for g in opt.param_groups]

    def done(self) -> bool:
        return self.step >= self.steps

    def tick(self) -> None:
        self.step += 1
        p = min(self.step / self.steps, 1.0)
        f = min(1.0, p / 0.05 + 1e-3) * 0.5 * (1 + math.cos(math.pi * p))
        for g, lr in zip(self.opt.param_groups, self.base, strict=True):
            g["lr"] = lr * f


def _yolo_targets(labels: list[np.ndarray], idx: np.ndarray) -> dict:
    """Ultralytics' training batch fields: batch_idx, cls, bboxes (normalised cx cy w h)."""
    rows = [(k, lab) for k, i in enumerate(idx) for lab in labels[i]]
    if not rows:
        return {"batch_idx": torch.zeros(0), "cls": torch.zeros(0, 1), "bboxes": torch.zeros(0, 4)}
    return {"batch_idx": torch.tensor([k for k, _ in rows], dtype=torch.float32),
            "cls": torch.tensor([[lab[0]] for _, lab in rows], dtype=torch.float32),
            "bboxes": torch.tensor(np.stack([lab[1:] for _, lab in rows]), dtype=torch.float32)}


def train_yolo(model: torch.nn.Module, paths: dict, steps: int, log=print) -> int:
    """YOLOv8n with Ultralytics' own detection loss (DetectionModel.loss: v8DetectionLoss with its default
    gains), AdamW, warm-up then cosine; images scaled to 0..1 as edgeopt reads a data.yaml. Returns the steps."""
    imgs, labels = sets.read_yolo_split(paths["det"].parent, "train")
    x_all = torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous()
    for m in model.modules():  # the training maps, not the export tensor
        if m is not model and isinstance(getattr(type(m), "export", None), bool):
            m.export = False
    model.args = SimpleNamespace(box=7.5, cls=0.5, dfl=1.5)  # Ultralytics' default loss gains
    model.criterion = None

    def loss(idx):
        return model.loss({"img": x_all[idx].float() / 255, **_yolo_targets(labels, idx)})[0].sum() / len(idx)

    n = _loop(model, len(x_all), loss, steps, bs=16, lr=2e-3, wd=5e-4, log=log, name="yolo")
    model.criterion = None
    del model.args
    return n


def train_ssd(model: torch.nn.Module, paths: dict, steps: int, log=print) -> int:
    """torchvision SSDlite with its own loss (train mode returns the loss dict); class c of the data.yaml is
    label c + 1 (torchvision detectors keep 0 for the background)."""
    imgs, labels = sets.read_yolo_split(paths["det"].parent, "train")
    x_all = torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous()
    size = x_all.shape[-1]

    def targets(idx):
        out = []
        for i in idx:
            lab = labels[i]
            cx, cy, w, h = (torch.from_numpy(lab[:, k]) * size for k in range(1, 5))
            boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1) if len(lab) else torch.zeros(0, 4)
            out.append({"boxes": boxes.float(), "labels": torch.from_numpy(lab[:, 0]).long() + 1})
        return out

    def loss(idx):
        return sum(model(list(x_all[idx].float() / 255), targets(idx)).values())

    return _loop(model, len(x_all), loss, steps, bs=16, lr=2e-3, wd=1e-4, log=log, name="ssd")


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """edgeopt's default image preprocessing for folders and masks: 0..1, then mean 0.5 / std 0.5."""
    return (x.float() / 255 - 0.5) / 0.5


def train_unet(model: torch.nn.Module, paths: dict, steps: int, log=print) -> int:
    """smp Unet with per-pixel cross-entropy on the shapes' masks."""
    imgs, masks = sets.read_masks(paths["seg"] / "train")
    x_all = torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous()
    y_all = torch.from_numpy(masks).long()

    def loss(idx):
        return torch.nn.functional.cross_entropy(model(_normalise(x_all[idx])), y_all[idx])

    return _loop(model, len(x_all), loss, steps, bs=8, lr=2e-3, wd=1e-4, log=log, name="unet")


def train_classifier(model: torch.nn.Module, paths: dict, steps: int, log=print) -> int:
    """A timm classifier with cross-entropy on the digits (grey images repeated to 3 channels)."""
    imgs, ys = sets.read_folder(paths["cls"] / "train")
    x_all = torch.from_numpy(imgs)[:, None].repeat(1, 3, 1, 1)
    y_all = torch.from_numpy(ys).long()

    def loss(idx):
        return torch.nn.functional.cross_entropy(model(_normalise(x_all[idx])), y_all[idx], label_smoothing=0.1)

    return _loop(model, len(x_all), loss, steps, bs=32, lr=1e-3, wd=0.05, log=log, name="cls")


def _loop(model, n: int, loss_of, steps: int, bs: int, lr: float, wd: float, log, name: str) -> int:
    """`steps` shuffled mini-batches of `loss_of(indices)` under AdamW; returns the steps."""
    bs = min(bs, n)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    clock = Schedule(opt, steps)
    rng = np.random.default_rng(0)
    model.train()
    while not clock.done():
        perm = rng.permutation(n)
        for start in range(0, n - bs + 1, bs):
            loss = loss_of(perm[start:start + bs])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            clock.tick()
            if clock.step % 25 == 0:
                log(f"  {name} step {clock.step} ({clock.step * bs / n:.1f} epochs) loss {loss.item():.3f}")
            if clock.done():
                break
    return clock.step


def trained_weights(bench: Bench, paths: dict, cache: Path, steps: int | None = None, log=print) -> tuple[Path, float]:
    """The model's trained state dict (cache/<name>.pth; trained on first use, for the bench's step count or
    `steps`) and the training time in s (0 when cached). The model is built exactly as optimize builds it from
    the spec."""
    path = cache / f"{bench.name}{'-smoke' if steps else ''}.pth"
    if path.exists():
        return path, 0.0
    torch.manual_seed(0)
    model = edgeopt.load_model(bench.spec, input_shape=bench.input_shape).model
    t0 = time.perf_counter()
    done = globals()[bench.train](model, paths, steps or bench.train_steps, log=log)
    took = time.perf_counter() - t0
    model.eval()
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    (cache / f"{bench.name}.train.json").write_text(json.dumps({"train_s": round(took, 1), "steps": done}))
    return path, took


# ---------------------------------------------------------------- optimize, as a user runs it

def run_one(bench: Bench, paths: dict, cache: Path, out_dir: Path, time_budget_s: float | None, retrain: bool,
            threads: int | None, log=print) -> dict:
    weights, train_s = trained_weights(bench, paths, cache, log=log)
    record = cache / f"{bench.name}.train.json"
    done = json.loads(record.read_text()) if record.exists() else {}
    train_s, train_steps = train_s or done.get("train_s"), done.get("steps")
    data, data_options = optimize_data(bench, paths)
    options = {"weights": str(weights), "input_shape": bench.input_shape, "data": data,
               "data_options": data_options, "max_accuracy_drop": 1.0, "goal": "latency", "retrain": retrain,
               "out_dir": str(out_dir), "cache": False, "threads": threads,
               **({"metric": bench.metric} if bench.metric else {}),
               **({"time_budget_s": time_budget_s} if time_budget_s else {})}
    t0 = time.perf_counter()
    row = {"model": bench.name, "spec": bench.spec, "train_s": train_s, "train_steps": train_steps}
    try:
        rep = edgeopt.optimize(bench.spec, **options)
    except Exception as e:  # a crash is a result of this benchmark, not the end of it
        row.update(error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                   wall_s=round(time.perf_counter() - t0, 1))
        return row
    wall = time.perf_counter() - t0
    row.update(summarise(json.loads((out_dir / "report.json").read_text())))
    row["wall_s"], row["report_wall_s"] = round(wall, 1), rep.wall_time_s
    return row


def summarise(report: dict) -> dict:
    """The table's fields from a report.json: the original's test-split metric, the choice, its test-split
    metric and drop, its speedup over the best plain conversion (the headline), whether it is compressed."""
    model, cands = report["model"], {c["id"]: c for c in report["candidates"]}
    chosen = cands.get(report.get("chosen"))
    base = report.get("baseline") or {}
    test = model.get("test_split") or {}
    head = model.get("headline") or {}
    return {
        "metric": (chosen or base).get("metric") or model.get("metric"),
        "original_test": base.get("accuracy_test"),
        "original_selection": base.get("accuracy"),
        "chosen": report.get("chosen"),
        "chosen_steps": (chosen or {}).get("steps"),
        # the original model converted (any runtime or precision) is not a physically compressed one
        "compressed": bool(chosen) and not str(report["chosen"]).startswith("original"),
        "chosen_test": (chosen or {}).get("accuracy_test"),
        "drop_test_pp": (chosen or {}).get("accuracy_drop_test"),
        "params_kept": round(chosen["params"] / base["params"], 3) if chosen and chosen.get("params")
        and base.get("params") else None,
        "speedup_vs_best_plain": head.get("speedup_vs_best_plain"),
        "best_plain": head.get("best_plain"),
        "test_split": {k: test.get(k) for k in ("split", "images", "selection_images", "note") if k in test},
        "candidates": len(cands),
        # why there is no choice: the original's own failure (e.g. every export refused by verification)
        "note": None if chosen else (base.get("reason") or (model.get("search") or {}).get("stopped")),
    }


CHANCE_TOP1 = 10.0  # ten digits


def meaningful(row: dict) -> bool:
    """Whether the original learnt anything: a classifier at chance (top-1 under twice the 10 % of ten classes)
    or no metric at all makes every drop 0 against noise, and its compression says nothing."""
    if row.get("original_test") is None:
        return False
    return row["metric"] != "top1" or row["original_test"] >= 2 * CHANCE_TOP1


def markdown(rows: list[dict], title: str) -> str:
    lines = [f"### {title}", "",
             "| model | metric | original (test) | chosen | compressed | params kept | chosen (test) | drop pp (test) "
             "| vs best plain | train s (steps) | optimize wall s |", "|---" * 11 + "|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | — | — | **crash**: {r['error'][:120]} | — | — | — | — | — | "
                         f"{r.get('train_s')} | {r.get('wall_s')} |")
            continue

        def f(v, fmt="{:.2f}"):
            return "—" if v is None else fmt.format(v)

        trained = "" if meaningful(r) else " (chance level: not meaningful)" if r["original_test"] is not None \
            else f" (no result: {str(r.get('note'))[:110]})"
        lines.append(f"| {r['model']} | {r['metric']} | {f(r['original_test'])}{trained} | {r['chosen']} | "
                     f"{'yes' if r['compressed'] else 'no'} | {f(r['params_kept'], '{:.0%}')} | "
                     f"{f(r['chosen_test'])} | {f(r['drop_test_pp'], '{:+.2f}')} | "
                     f"{f(r['speedup_vs_best_plain'], '{:.2f}x')} ({r['best_plain']}) | {r['train_s']:.0f} "
                     f"({r.get('train_steps', '?')}) | "
                     f"{r['wall_s']} |")
    ok = [r for r in rows if "error" not in r]
    speeds = sorted(r["speedup_vs_best_plain"] or 1.0 for r in ok)
    med = float(np.median(speeds)) if speeds else None
    real = [r for r in ok if meaningful(r)]
    lines += ["", f"Compressed choices: {sum(r['compressed'] for r in ok)} of {len(rows)} "
              f"({sum(r['compressed'] for r in real)} of the {len(real)} with a meaningful metric); median speedup "
              f"over the best plain conversion: {f'{med:.2f}x' if med else '—'} (the original chosen, or no result, "
              "counts 1.0x)."]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(BENCHES))
    ap.add_argument("--time-budget", type=float, default=300.0, help="optimize's --time-budget per model (s)")
    ap.add_argument("--retrain", action="store_true", help="let optimize fine-tune the compressed candidates")
    ap.add_argument("--train-only", action="store_true", help="train (and cache) the models, do not optimize")
    ap.add_argument("--table-only", action="store_true", help="rewrite the .md table from the result .json")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None, help="result stem (default results/real_models-<date>-<mode>)")
    ap.add_argument("--update", action="store_true", help="replace these models' rows in the result files, keep "
                    "the others (a rerun of some models)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    paths = data_sets(args.cache)
    names = args.models.split(",")
    if args.train_only:
        for n in names:
            print(n, trained_weights(BENCHES[n], paths, args.cache), flush=True)
        return
    mode = "retrain" if args.retrain else "no-retrain"
    stem = args.out or RESULTS / f"real_models-{datetime.date.today().isoformat()}-{mode}"
    if args.table_only:
        doc = json.loads(stem.with_suffix(".json").read_text())
        rows = sorted(doc["rows"], key=lambda r: list(BENCHES).index(r["model"]))
        stem.with_suffix(".md").write_text(markdown(rows, f"{mode}, --time-budget {doc['time_budget_s']:g} s, "
                                                          "--max-accuracy-drop 1") + "\n")
        print(stem.with_suffix(".md").read_text())
        return
    kept = []
    if args.update and stem.with_suffix(".json").exists():
        kept = [r for r in json.loads(stem.with_suffix(".json").read_text())["rows"] if r["model"] not in names]
    rows = []
    for n in names:
        out_dir = args.cache / "runs" / mode / n
        if out_dir.exists():
            import shutil

            shutil.rmtree(out_dir)
        rows.append(run_one(BENCHES[n], paths, args.cache, out_dir, args.time_budget, args.retrain, args.threads))
        print(json.dumps(rows[-1]), flush=True)
        rows[-1]["finished_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        stem.with_suffix(".json").write_text(json.dumps({"mode": mode, "time_budget_s": args.time_budget,
                                                         "rows": kept + rows}, indent=2))
    rows = sorted(kept + rows, key=lambda r: list(BENCHES).index(r["model"]))
    md = markdown(rows, f"{mode}, --time-budget {args.time_budget:g} s, --max-accuracy-drop 1")
    stem.with_suffix(".md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
