"""Serial search vs the same search on a local Ray cluster (`--cluster local:N`), with retraining: wall time of
each run, and whether both chose the same candidate with the same accuracies (every candidate's status and
held-out accuracy, and every structure's screened drop, compared). The runs alternate (serial, cluster,
cluster, serial, ...) so that a machine's load drifting during the benchmark weighs on both alike.

  python -m benchmarks.cluster_speed --task t1 --workers 2 [--rounds 1] [--json out.json]
  python -m benchmarks.cluster_speed --task small --workers 2   # a small CNN on digits 32x32: minutes on 2 cores

Each Ray task runs PyTorch at the run's thread count (a fine-tuning's weights depend on it): on C cores with N
workers, `--threads C/N` keeps the workers from oversubscribing the cores (both runs then use it).

T1: torchvision resnet18 trained on digits at 64x64 (benchmarks/tasks.py), `--retrain`, max drop 1 pp.
small: a 3-layer CNN trained on digits at 32x32, pruning + fine-tuning only, one fine-tuning epoch on
512 images (`--train-batches`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's edgeopt, not an installed one
import edgeopt  # noqa: E402


def small_task(cache: Path, train_batches: int = 8):
    """A small CNN trained on digits at 32x32 (cached): (model, example, run keywords)."""
    from edgeopt.inputs.data import batchify, digits_splits
    from edgeopt.training import fit

    xt, yt, xv, yv = digits_splits()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                          nn.Conv2d(32, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                          nn.Conv2d(64, 64, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    path = cache / "cluster-speed-small-digits32.pt"
    train = batchify(xt, yt, 64)
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        fit(model, train, epochs=3, lr=0.05)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    model.eval()
    kw = dict(eval_data=batchify(xv, yv, 64).items, calib_data=[x for x, _ in train.items[:4]],
              train_data=train.items[:train_batches], techniques=["prune", "fine_tune"], epochs=1)
    return model, torch.randn(1, 1, 32, 32), kw


def t1(cache: Path):
    from benchmarks.tasks import t1_task

    task = t1_task(cache)
    return task.model, task.example, dict(eval_data=task.eval, calib_data=task.calib, train_data=task.train)


def one_run(model, example, kw: dict, out: Path, cluster: str | None, threads: int | None = None,
            max_drop: float = 1.0) -> dict:
    import copy

    from edgeopt.measure.timing import BenchConfig

    t0 = time.perf_counter()
    report = edgeopt.optimize(copy.deepcopy(model), example, target="local", goal="latency", max_accuracy_drop=max_drop,
                              retrain=True, runtimes=["onnxruntime"], out_dir=out, cache=False, seed=0,
                              bench_config=BenchConfig(max_time_s=2.0), cluster=cluster, threads=threads, **kw)
    wall = time.perf_counter() - t0
    cands = [report.baseline, *report.candidates]
    return {"cluster": cluster, "wall_s": round(wall, 1), "chosen": report.chosen,
            "outcome": {c.id: [c.status, c.accuracy] for c in cands},
            "screened_drop_pp": report.model.search["screened_drop_pp"],
            "built_on": sorted({c.built_on for c in cands if c.built_on}),
            "profile": report.model.profile,
            # where a cluster's time went: each structure's build seconds, and when each task came back
            "build_seconds": report.model.search.get("build_seconds"),
            "cluster_trace": [t for t in report.model.search["trace"] if t.startswith("cluster")]}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=["t1", "small"], default="t1")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1, help="serial/cluster pairs, alternating the order")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "edgeopt-bench-cache")
    p.add_argument("--threads", type=int, default=None, help="PyTorch and runtime threads of both runs (each Ray "
                   "task runs this many too; default: all cores)")
    p.add_argument("--train-batches", type=int, default=8, help="small: batches of 64 images fine-tuned on")
    p.add_argument("--max-drop", type=float, default=1.0, help="accuracy budget (pp)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    model, example, kw = t1(args.cache) if args.task == "t1" else small_task(args.cache, args.train_batches)
    cluster = f"local:{args.workers}"
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = [None, cluster] if r % 2 == 0 else [cluster, None]
            for which in order:
                run = one_run(model, example, kw, Path(tmp) / f"{r}-{which or 'serial'}", which, args.threads,
                              args.max_drop)
                print(f"{which or 'serial':>8}: {run['wall_s']:7.1f} s, chose {run['chosen']}", flush=True)
                runs.append(run)
    serial = [r for r in runs if r["cluster"] is None]
    clustered = [r for r in runs if r["cluster"] is not None]
    same = all(r["chosen"] == serial[0]["chosen"] and r["outcome"] == serial[0]["outcome"]
               and r["screened_drop_pp"] == serial[0]["screened_drop_pp"] for r in runs)
    ratio = sum(r["wall_s"] for r in clustered) / sum(r["wall_s"] for r in serial)
    summary = {"task": args.task, "machine": f"{os.cpu_count()} cores", "cluster": cluster, "threads": args.threads,
               "runs": runs,
               "same_choice_and_accuracies": same, "wall_ratio_cluster_over_serial": round(ratio, 3)}
    print(f"{args.task} on {os.cpu_count()} cores: {cluster} / serial wall time = {ratio:.2f}; same choice and "
          f"accuracies: {same}")
    if not same:
        for r in runs:
            diff = {k: v for k, v in r["outcome"].items() if v != serial[0]["outcome"].get(k)}
            print(f"  {r['cluster'] or 'serial'} differs on: {diff}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1, default=str))
    return summary


if __name__ == "__main__":
    main()
