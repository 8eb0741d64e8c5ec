"""What structure can buy at all: the latency of the real-library models cut far past any accuracy budget.

`real_models.py` reports `optimize`'s choice under a 1 pp budget. This asks the question under it: how much
faster does each model run on this machine when half its channels or half (all) of its removable blocks are
gone, accuracy ignored? Uniform L2 channel pruning at 30 % and 50 % and depth pruning of half and all residual
blocks, each exported to OpenVINO and measured interleaved with the original at the precision given (BF16 by
default: the best plain conversion of most of these models on an AMX CPU). Random weights: widths and blocks,
not weights, set the latency (the ranking of blocks uses random inputs).

    python benchmarks/speed_ceiling.py                         # the five models, markdown + json
    python benchmarks/speed_ceiling.py --models yolov8n --precision int8 --out /tmp/ceiling
    python benchmarks/speed_ceiling.py --models yolov8n --round-to 16,32 --ratios 0.3   # what a channel block buys
    python benchmarks/speed_ceiling.py --models deit --ratios 0.5,0.7 --blocks 4,6,8   # where 2x starts
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import edgeopt  # noqa: E402
from benchmarks.real_models import BENCHES, write_results  # noqa: E402
from edgeopt.formats.openvino import load_openvino  # noqa: E402
from edgeopt.inputs.analyze import count_macs, count_params  # noqa: E402
from edgeopt.measure.timing import BenchConfig, measure  # noqa: E402
from edgeopt.techniques.pruning.depth import residual_blocks  # noqa: E402


def variants(model: torch.nn.Module, x: torch.Tensor, ratios=(0.3, 0.5), round_to=(None,), depth=True,
             blocks=()) -> dict[str, torch.nn.Module]:
    """The original and its cuts: channels at each ratio (per channel block), and half and all of its removable
    blocks (or the counts in `blocks`)."""
    out = {"original": model}
    for ratio in ratios:
        for block in round_to:
            key = f"channels -{int(ratio * 100)}%" + (f" (blocks of {block})" if block else "")
            out[key] = edgeopt.prune(model, x, ratio=ratio, method="l2", round_to=block, timeout_s=600).model
    if not depth:
        return out
    torch.manual_seed(0)
    batches = [torch.randn(4, *x.shape[1:]) for _ in range(4)]
    found = len(residual_blocks(model, x))
    counts = {b for b in blocks if 0 < b <= found} if blocks else {max(1, found // 2), found}
    for n in sorted(counts if found else ()):
        out[f"blocks -{n} of {found}"] = edgeopt.depth_prune(model, x, batches, blocks=n, resolve=False).model
    return out


def rows_of(name: str, precision: str, cfg: BenchConfig, tmp: Path, **kinds) -> list[dict]:
    bench = BENCHES[name]
    torch.manual_seed(0)
    model = edgeopt.load_model(bench.spec, input_shape=bench.input_shape).model.eval()
    x = torch.randn(*bench.input_shape)
    models = variants(model, x, **kinds)
    calib = [torch.randn(*bench.input_shape) for _ in range(8)] if precision == "int8" else None
    fns, executed = {}, {}
    for key, m in models.items():
        # exported at the precision measured: an fp32 IR records fp32 as its runtime precision, which a BF16
        # hint at load does not override (this table once timed FP32 under a BF16 heading that way)
        path = edgeopt.export(m, x, format="openvino", precision=precision, out=tmp / f"{name}-{len(fns)}.xml",
                              calib_data=calib, verify=False)
        session = load_openvino(path, precision=precision)
        executed[key] = session.precision_executed
        fns[key] = session.lean_call(x.numpy())
    p50 = {k: s.p50 for k, s in measure(fns, cfg).items()}
    return [{"model": name, "variant": k, "precision": precision, "executed": executed[k],
             "params": count_params(m), "macs": count_macs(m, x), "p50_ms": round(p50[k], 3),
             "speedup": round(p50["original"] / p50[k], 3)} for k, m in models.items()]


def markdown(rows: list[dict]) -> str:
    out = ["| model | variant | executed | params | MACs | p50 ms | vs original |", "|---|---|---|---|---|---|---|"]
    base: dict[str, dict] = {}
    for r in rows:
        b = base.setdefault(r["model"], r)
        out.append(f"| {r['model']} | {r['variant']} | {r['executed']} | {100 * r['params'] / b['params']:.0f} % | "
                   f"{100 * r['macs'] / b['macs']:.0f} % | {r['p50_ms']:.2f} | {r['speedup']:.2f}x |")
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(BENCHES))
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "int8"])
    ap.add_argument("--max-time", type=float, default=20.0, help="seconds of timed runs per model")
    ap.add_argument("--out", type=Path, default=None, help="writes OUT.json and OUT.md")
    ap.add_argument("--ratios", default="0.3,0.5", help="channel pruning ratios")
    ap.add_argument("--round-to", default="", help="channel blocks to compare (e.g. 16,32; default: none)")
    ap.add_argument("--no-depth", action="store_true", help="leave out the depth-pruned variants")
    ap.add_argument("--blocks", default="", help="how many blocks the depth-pruned variants remove (e.g. 4,6,8; "
                                                 "default: half and all)")
    a = ap.parse_args(argv)
    kinds = {"ratios": tuple(float(r) for r in a.ratios.split(",") if r),
             "round_to": (None, *(int(b) for b in a.round_to.split(",") if b)), "depth": not a.no_depth,
             "blocks": tuple(int(b) for b in a.blocks.split(",") if b)}
    warnings.filterwarnings("ignore")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as d:
        for name in [m for m in a.models.split(",") if m]:
            rows += rows_of(name, a.precision, BenchConfig(max_time_s=a.max_time), Path(d), **kinds)
            print(f"# {name}: done", file=sys.stderr, flush=True)
    write_results(a.out, {"precision": a.precision, "rows": rows}, markdown(rows))


if __name__ == "__main__":
    main()
