"""Closing-note numbers for issue 6, on this machine:

1. the roofline estimate (edgeopt/measure/roofline.py, this machine's `local` profile) vs the measured p50, for the
   built-in demo and torchvision resnet18 (random weights, 1x3x224x224), on ONNX Runtime fp32 and OpenVINO
   fp32/bf16 — measured interleaved, as optimize does;
2. the remote-agent round-trip overhead: a real `edgeopt agent` on loopback measures the demo's ONNX;
   overhead = host wall time of the request - time the agent's job took (upload, HTTP, worker start).

Run from the repository root:  python benchmarks/roofline_vs_measured.py [--bench-time 10] [--json out.json]
Timing on a shared machine is noisy: compare ratios within one run."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def roofline_rows(bench_time: float, threads: int | None) -> list[dict]:
    import torch

    from edgeopt.formats import BACKENDS, backend_for, export_verified
    from edgeopt.inputs.analyze import count_macs, count_params
    from edgeopt.inputs.models import load_model
    from edgeopt.measure.roofline import roofline
    from edgeopt.measure.timing import BenchConfig, measure
    from edgeopt.targets import detect_local

    local = detect_local()
    print(f"profile: {local.description}\n  peak ops/s {local.peak_ops}, {local.memory_bandwidth_gbs} GB/s, "
          f"call overhead {local.call_overhead_ms} ms", flush=True)
    rows, tmp = [], Path(tempfile.mkdtemp(prefix="roofline-"))
    pairs = [("onnx", "fp32")] + ([("openvino", "fp32"), ("openvino", "bf16")] if BACKENDS.get("openvino").installed()
                                  else [])
    for spec, shape in (("demo", None), ("torchvision:resnet18", (1, 3, 224, 224))):
        loaded = load_model(spec, input_shape=shape)
        net = loaded.model.eval()
        x = torch.randn(*loaded.input_shape)
        macs, params = count_macs(net, x), count_params(net)
        sessions, meta = {}, {}
        for fmt, prec in pairs:
            if prec != "fp32" and prec not in local.precisions:
                continue
            result, _ = export_verified(net, x, fmt, tmp / f"{spec.replace(':', '_')}-{fmt}", precision="fp32")
            key = f"{spec} {fmt}/{prec}"
            sessions[key] = backend_for(fmt).load(result.path, precision=prec, threads=threads or os.cpu_count())
            meta[key] = (prec, sessions[key].precision_executed)
        xn = x.numpy()
        stats = measure({k: s.lean_call(xn) for k, s in sessions.items()}, BenchConfig(max_time_s=bench_time))
        for k, st in stats.items():
            prec, executed = meta[k]
            r = roofline(local, macs, params * 4, executed if executed in local.peak_ops else prec)
            rows.append({"case": k, "precision_executed": executed, "macs": macs, "params": params,
                         "estimate_ms": r.total_ms, "bound": r.bound, "compute_ms": r.compute_ms,
                         "memory_ms": r.memory_ms, "measured_p50_ms": st.p50, "n": st.n,
                         "measured_over_estimate": st.p50 / r.total_ms})
    return rows


def agent_overhead(repeats: int = 3) -> dict:
    import torch

    from edgeopt import export
    from edgeopt.inputs.models import load_model
    from edgeopt.remote.client import AgentClient, AgentError, measure_remote

    tmp = Path(tempfile.mkdtemp(prefix="agent-overhead-"))
    loaded = load_model("demo")
    onnx = export(loaded.model, torch.randn(*loaded.input_shape), format="onnx", out=tmp / "demo.onnx")
    token = secrets.token_urlsafe(32)
    (tmp / "token").write_text(token)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "edgeopt", "agent", "--port", str(port), "--token-file",
                             str(tmp / "token")], cwd=ROOT, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                AgentClient(url, token, timeout_s=5).info()
                break
            except AgentError:
                time.sleep(0.3)
        t0 = time.perf_counter()
        for _ in range(20):
            AgentClient(url, token).info()
        info_ms = (time.perf_counter() - t0) / 20 * 1e3
        runs = []
        for _ in range(repeats):
            r = measure_remote({"demo": onnx}, url, token, max_time_s=1.0)["demo"]
            runs.append({"round_trip_s": r.round_trip_s, "job_s": r.job_s, "p50_ms": r.latency.p50,
                         "overhead_ms": (r.round_trip_s - r.job_s) * 1e3})
    finally:
        proc.terminate()
        proc.wait(10)
    over = sorted(x["overhead_ms"] for x in runs)
    return {"info_request_ms": info_ms, "measure_runs": runs, "overhead_ms_median": over[len(over) // 2]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench-time", type=float, default=10.0, help="seconds per interleaved measurement")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args()
    rows = roofline_rows(args.bench_time, args.threads)
    print(f"\n{'case':40} {'executed':9} {'estimate ms':>12} {'bound':8} {'measured p50':>13} {'measured/est':>13}")
    for r in rows:
        print(f"{r['case']:40} {r['precision_executed']:9} {r['estimate_ms']:12.4f} {r['bound']:8} "
              f"{r['measured_p50_ms']:13.4f} {r['measured_over_estimate']:12.1f}x")
    agent = agent_overhead()
    print(f"\nagent on loopback: GET /v1/info {agent['info_request_ms']:.1f} ms; measure round trip minus job time "
          f"(upload + HTTP + worker process start): median {agent['overhead_ms_median']:.0f} ms")
    for r in agent["measure_runs"]:
        print(f"  round trip {r['round_trip_s'] * 1e3:.0f} ms, job {r['job_s'] * 1e3:.0f} ms, "
              f"remote p50 {r['p50_ms']:.4f} ms")
    if args.json:
        args.json.write_text(json.dumps({"roofline": rows, "agent": agent}, indent=2))


if __name__ == "__main__":
    main()
