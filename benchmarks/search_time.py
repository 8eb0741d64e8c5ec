"""Where a search's wall time goes, and what it finds: `optimize`'s own run (its defaults, no retraining, 1 pp
budget) on the demo (the README's quick start, with its default time budget) and on the user-style 5-conv CNN
(benchmarks/retraining_free.py: cnn5, trained here on digits), one row per model: wall time, its phases (from
report.json's `model.profile`), structures built, the choice, the parameters it kept, its speedup over the
best plain conversion of the original (the report's own headline, measured interleaved within the run) and
its accuracy drop on the test split, which the search never saw.

Wall times on a shared machine are noisy: compare rows of one run, and the speedups (ratios measured
interleaved) rather than milliseconds.

    python benchmarks/search_time.py [--models demo,cnn5] [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import edgeopt  # noqa: E402

PHASES = ("load", "analyze", "reference predictions", "build", "screen", "export onnx", "export openvino",
          "verify", "evaluate", "finish after the budget", "measure", "test split")


def run(name: str, threads: int | None, out_dir: Path, time_budget_s: float | None = None) -> dict:
    """One `optimize` run on `name` ("demo" or "cnn5"), timed from the call (training the CNN excluded)."""
    if name == "demo" and not time_budget_s:  # the CLI's quick-start default (the API has none)
        from edgeopt.decide.policy import DEMO_TIME_BUDGET_S

        time_budget_s = DEMO_TIME_BUDGET_S
    options = {"out_dir": out_dir, "cache": False, "threads": threads, "max_accuracy_drop": 1.0,
               **({"time_budget_s": time_budget_s} if time_budget_s else {})}
    if name == "demo":
        args, kwargs = ("demo",), {}
    else:
        from benchmarks.retraining_free import load

        model, x, calib, val = load(name)
        args, kwargs = (model, x), {"eval_data": val, "calib_data": calib}
    t0 = time.perf_counter()
    rep = edgeopt.optimize(*args, **kwargs, **options)
    wall = time.perf_counter() - t0
    c, h, base = rep.chosen_candidate, rep.model.headline, rep.baseline
    search = rep.model.search or {}
    return {"model": name, "wall_s": round(wall, 1), "report_wall_s": rep.wall_time_s,
            "time_budget_s": (search.get("time_budget") or {}).get("budget_s"),
            "structures_built": search.get("structures_built"), "profile": rep.model.profile,
            "chosen": c.id if c else None,
            "params_kept": round(c.params / base.params, 3) if c and c.params and base and base.params else None,
            "speedup_vs_best_plain": h.speedup_vs_best_plain if h else None, "best_plain": h.best_plain if h else None,
            "drop_test_pp": c.accuracy_drop_test if c else None}


def markdown(rows: list[dict]) -> str:
    lines = ["| model | wall s | budget s | structures | choice (params kept) | vs best plain | test drop pp | "
             + " | ".join(PHASES) + " |", "|---" * (7 + len(PHASES)) + "|"]
    for r in rows:
        prof = r["profile"] or {}
        lines.append(f"| {r['model']} | {r['wall_s']} | {r['time_budget_s'] or '-'} | {r['structures_built']} | "
                     f"{r['chosen']} ({r['params_kept']}) | {r['speedup_vs_best_plain']}x {r['best_plain']} | "
                     f"{r['drop_test_pp']} | " + " | ".join(str(prof.get(p, "-")) for p in PHASES) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="demo,cnn5")
    ap.add_argument("--threads", type=int, default=None, help="runtime threads (default: all cores)")
    ap.add_argument("--time-budget", type=float, default=None, help="--time-budget for every run (default: none, "
                    "so the demo runs with its own default)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as d:
            rows.append(run(name, args.threads, Path(d), args.time_budget))
        print(json.dumps(rows[-1]), flush=True)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))
    print(markdown(rows))


if __name__ == "__main__":
    main()
