"""Issue-14 timings on resnet18 at 224 (2-core goals): building the latency table cold (≤ 60 s), rebuilding it
from the cache, and `edgeopt optimize` without retraining end to end (≤ 3 min), with the table's prediction
of the chosen pruned model checked against its measured latency.

    flock /tmp/edgeopt-bench.lock python benchmarks/lut_timing.py [--runtime onnxruntime] [--skip-optimize]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runtime", default="onnxruntime")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--skip-optimize", action="store_true")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "edgeopt-bench-cache")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "lut_timing.json")
    args = ap.parse_args(argv)
    import torchvision

    from edgeopt.measure.latency_table import LatencyTable

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 224, 224)
    result: dict = {"model": "resnet18@224", "runtime": args.runtime, "threads": args.threads,
                    "load_1min_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as lut_cache:
        t0 = time.perf_counter()
        cold = LatencyTable(runtime=args.runtime, threads=args.threads, cache_dir=Path(lut_cache)).build(model, x)
        result["lut_cold_s"] = round(time.perf_counter() - t0, 1)
        result["lut_layers"], result["lut_entries_measured"] = len(cold.layers), cold.measured
        t0 = time.perf_counter()
        warm = LatencyTable(runtime=args.runtime, threads=args.threads, cache_dir=Path(lut_cache)).build(model, x)
        result["lut_from_cache_s"] = round(time.perf_counter() - t0, 1)
        result["lut_from_cache_measured"] = warm.measured
    print(json.dumps(result), flush=True)
    if not args.skip_optimize:
        import edgeopt
        from benchmarks.tasks import t2_task

        task = t2_task("resnet18", cache=args.cache, trained=(args.cache / "t2_resnet18_digits224.pt").exists())
        out = Path(tempfile.gettempdir()) / "edgeopt-lut-timing"  # kept: report.json holds the search trace
        t0 = time.perf_counter()
        report = edgeopt.optimize(task.model, example_inputs=task.example, target="local", goal="latency",
                                  max_accuracy_drop=1.0, calib_data=task.calib, eval_data=task.eval,
                                  out_dir=out, retrain=False, threads=args.threads, resume=False)
        result["optimize_no_retrain_s"] = round(time.perf_counter() - t0, 1)
        result["report"] = str(out / "report.json")
        chosen, base = report.chosen_candidate, report.baseline
        result["task"] = task.model_name
        result["chosen"] = chosen.id if chosen else None
        if chosen is not None and chosen.latency_ms and base.latency_ms:
            result["speedup_vs_original"] = round(base.latency_ms.p50 / chosen.latency_ms.p50, 2)
            result["chosen_drop_pp"] = chosen.accuracy_drop
        alloc = [s.params.get("record", {}).get("allocation") for s in (chosen.steps if chosen else [])
                 if s.technique == "prune"]
        if alloc and alloc[0] and chosen.latency_ms:
            result["lut_predicted_ms"] = alloc[0]["predicted_pruned_ms"]
            result["measured_ms"] = chosen.latency_ms.p50
        result["search"] = report.model.search.get("stopped") if report.model.search else None
    result["load_1min_after"] = os.getloadavg()[0]
    print(json.dumps(result, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
