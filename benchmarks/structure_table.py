"""Closing-note tables for structured pruning and factorization (issue 4).

Per architecture: params and MACs before/after 30% L2 pruning, ONNX Runtime p50 before/after at 224x224
(the two models measured interleaved, see edgeopt.measure.timing.measure). Factorization on resnet18/vgg11:
MACs and ONNX Runtime p50 vs energy kept (Tucker-2). Random weights: latency and MACs do not depend on
them, accuracy is not reported here.

    python benchmarks/structure_table.py                      # all, markdown on stdout
    python benchmarks/structure_table.py --models resnet18 --energies 0.5,0.9 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import edgeopt  # noqa: E402
from edgeopt.formats.onnx import load_onnxruntime  # noqa: E402
from edgeopt.inputs.analyze import count_macs, count_params  # noqa: E402
from edgeopt.measure.timing import BenchConfig, measure  # noqa: E402

ARCHS = ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "densenet121", "convnext_tiny", "regnet_y_400mf",
         "shufflenet_v2_x1_0", "googlenet", "vit_b_16", "swin_t"]
KW = {"googlenet": {"aux_logits": False, "init_weights": True}}


def build(name: str):
    import torchvision

    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None, **KW.get(name, {})).eval()


def p50s(models: dict, x: torch.Tensor, tmp: Path, cfg: BenchConfig, threads: int | None) -> dict[str, float]:
    fns = {}
    for key, m in models.items():
        path = edgeopt.export(m, x, format="onnx", out=tmp / f"{key}.onnx")
        fns[key] = load_onnxruntime(path, threads=threads).lean_call(x.numpy())
    return {k: s.p50 for k, s in measure(fns, cfg).items()}


def prune_rows(names, x, tmp, cfg, threads, ratio):
    rows = []
    for name in names:
        model = build(name)
        pruned = edgeopt.prune(model, x, ratio=ratio, method="l2", timeout_s=600)
        small, rec = pruned.model, pruned.record
        lat = p50s({"before": model, "after": small}, x, tmp, cfg, threads)
        rows.append({"model": name, "params_before": count_params(model), "params_after": count_params(small),
                     "macs_before": count_macs(model, x), "macs_after": count_macs(small, x),
                     "p50_before_ms": lat["before"], "p50_after_ms": lat["after"], "mode": rec["mode"],
                     "layers_changed": rec["layers_changed"], "skipped": len(rec["skipped"]),
                     "skipped_reasons": rec["skipped"][:5]})
        print(f"# {name}: done", file=sys.stderr, flush=True)
    return rows


def factor_rows(names, energies, x, tmp, cfg, threads):
    rows = []
    for name in names:
        model = build(name)
        models = {"original": model}
        recs = {}
        for e in energies:
            f = edgeopt.factorize(model, x, method="tucker", energy=e)
            models[f"energy={e}"], recs[f"energy={e}"] = f.model, f.record
        lat = p50s(models, x, tmp, cfg, threads)  # all variants of one model interleaved
        for key, m in models.items():
            rec = recs.get(key, {})
            rows.append({"model": name, "variant": key, "macs": count_macs(m, x), "params": count_params(m),
                         "p50_ms": lat[key], "layers_factorized": rec.get("layers_changed", 0)})
        print(f"# {name} factorization: done", file=sys.stderr, flush=True)
    return rows


def markdown(prune_tab, factor_tab, ratio) -> str:
    out = [f"### Structured pruning, {int(ratio * 100)}% L2, ONNX Runtime FP32, batch 1, 224x224", "",
           "| model | params before → after | MACs before → after | p50 before → after (ms) | speedup | mode | "
           "layers changed / skipped |", "|---|---|---|---|---|---|---|"]
    for r in prune_tab:
        out.append(f"| {r['model']} | {r['params_before'] / 1e6:.2f}M → {r['params_after'] / 1e6:.2f}M | "
                   f"{r['macs_before'] / 1e9:.2f}G → {r['macs_after'] / 1e9:.2f}G | {r['p50_before_ms']:.2f} → "
                   f"{r['p50_after_ms']:.2f} | {r['p50_before_ms'] / r['p50_after_ms']:.2f}x | {r['mode']} | "
                   f"{r['layers_changed']} / {r['skipped']} |")
    out += ["", "### Tucker-2 factorization vs energy kept, ONNX Runtime FP32, batch 1, 224x224", "",
            "| model | variant | MACs | params | p50 (ms) | layers factorized |", "|---|---|---|---|---|---|"]
    for r in factor_tab:
        out.append(f"| {r['model']} | {r['variant']} | {r['macs'] / 1e9:.2f}G | {r['params'] / 1e6:.2f}M | "
                   f"{r['p50_ms']:.2f} | {r['layers_factorized']} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(ARCHS))
    ap.add_argument("--factor-models", default="resnet18,vgg11")
    ap.add_argument("--energies", default="0.5,0.7,0.9,0.97")
    ap.add_argument("--ratio", type=float, default=0.3)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--max-time", type=float, default=10.0, help="seconds of timed runs per interleaved group")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    x = torch.randn(1, 3, a.size, a.size)
    cfg = BenchConfig(max_time_s=a.max_time)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        pt = prune_rows([m for m in a.models.split(",") if m], x, tmp, cfg, a.threads, a.ratio)
        ft = factor_rows([m for m in a.factor_models.split(",") if m],
                         [float(e) for e in a.energies.split(",") if e], x, tmp, cfg, a.threads)
    print(markdown(pt, ft, a.ratio))
    if a.json:
        a.json.write_text(json.dumps({"prune": pt, "factorize": ft}, indent=2))


if __name__ == "__main__":
    main()
