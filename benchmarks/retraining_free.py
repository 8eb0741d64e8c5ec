"""Retraining-free pruning table: reconstruction vs BN re-estimation alone, uniform vs latency-aware widths,
the latency table's predicted vs measured latency, and the best pruned INT8 vs NNCF INT8 of the original.

Models: the demo (trained on digits, 1x32x32) and a user-style 5-conv CNN trained here on digits. Uniform
ratios give the same architecture with or without reconstruction, so those accuracies are at equal
latency by construction. Latencies: ONNX Runtime fp32 for the table's check; OpenVINO INT8 (NNCF PTQ
through edgeopt's exporter) for the comparison with the original's INT8, all artifacts of one model
measured interleaved (edgeopt.measure.artifacts.benchmark_many).

    python benchmarks/retraining_free.py [--models demo,cnn5] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import edgeopt  # noqa: E402
from edgeopt.inputs.data import digits_data  # noqa: E402
from edgeopt.measure.artifacts import benchmark_many  # noqa: E402
from edgeopt.measure.lut import LatencyTable  # noqa: E402
from edgeopt.measure.timing import BenchConfig  # noqa: E402
from edgeopt.techniques.allocate import prune_to_latency  # noqa: E402
from edgeopt.techniques.bn_recal import recalibrate_bn  # noqa: E402

RATIOS = (0.1, 0.3, 0.5)
TARGETS = (0.75, 0.6, 0.45)


def cnn5(num_classes: int = 10) -> nn.Module:
    def block(cin, cout, stride):
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(*block(1, 32, 1), *block(32, 64, 2), *block(64, 64, 1), *block(64, 128, 2),
                         *block(128, 128, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes))


def load(name: str, train, epochs: int = 6) -> nn.Module:
    if name == "demo":
        from edgeopt.inputs.demo import load_demo

        return load_demo()[0].eval()
    from edgeopt.training import fit

    torch.manual_seed(0)
    model = cnn5()
    fit(model, train, epochs=epochs, lr=0.05)
    return model.eval()


def accuracy(model: nn.Module, val) -> float:
    model.eval()
    with torch.no_grad():
        hits = sum((model(x).argmax(1) == y).sum().item() for x, y in val.items)
    return round(100.0 * hits / len(val), 2)


def run_model(name: str, bench_s: float, ratios=RATIOS, targets=TARGETS, epochs: int = 6) -> dict:
    train, val = digits_data()
    model = load(name, train, epochs)
    calib = train.inputs()[:10]  # 320 unlabeled images
    x = calib[0][:1]
    base = accuracy(model, val)
    out: dict = {"model": name, "base_top1": base, "uniform": [], "allocated": []}
    for r in ratios:
        naive = edgeopt.prune(model, x, ratio=r, data=calib)
        recalibrate_bn(naive, calib)
        recon = edgeopt.prune(model, x, ratio=r, importance="recon", data=calib, reconstruct=True)
        recon_l2 = edgeopt.prune(model, x, ratio=r, data=calib, reconstruct=True)
        out["uniform"].append({"ratio": r, "bn_recal": accuracy(naive, val), "recon": accuracy(recon, val),
                               "recon_l2_channels": accuracy(recon_l2, val), "model": recon})
    t0 = time.monotonic()
    table = LatencyTable(runtime="onnxruntime", threads=1).build(model, x)
    out["lut"] = {"build_s": round(time.monotonic() - t0, 1), "measured": table.measured, "hits": table.hits}
    for t in targets:
        small, rec = prune_to_latency(model, x, t, table=table, importance="recon", data=calib, reconstruct=True)
        out["allocated"].append({"target": t, "recon": accuracy(small, val), "model": small,
                                 "predicted_ms": rec["allocation"]["predicted_pruned_ms"]})
    _latencies(model, x, table, out, calib, bench_s)
    for row in out["uniform"] + out["allocated"]:
        row.pop("model")
    return out


def _latencies(model, x, table, out, calib, bench_s) -> None:
    from edgeopt.inputs.data import Batches

    cal = Batches([(b, None) for b in calib])
    rows = out["uniform"] + out["allocated"]
    cfg = BenchConfig(max_time_s=bench_s)
    with tempfile.TemporaryDirectory() as d:
        # fp32 on ONNX Runtime, 1 thread as the table: predicted vs measured
        paths = [edgeopt.export(model, x, out=Path(d) / "orig.onnx")]
        paths += [edgeopt.export(r["model"], x, out=Path(d) / f"p{i}.onnx") for i, r in enumerate(rows)]
        res = benchmark_many(paths, runtime="onnxruntime", threads=1, config=cfg)
        out["orig_fp32_ms"] = round(res[0].latency.p50, 4)
        out["orig_fp32_predicted_ms"] = round(table.predict({}), 4)
        for r, b in zip(rows, res[1:], strict=True):
            r["fp32_ms"] = round(b.latency.p50, 4)
            r["fp32_predicted_ms"] = round(table.predict_model(r["model"]), 4)
        # INT8 on OpenVINO (NNCF PTQ): the original's INT8 vs each pruned model's INT8, interleaved
        ov = [edgeopt.export(model, x, format="openvino", precision="int8", calib_data=cal,
                             out=Path(d) / "orig_int8.xml", verify=False)]
        ov += [edgeopt.export(r["model"], x, format="openvino", precision="int8", calib_data=cal,
                              out=Path(d) / f"p{i}_int8.xml", verify=False) for i, r in enumerate(rows)]
        res = benchmark_many(ov, runtime="openvino", precision="int8", config=cfg)
        out["orig_int8_ms"] = round(res[0].latency.p50, 4)
        for r, b in zip(rows, res[1:], strict=True):
            r["int8_ms"] = round(b.latency.p50, 4)
            r["speedup_vs_orig_int8"] = round(res[0].latency.p50 / b.latency.p50, 2)


def markdown(o: dict) -> str:
    lines = [f"### {o['model']} (top-1 {o['base_top1']} %, fp32 ORT {o['orig_fp32_ms']} ms measured / "
             f"{o['orig_fp32_predicted_ms']} predicted, OpenVINO INT8 {o['orig_int8_ms']} ms; LUT built in "
             f"{o['lut']['build_s']} s, {o['lut']['measured']} measured, {o['lut']['hits']} from cache)", "",
             "| pruning | BN re-est. only | reconstruction (recon channels) | reconstruction (L2 channels) "
             "| fp32 ms measured / predicted | INT8 ms | vs original INT8 |", "|---|---|---|---|---|---|---|"]
    for r in o["uniform"]:
        lines.append(f"| uniform {r['ratio']:.0%} | {r['bn_recal']} | {r['recon']} | {r['recon_l2_channels']} | "
                     f"{r['fp32_ms']} / {r['fp32_predicted_ms']} | {r['int8_ms']} | {r['speedup_vs_orig_int8']}x |")
    for r in o["allocated"]:
        lines.append(f"| LUT {r['target']:.0%} of latency | - | {r['recon']} | - | "
                     f"{r['fp32_ms']} / {r['fp32_predicted_ms']} | {r['int8_ms']} | {r['speedup_vs_orig_int8']}x |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="demo,cnn5")
    ap.add_argument("--bench-s", type=float, default=3.0, help="seconds of interleaved timing per group")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--ratios", default=",".join(map(str, RATIOS)))
    ap.add_argument("--targets", default=",".join(map(str, TARGETS)))
    ap.add_argument("--epochs", type=int, default=6, help="training epochs of the user-style CNN")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    results = []
    for name in args.models.split(","):
        results.append(run_model(name, args.bench_s, [float(r) for r in args.ratios.split(",")],
                                 [float(t) for t in args.targets.split(",")], args.epochs))
        print(markdown(results[-1]) + "\n", flush=True)
    if args.json:
        args.json.write_text(json.dumps(copy.deepcopy(results), indent=2))


if __name__ == "__main__":
    main()
