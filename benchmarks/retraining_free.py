"""Retraining-free pruning table: reconstruction vs BN re-estimation alone at equal latency, uniform vs
latency-aware widths, the latency table's predicted vs measured latency (fp32 and INT8), and the best pruned
INT8 within 1 pp vs the best contender (the original's NNCF INT8 on OpenVINO or ONNX Runtime INT8).

Beside the hand-picked rows, `optimize`'s own choice on the same model and data (no retraining, 1 pp budget,
its report's own interleaved headline), measured again in the INT8 group with the contenders: what a user
gets, not what the mechanism can do when its ratio is picked by hand.

Models: the demo (trained on digits, 1x32x32), T1 (resnet18 trained on digits at 64x64, benchmarks/tasks.py)
and a user-style 5-conv CNN trained here on digits. Uniform ratios give the same architecture with or
without reconstruction, so those accuracies are at equal latency by construction. Every latency is measured
at 1 thread (as the tables are), all artifacts of one model interleaved in one group per precision.

    python benchmarks/retraining_free.py [--models demo,cnn5,t1] [--json out.json] [--no-optimize]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import edgeopt  # noqa: E402
from edgeopt.formats import backend_for  # noqa: E402
from edgeopt.inputs.data import Batches  # noqa: E402
from edgeopt.measure.latency_table import LatencyTable, widths_of_model  # noqa: E402
from edgeopt.measure.timing import BenchConfig, measure  # noqa: E402
from edgeopt.techniques.pruning.allocate import prune_to_latency  # noqa: E402
from edgeopt.techniques.repair.bn_recal import recalibrate_bn  # noqa: E402

RATIOS = (0.1, 0.3, 0.5)
TARGETS = (0.75, 0.6, 0.45)
THREADS = 1


def cnn5(num_classes: int = 10) -> nn.Module:
    def block(cin, cout, stride):
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(*block(1, 32, 1), *block(32, 64, 2), *block(64, 64, 1), *block(64, 128, 2),
                         *block(128, 128, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes))


def load(name: str, epochs: int = 6, cache: Path | None = None):
    """(model, example, calibration inputs [unlabelled batches], evaluation [(x, y)])."""
    from edgeopt.inputs.data import digits_data

    if name == "t1":
        from benchmarks.tasks import t1_task

        t = t1_task(cache or Path(tempfile.gettempdir()) / "edgeopt-bench-cache")
        return t.model.eval(), t.example, t.calib, t.eval
    train, val = digits_data()
    calib = train.inputs()[:10]  # 320 unlabelled images
    if name == "demo":
        from edgeopt.inputs.demo import load_demo

        model = load_demo()[0]
    else:
        from edgeopt.training import fit

        torch.manual_seed(0)
        model = cnn5()
        fit(model, train, epochs=epochs, lr=0.05)
    return model.eval(), calib[0][:1], calib, val.items


def accuracy(run, val) -> float:
    """Top-1 (%) of a torch model or of a runtime session on [(x, y)]."""
    hits = total = 0
    for x, y in val:
        if isinstance(run, nn.Module):
            with torch.no_grad():
                pred = run.eval()(x).argmax(1).numpy()
        else:  # a static-batch artifact (optimize's own choice at --goal latency) takes its batch at a time
            fixed = run.input_shape[0] if run.input_shape and isinstance(run.input_shape[0], int) else len(x)
            step = fixed if fixed and fixed > 0 and len(x) % fixed == 0 else len(x)
            pred = np.concatenate([np.asarray(run.run(x[i:i + step].numpy())).argmax(1)
                                   for i in range(0, len(x), step)])
        hits += int((pred == y.numpy()).sum())
        total += len(y)
    return round(100.0 * hits / total, 2)


def pruned_rows(model, x, calib, val, ratios, targets, table_q) -> list[dict]:
    rows = []
    for r in ratios:
        naive = edgeopt.prune(model, x, ratio=r, data=calib).model
        recalibrate_bn(naive, calib)
        recon = edgeopt.prune(model, x, ratio=r, method="recon", data=calib, reconstruct=True).model
        rows.append({"kind": f"uniform {r:.0%}", "bn_recal": accuracy(naive, val), "recon": accuracy(recon, val),
                     "model": recon})
    for t in targets:
        small, rec = prune_to_latency(model, x, t, table=table_q, importance="recon", data=calib, reconstruct=True)
        rows.append({"kind": f"LUT {t:.0%} ({table_q.runtime} {table_q.precision})", "recon": accuracy(small, val),
                     "model": small, "widths": rec["allocation"]["widths"]})
    return rows


def own_choice(model, x, calib, val, out_dir: Path) -> dict:
    """`optimize`'s own choice on the model (no retraining, 1 pp budget, measured at THREADS threads): its id,
    structure, wall time, its report's headline (interleaved inside the run) and its test-split drop."""
    import copy

    t0 = time.perf_counter()
    rep = edgeopt.optimize(copy.deepcopy(model), x, eval_data=val, calib_data=calib, out_dir=out_dir, cache=False,
                           threads=THREADS, max_accuracy_drop=1.0)
    c = rep.chosen_candidate
    h = rep.model.headline
    return {"id": c.id if c else None, "wall_s": round(time.perf_counter() - t0, 1),
            "params_kept": round(c.params / rep.baseline.params, 3) if c and c.params and rep.baseline.params else None,
            "drop_test_pp": c.accuracy_drop_test if c else None,
            "report_speedup_vs_best_plain": h.speedup_vs_best_plain if h else None,
            "report_best_plain": h.best_plain if h else None,
            "artifact": str(out_dir / c.artifact) if c and c.artifact else None,
            "runtime": c.runtime if c else None, "precision": c.precision if c else None}


def run_model(name: str, bench_s: float, ratios=RATIOS, targets=TARGETS, epochs: int = 6,
              with_optimize: bool = True) -> dict:
    model, x, calib, val = load(name, epochs)
    out: dict = {"model": name, "input": list(x.shape), "base_top1": accuracy(model, val), "threads": THREADS}
    if with_optimize:
        out["own"] = own_choice(model, x, calib, val, Path(tempfile.mkdtemp(prefix="edgeopt-own-")))
    t0 = time.monotonic()
    table = LatencyTable(runtime="onnxruntime", threads=THREADS).build(model, x)
    t1 = time.monotonic()
    table_q = LatencyTable(runtime="openvino", precision="int8", threads=THREADS).build(model, x)
    half = edgeopt.prune(model, x, ratio=0.5).model
    table.calibrate([model, half], x)
    table_q.calibrate([model, half], x)
    out["lut"] = {"fp32_onnxruntime_build_s": round(t1 - t0, 1),
                  "int8_openvino_build_s": round(time.monotonic() - t1, 1),
                  "measured": table.measured + table_q.measured, "hits": table.hits + table_q.hits}
    rows = pruned_rows(model, x, calib, val, ratios, targets, table_q)
    _latencies(model, x, calib, val, table, table_q, rows, out, bench_s)
    for r in rows:
        r.pop("model")
    out["rows"] = rows
    _best(out)
    return out


def _session(path: Path, runtime: str, precision: str):
    return backend_for(runtime).load(path, precision=precision, threads=THREADS)


def _latencies(model, x, calib, val, table, table_q, rows, out, bench_s) -> None:
    cal = Batches([(b, None) for b in calib])
    cfg = BenchConfig(max_time_s=bench_s)
    feed = x.numpy()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)

        def art(m, stem, fmt="onnx", prec="fp32"):
            suffix = ".xml" if fmt == "openvino" else ".onnx"
            return edgeopt.export(m, x, format=fmt, precision=prec, calib_data=cal if prec == "int8" else None,
                                  out=d / f"{stem}{suffix}", verify=False, dynamic_batch=True)

        # group 1, fp32 on ONNX Runtime: the fp32 table's prediction vs measured
        fp = {"orig": _session(art(model, "orig"), "onnxruntime", "fp32")}
        fp |= {f"p{i}": _session(art(r["model"], f"p{i}"), "onnxruntime", "fp32") for i, r in enumerate(rows)}
        res = measure({k: s.timed_call(feed) for k, s in fp.items()}, cfg)
        out["orig_fp32_ms"], out["orig_fp32_predicted_ms"] = round(res["orig"].p50, 4), round(table.predict({}), 4)
        for i, r in enumerate(rows):
            r["fp32_ms"] = round(res[f"p{i}"].p50, 4)
            r["fp32_predicted_ms"] = round(table.predict_model(r["model"]), 4)
            r["int8_predicted_ms"] = round(table_q.predict_model(r["model"]), 4)
        for tab in (table, table_q):  # then with every width measured exactly (off-grid widths included)
            for r in rows:
                tab.measure_widths(widths_of_model(tab, r["model"]))
        for r in rows:
            r["fp32_predicted_exact_ms"] = round(table.predict_model(r["model"]), 4)
            r["int8_predicted_exact_ms"] = round(table_q.predict_model(r["model"]), 4)
        # group 2, INT8: the contenders (the original through NNCF on OpenVINO, through ORT) and each pruned INT8
        q = {"orig_ov": _session(art(model, "orig_q", "openvino", "int8"), "openvino", "int8"),
             "orig_ort": _session(art(model, "orig_q8", "onnx", "int8"), "onnxruntime", "int8")}
        q |= {f"p{i}": _session(art(r["model"], f"p{i}_q", "openvino", "int8"), "openvino", "int8")
              for i, r in enumerate(rows)}
        own = out.get("own") or {}
        if own.get("artifact"):  # optimize's own choice, in the same interleaved group as the contenders
            q["own"] = _session(Path(own["artifact"]), own["runtime"], own["precision"])
        res = measure({k: s.timed_call(feed) for k, s in q.items()}, cfg)
        if "own" in q:
            own["ms"], own["top1"] = round(res["own"].p50, 4), accuracy(q["own"], val)
        out["contenders"] = {k: {"ms": round(res[k].p50, 4), "top1": accuracy(q[k], val)}
                             for k in ("orig_ov", "orig_ort")}
        out["orig_int8_predicted_ms"] = round(table_q.predict({}), 4)
        for i, r in enumerate(rows):
            r["int8_ms"] = round(res[f"p{i}"].p50, 4)
            r["int8_top1"] = accuracy(q[f"p{i}"], val)
            # relative to the original in the same interleaved group: the load on a shared machine cancels
            r["int8_rel_measured"] = round(res[f"p{i}"].p50 / res["orig_ov"].p50, 3)
            for p in ("fp32", "int8"):
                for e in ("", "_exact"):
                    r[f"{p}_rel_predicted{e}"] = round(r[f"{p}_predicted{e}_ms"] / out[f"orig_{p}_predicted_ms"], 3)
            r["fp32_rel_measured"] = round(r["fp32_ms"] / out["orig_fp32_ms"], 3)


def _best(out: dict, budget_pp: float = 1.0) -> None:
    floor = out["base_top1"] - budget_pp
    ok = {k: c for k, c in out["contenders"].items() if c["top1"] >= floor}
    contender = min(ok.items(), key=lambda kv: kv[1]["ms"]) if ok else None
    within = [r for r in out["rows"] if r["int8_top1"] >= floor]
    best = min(within, key=lambda r: r["int8_ms"]) if within else None
    out["best"] = {"contender": contender[0] if contender else None,
                   "pruned": best["kind"] if best else None,
                   "speedup_vs_contender": round(contender[1]["ms"] / best["int8_ms"], 2) if best and contender
                   else None,
                   "speedup_vs_orig_nncf_int8": round(out["contenders"]["orig_ov"]["ms"] / best["int8_ms"], 2)
                   if best else None}
    own = out.get("own") or {}
    if own.get("ms") and contender:
        own["speedup_vs_best_plain_int8"] = round(contender[1]["ms"] / own["ms"], 2)
    for r in out["rows"]:
        for p in ("fp32", "int8"):
            for e in ("", "_exact"):
                r[f"pred_err_{p}{e}_pct"] = round(100 * (r[f"{p}_rel_predicted{e}"] / r[f"{p}_rel_measured"] - 1), 1)


def markdown(o: dict) -> str:
    c = o["contenders"]
    lines = [f"### {o['model']} {o['input']} (top-1 {o['base_top1']} %; fp32 ORT {o['orig_fp32_ms']} ms measured / "
             f"{o['orig_fp32_predicted_ms']} predicted; NNCF INT8 OpenVINO {c['orig_ov']['ms']} ms "
             f"({c['orig_ov']['top1']} %), ORT INT8 {c['orig_ort']['ms']} ms ({c['orig_ort']['top1']} %); "
             f"tables built in {o['lut']['fp32_onnxruntime_build_s']} s fp32 + {o['lut']['int8_openvino_build_s']} s "
             f"int8, {o['lut']['measured']} entries measured, {o['lut']['hits']} from cache; {o['threads']} thread)",
             "", "| pruning | BN re-est. only | reconstruction | INT8 top-1 | fp32 ms meas. / pred. (rel. err; "
             "exact widths) | INT8 ms meas. / pred. (rel. err; exact widths) | vs NNCF INT8 |",
             "|---|---|---|---|---|---|---|"]
    for r in o["rows"]:
        lines.append(f"| {r['kind']} | {r.get('bn_recal', '-')} | {r['recon']} | {r['int8_top1']} | "
                     f"{r['fp32_ms']} / {r['fp32_predicted_ms']} ({r['pred_err_fp32_pct']:+} %; "
                     f"{r['pred_err_fp32_exact_pct']:+} %) | {r['int8_ms']} / {r['int8_predicted_ms']} "
                     f"({r['pred_err_int8_pct']:+} %; {r['pred_err_int8_exact_pct']:+} %) | "
                     f"{round(c['orig_ov']['ms'] / r['int8_ms'], 2)}x |")
    b = o["best"]
    lines.append(f"\nbest pruned INT8 within 1 pp: {b['pruned']}, {b['speedup_vs_contender']}x the best contender "
                 f"({b['contender']}), {b['speedup_vs_orig_nncf_int8']}x NNCF INT8 of the original")
    own = o.get("own")
    if own:
        lines.append(f"optimize's own choice: {own['id']} ({own['params_kept']} of the parameters kept), "
                     f"{own.get('ms')} ms, top-1 {own.get('top1')} %: {own.get('speedup_vs_best_plain_int8')}x the "
                     f"best contender here; in its report {own['report_speedup_vs_best_plain']}x "
                     f"{own['report_best_plain']}, test-split drop {own['drop_test_pp']} pp, run in {own['wall_s']} s")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="demo,cnn5,t1")
    ap.add_argument("--bench-s", type=float, default=4.0, help="seconds of interleaved timing per group")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--ratios", default=",".join(map(str, RATIOS)))
    ap.add_argument("--targets", default=",".join(map(str, TARGETS)))
    ap.add_argument("--epochs", type=int, default=6, help="training epochs of the user-style CNN")
    ap.add_argument("--no-optimize", dest="optimize", action="store_false",
                    help="leave out optimize's own choice (its whole run)")
    args = ap.parse_args(argv)
    torch.set_num_threads(THREADS)
    results = []
    for name in args.models.split(","):
        results.append(run_model(name, args.bench_s, [float(r) for r in args.ratios.split(",")],
                                 [float(t) for t in args.targets.split(",")], args.epochs, args.optimize))
        print(markdown(results[-1]) + "\n", flush=True)
        if args.json:  # written after each model: a long run keeps what it measured
            args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
