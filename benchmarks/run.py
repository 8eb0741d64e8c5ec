"""`python -m benchmarks [--quick]`: build every contender for every task, measure them interleaved in one
run on the same threads, evaluate accuracy, and write benchmarks/results/<date>-<host>.json and .md."""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.contenders import Contender, build_contenders, edgeopt_contender
from benchmarks.tasks import t1_task, t2_task

RESULTS = Path(__file__).parent / "results"


def _accuracy(c: Contender, task, reference: np.ndarray | None) -> float:
    from edgeopt.inputs.data import Batches
    from edgeopt.measure.accuracy import predictions, primary

    batches = Batches([(b[0], b[1]) if isinstance(b, tuple) else (b, None) for b in task.eval])
    preds = primary(predictions(c.run, batches, task.example.shape[0]))
    if task.labelled:
        labels = np.concatenate([b[1].numpy() for b in task.eval])
        return float((preds == labels).mean() * 100)
    return float((preds == reference).mean() * 100)


def _roofline_fraction(macs: int | None, p50_ms: float, precision: str) -> float | None:
    from edgeopt.targets import detect_local, list_targets

    local = detect_local()
    profile = local if local.peak_ops else next(
        (p for p in list_targets() if p.arch == local.arch and p.peak_ops
         and set(p.isa_features) <= set(local.isa_features) and "amx_tile" in p.isa_features), None)
    if profile is None or not macs:
        return None
    key = "int8" if "int8" in precision else "bf16" if "bf" in precision else "fp32"
    peak = profile.peak_ops.get(key) or profile.peak_ops.get("fp32")
    return (2 * macs / (p50_ms / 1e3)) / peak


def run_task(task, args, workdir: Path) -> dict:
    from edgeopt.measure.timing import BenchConfig, measure

    workdir.mkdir(parents=True, exist_ok=True)
    print(f"[{task.name}] {task.model_name}: building contenders", flush=True)
    contenders = build_contenders(task, workdir)
    for retrain in ([False, True] if task.train is not None and not args.no_retrain else [False]):
        name = "edgeopt" + (" --retrain" if retrain else "")
        try:
            contenders.append(edgeopt_contender(name, task, workdir, retrain, bench_time=args.bench_time,
                                                time_budget_s=getattr(args, "search_budget", None)))
        except Exception as e:  # edgeopt failing is a result too: recorded, the suite goes on
            print(f"  {name} failed: {type(e).__name__}: {e}", flush=True)
    reference = None
    if not task.labelled:
        from edgeopt.inputs.data import Batches
        from edgeopt.measure.accuracy import predictions, primary

        reference = primary(predictions(contenders[0].run, Batches([(b, None) for b in task.eval]),
                                        task.example.shape[0]))
    print(f"[{task.name}] {task.model_name}: measuring {len(contenders)} contenders interleaved", flush=True)
    stats = measure({c.name: c.lean_call for c in contenders}, BenchConfig(max_time_s=args.measure_time))
    rows = []
    for c in contenders:
        s = stats[c.name]
        rows.append({"contender": c.name, "precision": c.precision, "p50_ms": s.p50, "p90_ms": s.p90, "n": s.n,
                     "accuracy": _accuracy(c, task, reference), "metric": "top1" if task.labelled else "fidelity",
                     "size_bytes": c.size_bytes, "params": c.params, "macs": c.macs,
                     "roofline_fraction": _roofline_fraction(c.macs, s.p50, c.precision), **c.info})
    base_acc = next(r["accuracy"] for r in rows if r["contender"] == "pytorch-eager-fp32")
    for r in rows:
        r["accuracy_drop"] = base_acc - r["accuracy"]
    return {"task": task.name, "model": task.model_name, "info": task.info, "rows": rows}


def to_markdown(results: list[dict]) -> str:
    lines = []
    for res in results:
        rows = res["rows"]
        ed = [r for r in rows if r["contender"].startswith("edgeopt")]
        lines += [f"### {res['task']} — {res['model']}", "",
                  "| contender | precision | p50 ms | p90 ms | speedup of edgeopt | accuracy | drop pp | size MB | "
                  "params | MMACs | roofline |", "|" + "---|" * 11]
        best_ed = min(ed, key=lambda r: r["p50_ms"]) if ed else None
        for r in rows:
            mine = r["contender"].startswith("edgeopt")
            sp = f"{r['p50_ms'] / best_ed['p50_ms']:.2f}×" if best_ed and not mine else "—"
            lines.append(
                f"| {r['contender']}{' (' + r['chosen'] + ')' if r.get('chosen') else ''} | {r['precision']} | "
                f"{r['p50_ms']:.3f} | {r['p90_ms']:.3f} | {sp} | {r['accuracy']:.2f}% {r['metric']} | "
                f"{r['accuracy_drop']:+.2f} | {'—' if not r['size_bytes'] else format(r['size_bytes'] / 1e6, '.2f')} | "
                f"{(r['params'] or 0) / 1e6:.2f}M | {(r['macs'] or 0) / 1e6:.0f} | "
                f"{'—' if r['roofline_fraction'] is None else format(r['roofline_fraction'], '.1%')} |")
        lines += ["", _verdict(res), ""]
    return "\n".join(lines)


def _verdict(res: dict) -> str:
    """The issue's goals: T1 (labelled, retraining) edgeopt >= 1.5x the best contender and >= 10x eager at
    <= 1 pp drop; T2 (fidelity) at least as fast as the best contender with fidelity >= 99%."""
    rows = res["rows"]
    t1 = rows and rows[0]["metric"] == "top1"
    ok = [r for r in rows if (r["accuracy_drop"] <= 1.0 + 1e-9 if t1 else r["accuracy"] >= 99.0)]
    bound = "<= 1 pp drop" if t1 else "fidelity >= 99%"
    theirs = [r for r in ok if not r["contender"].startswith("edgeopt")]
    mine = [r for r in ok if r["contender"].startswith("edgeopt")]
    if not theirs or not mine:
        return f"Within {bound}: {'no contender' if not theirs else 'no edgeopt choice'} to compare."
    best, me = min(theirs, key=lambda r: r["p50_ms"]), min(mine, key=lambda r: r["p50_ms"])
    eager = next((r for r in rows if r["contender"] == "pytorch-eager-fp32"), None)
    sp = best["p50_ms"] / me["p50_ms"]
    text = (f"Within {bound}: best contender **{best['contender']}** {best['p50_ms']:.3f} ms; "
            f"**{me['contender']}** {me['p50_ms']:.3f} ms = **{sp:.2f}x** faster")
    if t1:
        sp_eager = eager["p50_ms"] / me["p50_ms"] if eager else float("nan")
        met = sp >= 1.5 and sp_eager >= 10
        return text + f", {sp_eager:.1f}x eager (goal >= 1.5x and >= 10x: {'met' if met else 'missed'})."
    return text + f" (goal >= 1x: {'met' if sp >= 1.0 else 'missed'})."



def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("--quick", action="store_true", help="reduced set: T1 and T2 resnet18 (a few minutes)")
    p.add_argument("--tasks", default="T1,T2")
    p.add_argument("--models", default=None, help="T2 models, comma separated")
    p.add_argument("--no-retrain", action="store_true")
    p.add_argument("--t2-trained", action=argparse.BooleanOptionalAction, default=True,
                   help="T2 models trained by the suite on digits at 224 (cached in --cache; minutes per model "
                        "the first time), scored by held-out top-1; --no-t2-trained: random weights, fidelity")
    p.add_argument("--measure-time", type=float, default=None)
    p.add_argument("--bench-time", type=float, default=3.0, help="edgeopt's own measurement budget")
    p.add_argument("--search-budget", type=float, default=None,
                   help="edgeopt's --time-budget per optimize run, seconds (--quick: 30; full: none)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "edgeopt-bench-cache")
    p.add_argument("--retraining-free", action=argparse.BooleanOptionalAction, default=None,
                   help="also the retraining-free table (benchmarks/retraining_free.py: reconstruction, latency-"
                        "table allocation, predicted vs measured latency; demo, user-style CNN, T1); default: on "
                        "for the full suite, off with --quick")
    args = p.parse_args(argv)
    args.measure_time = args.measure_time or (5.0 if args.quick else 20.0)
    if args.quick and args.search_budget is None:
        args.search_budget = 30.0  # a shorter search (said in the results); the full suite searches to the end
    models = args.models.split(",") if args.models else (
        ["resnet18"] if args.quick else ["resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0"])
    t0 = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        if "T1" in args.tasks:
            results.append(run_task(t1_task(args.cache), args, Path(tmp) / "t1"))
        if "T2" in args.tasks:
            for m in models:
                results.append(run_task(t2_task(m, cache=args.cache, trained=args.t2_trained), args,
                                        Path(tmp) / m))
    stamp = f"{datetime.date.today()}-{platform.node() or 'host'}"
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"date": str(datetime.date.today()), "host": platform.node(), "quick": args.quick,
               "search_budget_s": args.search_budget,
               "wall_s": round(time.perf_counter() - t0, 1), "results": results}
    from edgeopt.targets.host import environment

    payload["environment"] = environment()
    (args.out / f"{stamp}.json").write_text(json.dumps(payload, indent=2))
    md = to_markdown(results)
    if args.search_budget:
        md = f"*edgeopt's searches were limited to {args.search_budget:g} s each (--time-budget)*\n\n" + md
    (args.out / f"{stamp}.md").write_text(md)
    print(md)
    print(f"wall time {payload['wall_s']} s; wrote {args.out / (stamp + '.json')}")
    if args.retraining_free if args.retraining_free is not None else not args.quick:
        from benchmarks.retraining_free import main as retraining_free

        retraining_free(["--json", str(args.out / f"retraining_free-{stamp}.json")])
