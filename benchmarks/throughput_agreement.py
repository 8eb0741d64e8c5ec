"""Throughput measured two ways on the same IR: edgeopt's (measure/throughput.py: an AsyncInferQueue on the
THROUGHPUT-hint compile) against OpenVINO's own `benchmark_app -hint throughput`. They should agree within
10 %; when they do not, the settings each used (streams, infer requests, threads, precision) say why.

    python benchmarks/throughput_agreement.py [--model resnet18] [--size 64] [--batch 32]
                                              [--precisions fp32,int8] [--seconds 8] [--rounds 3]
                                              [--streams N] [--out OUT.json]

The model (torchvision, random weights: images/s does not depend on them) is exported once per precision to
an IR with a dynamic batch axis (INT8 calibrated on random inputs), as `optimize --goal throughput` exports
it. Both tools then run it at the same batch, alternately, round after round (drift on a shared machine hits
both alike); the ratio is ours / benchmark_app's per round, and its median decides. benchmark_app ships with
the openvino pip package; the one beside this Python is used."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TOLERANCE = 0.10


def benchmark_app() -> str | None:
    """The benchmark_app of this Python's environment, else one on PATH."""
    here = Path(sys.executable).parent / "benchmark_app"
    return str(here) if here.exists() else shutil.which("benchmark_app")


def export_ir(model_name: str, size: int, precision: str, out: Path) -> Path:
    import torch
    import torchvision

    from edgeopt.formats.openvino import export_openvino

    torch.manual_seed(0)
    model = torchvision.models.get_model(model_name, weights=None, num_classes=10).eval()
    example = torch.randn(1, 3, size, size)
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(8, 3, size, size, generator=g) for _ in range(4)]
    return export_openvino(model, example, out / f"{model_name}-{precision}.xml", precision,
                           calib=calib if precision == "int8" else None,
                           options={"dynamic_batch": True, "allow_random_calib": True}).path


def ours(server, seconds: float) -> dict:
    from edgeopt.measure.throughput import ThroughputConfig, measure_throughput

    t = measure_throughput({"m": server}, ThroughputConfig(max_time_s=seconds))["m"]
    return {"images_s": t.images_s, "p50_ms": t.p50_ms, "settings": t.runtime_settings}


def theirs(app: str, xml: Path, batch: int, seconds: float, streams: int | None, infer_precision: str | None,
           threads: int | None) -> dict:
    dims = ",".join(str(d) for d in [batch, *shape_of(xml)[1:]])
    cmd = [app, "-m", str(xml), "-d", "CPU", "-hint", "throughput", "-shape", f"[{dims}]",
           "-t", str(int(max(1, round(seconds))))]
    if streams:
        cmd += ["-nstreams", str(streams)]
    if infer_precision:
        cmd += ["-infer_precision", infer_precision]
    if threads:
        cmd += ["-nthreads", str(threads)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 4 + 120)
    text = p.stdout + p.stderr
    found = re.search(r"Throughput:\s*([\d.]+)\s*FPS", text)
    if p.returncode != 0 or not found:
        raise RuntimeError(f"benchmark_app failed ({p.returncode}): {text[-1500:]}")

    def grab(pattern: str) -> str | None:
        m = re.search(pattern, text)
        return m.group(1) if m else None

    return {"images_s": float(found.group(1)), "median_ms": grab(r"Median:\s*([\d.]+)\s*ms"),
            "settings": {"num_streams": grab(r"NUM_STREAMS:\s*(\d+)"),
                         "infer_requests": grab(r"(\d+) inference requests"),
                         "inference_num_threads": grab(r"INFERENCE_NUM_THREADS:\s*(\d+)"),
                         "inference_precision": grab(r"INFERENCE_PRECISION_HINT:\s*(\w+)"),
                         "iterations": grab(r"Count:\s*(\d+)")}}


def shape_of(xml: Path) -> list[int]:
    from edgeopt.formats.openvino_core import openvino_core, read_ir

    port = read_ir(xml, openvino_core()).inputs[0]
    return [d.get_length() if d.is_static else -1 for d in port.get_partial_shape()]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--precisions", default="fp32,int8")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--streams", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    app = benchmark_app()
    if app is None:
        sys.exit("benchmark_app not found: it ships with the openvino pip package")
    from edgeopt.formats.openvino import compile_throughput
    from edgeopt.measure.throughput import Load, async_queue_server

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for precision in args.precisions.split(","):
            xml = export_ir(args.model, args.size, precision, Path(tmp))
            server = async_queue_server(compile_throughput, xml, precision, args.threads,
                                        Load(batch=args.batch, streams=args.streams))
            # the same floating-point precision as ours (edgeopt names it fp32/fp16/bf16, OpenVINO f32/f16/bf16)
            hint = {"fp32": "f32", "fp16": "f16"}.get(server.settings.get("inference_precision"),
                                                      server.settings.get("inference_precision"))
            rounds = []
            for _ in range(args.rounds):
                a = ours(server, args.seconds)
                b = theirs(app, xml, args.batch, args.seconds, args.streams, hint, args.threads)
                rounds.append({"edgeopt": a, "benchmark_app": b, "ratio": round(a["images_s"] / b["images_s"], 4)})
                print(f"{args.model}@{args.size} {precision} batch {args.batch}: edgeopt {a['images_s']:.1f} vs "
                      f"benchmark_app {b['images_s']:.1f} images/s (ratio {rounds[-1]['ratio']:.3f}); "
                      f"edgeopt {a['settings'].get('num_streams')} streams/{a['settings'].get('jobs')} requests/"
                      f"{a['settings'].get('inference_num_threads')} threads, benchmark_app "
                      f"{b['settings']['num_streams']} streams/{b['settings']['infer_requests']} requests/"
                      f"{b['settings']['inference_num_threads']} threads", flush=True)
            ratio = statistics.median(r["ratio"] for r in rounds)
            results.append({"model": args.model, "size": args.size, "batch": args.batch, "precision": precision,
                            "median_ratio": ratio, "agree": abs(ratio - 1.0) <= TOLERANCE, "rounds": rounds})
            print(f"  median ratio {ratio:.3f}: {'agree' if abs(ratio - 1) <= TOLERANCE else 'DISAGREE'} "
                  f"(within {TOLERANCE:.0%})", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
