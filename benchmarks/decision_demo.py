"""Closing-note numbers for the decision layer (issue 5), on the built-in demo.

    python benchmarks/decision_demo.py [--out /tmp/decision-demo] [--bench-time 10]

For `--max-accuracy-drop 1` with and without `--retrain`: chosen steps, p50 ratio vs baseline, accuracy drop,
search wall time (a fresh search: the candidate cache is off). Then the planner's output for
`--target jetson --goal latency` and `--target local --goal size --no-retrain`. Run it on a quiet machine."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import edgeopt  # noqa: E402
from edgeopt.measure.timing import BenchConfig  # noqa: E402


def steps_text(c) -> str:
    parts = []
    for s in c.steps:
        p = {k: v for k, v in s.params.items() if k != "record" and v is not None}
        parts.append(s.technique + (f"({', '.join(f'{k}={v}' for k, v in p.items())})" if p else ""))
    return " -> ".join(parts + [f"export {c.runtime}/{c.precision_executed or c.precision}"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/decision-demo")
    ap.add_argument("--bench-time", type=float, default=10.0)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    rows = []
    for retrain in (False, True):
        out = Path(args.out) / ("retrain" if retrain else "no-retrain")
        r = edgeopt.optimize("demo", max_accuracy_drop=1.0, retrain=retrain, out_dir=out, resume=False,
                             bench_config=BenchConfig(max_time_s=args.bench_time), epochs=args.epochs)
        c, b = r.chosen_candidate, r.baseline
        if c is None:
            rows.append(f"retrain={retrain}: no candidate met the constraints (wall {r.wall_time_s:.1f} s)")
            continue
        rows.append(f"retrain={retrain}: chosen {c.id}\n  steps: {steps_text(c)}\n"
                    f"  p50 {c.latency_ms.p50:.3f} ms vs baseline {b.latency_ms.p50:.3f} ms -> ratio "
                    f"{c.latency_ms.p50 / b.latency_ms.p50:.2f} ({b.latency_ms.p50 / c.latency_ms.p50:.2f}x faster)\n"
                    f"  accuracy {c.accuracy:.2f}% vs {b.accuracy:.2f}% ({c.metric}), drop {c.accuracy_drop:+.2f} pp\n"
                    f"  search wall time {r.wall_time_s:.1f} s; report {out / 'report.md'}")
    print("\n".join(rows))
    for args_ in (["--target", "jetson", "--goal", "latency"], ["--target", "local", "--goal", "size", "--no-retrain"]):
        print(f"\n$ edgeopt plan {' '.join(args_)}")
        sys.stdout.flush()
        subprocess.run([sys.executable, "-m", "edgeopt", "plan", *args_], check=False)


if __name__ == "__main__":
    main()
