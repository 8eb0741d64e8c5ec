"""The closing-note table of issue 3: p50 latency of torchvision resnet18, resnet50 and mobilenet_v2
(224x224, batch 1) in PyTorch eager fp32 and every installed runtime x precision this CPU supports, all
measured in ONE interleaved run (edgeopt.measure.timing.measure), plus top-1 agreement of each reduced precision
with PyTorch fp32.

No network and no datasets here: the models have seeded random weights, and INT8 is calibrated on random
inputs (`calib="random"`, i.e. `--calib random`), so the agreement column is a lower bound of what real
calibration data gives — the latency columns do not depend on it.

    python benchmarks/runtimes_table.py                 # ~5-8 min on 2 cores
    python benchmarks/runtimes_table.py --models resnet18 --max-time 60 --all-int8-modes
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402

from edgeopt.formats import BACKENDS  # noqa: E402
from edgeopt.measure.timing import BenchConfig, measure  # noqa: E402
from edgeopt.targets import detect_local  # noqa: E402
from edgeopt.targets.host import environment  # noqa: E402


def _pairs(all_int8_modes: bool) -> list[tuple[str, str, dict]]:
    local = detect_local().precisions
    pairs = []
    for name, b in BACKENDS.items():
        if not b.installed():
            print(f"# skipping {name}: {b.missing_reason()}", file=sys.stderr)
            continue
        for prec in b.precisions:
            if prec != "fp32" and prec not in local and not (name == "onnx" and prec == "fp16"):
                continue  # no hardware support here (ORT fp16 is kept: it shows what no-fp16 CPUs cost)
            if name == "onnx" and prec == "int8" and all_int8_modes:
                for mode in ("qdq-s8", "qdq-u8", "qoperator-u8", "qoperator-s8"):
                    pairs.append((name, prec, {"quant_mode": mode}))
            else:
                pairs.append((name, prec, {}))
    return pairs


def _label(fmt: str, prec: str, opts: dict) -> str:
    rt = BACKENDS.get(fmt).runtime
    return f"{rt} {prec}" + (f" ({opts['quant_mode']})" if "quant_mode" in opts else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="resnet18,resnet50,mobilenet_v2")
    ap.add_argument("--max-time", type=float, default=240.0, help="seconds for the one interleaved measurement")
    ap.add_argument("--agreement-inputs", type=int, default=32)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--all-int8-modes", action="store_true", help="every ONNX Runtime static INT8 flavour")
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    args = ap.parse_args()
    import torchvision

    torch.set_num_threads(args.threads)
    example = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    x = example.numpy()
    fresh = [torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(100 + i))
             for i in range(args.agreement_inputs)]
    pairs = _pairs(args.all_int8_modes)
    calls, rows, meta = {}, {}, {}
    tmp = Path(tempfile.mkdtemp(prefix="edgeopt-table."))
    for mname in args.models.split(","):
        torch.manual_seed(0)
        model = getattr(torchvision.models, mname)(weights=None).eval()
        calls[(mname, "pytorch eager fp32")] = lambda m=model: m(example)
        with torch.no_grad():
            ref = [int(model(f).argmax()) for f in fresh]
        meta[(mname, "pytorch eager fp32")] = ("fp32", torch.__version__, None)
        for fmt, prec, opts in pairs:
            label = _label(fmt, prec, opts)
            t0 = time.perf_counter()
            try:
                backend = BACKENDS.get(fmt)
                art = backend.export(model, example, tmp / f"{mname}-{fmt}-{prec}-{opts.get('quant_mode', '')}",
                                     precision=prec, calib="random" if prec == "int8" else None, options=opts)
                sess = backend.load(art.path, precision=prec, threads=args.threads)
            except Exception as e:  # one failed pair is a row that says why, not a lost run
                rows[(mname, label)] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
                continue
            agree = None
            if prec != "fp32":
                got = [int(np.argmax(sess.run(f.numpy()))) for f in fresh]
                agree = float(np.mean([g == r for g, r in zip(got, ref, strict=True)]))
            calls[(mname, label)] = sess.lean_call(x)
            meta[(mname, label)] = (sess.precision_executed, sess.runtime_version, agree)
            print(f"# {mname} {label}: exported in {time.perf_counter() - t0:.1f} s, runs {sess.precision_executed}",
                  file=sys.stderr, flush=True)
    with torch.no_grad():
        print(f"# measuring {len(calls)} callables interleaved (up to {args.max_time:.0f} s)", file=sys.stderr)
        stats = measure(calls, BenchConfig(max_time_s=args.max_time, min_runs=20))
    env = environment(args.threads)
    lines = [f"CPU: {env['cpu']} ({', '.join(env['cpu_flags'])}), {args.threads} threads; torch {env.get('torch')}, "
             f"onnxruntime {env.get('onnxruntime')}, openvino {env.get('openvino')}, nncf {env.get('nncf')}. "
             "One interleaved run; random weights; int8 calibrated on random inputs (--calib random).", "",
             "| model | runtime precision | executed | p50 ms | p90 ms | n | vs eager | top-1 agreement with fp32 |",
             "|---|---|---|---|---|---|---|---|"]
    for mname in args.models.split(","):
        eager = stats[(mname, "pytorch eager fp32")].p50
        for (m, label), s in ((k, v) for k, v in stats.items() if k[0] == mname):
            executed, _, agree = meta[(m, label)]
            ag = "—" if agree is None else f"{agree:.0%} ({args.agreement_inputs} inputs)"
            lines.append(f"| {m} | {label} | {executed} | {s.p50:.2f} | {s.p90:.2f} | {s.n} | "
                         f"{eager / s.p50:.2f}x | {ag} |")
        for (m, label), why in rows.items():
            if m == mname:
                lines.append(f"| {m} | {label} | — | {why} | | | | |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
