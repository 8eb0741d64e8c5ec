"""Which pruning criterion / factorization method the search's screening picks, and by how much, on the demo and
on T1 (resnet18 trained on digits at 64x64). Only the screened families are planned (the reconstruction,
latency-allocation and depth families answer other questions; T1: pruning only), on ONNX Runtime only, so the
run stays short.

    flock /tmp/edgeopt-bench.lock python -m benchmarks.screening --out /tmp/screening.json [--tasks demo,T1]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def _only_screened_families() -> None:
    from edgeopt.techniques import PROPOSERS

    for name in ("prune-recon", "prune-latency", "depth_prune", "unstructured"):
        PROPOSERS.unregister(name)


def _screenings(report) -> dict:
    search = report.model.search or {}
    return {"screening": search.get("screening", {}),
            "decisions": {d.technique: d.reason for d in report.decisions
                          if d.technique in ("prune_criterion", "factorize_method")},
            "chosen": report.chosen, "wall_s": report.wall_time_s}


def run_demo(out: Path) -> dict:
    import edgeopt

    return _screenings(edgeopt.optimize("demo", out_dir=out / "demo", runtimes=["onnxruntime"], bench_time=2.0))


def run_t1(out: Path) -> dict:
    import edgeopt
    from benchmarks.tasks import t1_task

    task = t1_task(Path(tempfile.gettempdir()) / "edgeopt-bench-cache")
    calib = task.train[:10]  # labelled batches: Taylor's gradients need the labels
    return _screenings(edgeopt.optimize(task.model, task.example, out_dir=out / "t1", eval_data=task.eval,
                                        calib_data=calib, train_data=task.train, runtimes=["onnxruntime"],
                                        techniques=["prune", "bn_recalibrate"], bench_time=2.0))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="screening.json")
    ap.add_argument("--tasks", default="demo,T1")
    args = ap.parse_args()
    _only_screened_families()
    work = Path(tempfile.mkdtemp(prefix="edgeopt-screening-"))
    results = {}
    for name in args.tasks.split(","):
        t0 = time.perf_counter()
        results[name] = (run_demo if name == "demo" else run_t1)(work)
        results[name]["seconds"] = round(time.perf_counter() - t0, 1)
        print(name, json.dumps(results[name]["decisions"], indent=1), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
