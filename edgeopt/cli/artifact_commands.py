"""`edgeopt export` and `benchmark`: an artifact made from a model, and an artifact measured."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from edgeopt.cli import options as o
from edgeopt.cli.app import app
from edgeopt.cli.common import (
    INPUT_SHAPE_HELP,
    calibration_data,
    load_model_and_example,
    out,
    refuse_overwriting_inputs,
)
from edgeopt.cli.optimize import MODEL_HELP


@app.command()
def export(
    model: str = typer.Option("demo", help=MODEL_HELP),
    weights: Path = typer.Option(None), input_shape: list[str] = typer.Option(None, help=INPUT_SHAPE_HELP),
    trust_pickle: bool = typer.Option(False),
    format: str = typer.Option("onnx", help="onnx | openvino | tensorrt"),
    precision: str = typer.Option("fp32", help="fp32 | fp16 | bf16 (openvino) | int8 (needs calibration data) | "
                                               "int8w (weight-only int8: ~4x smaller, float compute)"),
    data: str = typer.Option(None, help="int8 calibration data: 'digits' (the demo's, default for it), a .npy "
                                        "file of inputs shaped N,C,H,W, an image folder or module:function"),
    calib: str = typer.Option(None, help="'random': calibrate int8 on random inputs (meaningless scales; "
                                         "refused unless asked for, and marked in the output)"),
    quant_mode: str = typer.Option("auto", help="ONNX int8: auto | qdq-s8 | qdq-u8 | qoperator-u8 | "
                                                "qoperator-s8 | qdq-tensorrt (TensorRT's explicit Q/DQ) | "
                                                "dynamic (Linear-heavy models, no calibration)"),
    workspace_mb: int = typer.Option(1024, help="TensorRT builder workspace limit"),
    dla_core: int = typer.Option(None, help="TensorRT: build for this DLA core (Jetson), GPU fallback on"),
    timing_cache: Path = typer.Option(None, help="TensorRT timing cache file, reused and updated"),
    out_file: Path = typer.Option(Path("model.onnx"), "--out"),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="ONNX/OpenVINO: the first axis of every "
                                       "input and output may vary at run time (verified at the given batch)"),
) -> None:
    """Export a model at a precision and verify every output of the artifact against PyTorch on fresh inputs.
    Input and output names come from the model: `input` (or the named inputs), `output` for one tensor, dict
    keys and positions for structures (e.g. `out`, `aux`, `0`, `boxes`)."""
    from edgeopt.formats import export_verified
    from edgeopt.inputs.model_io import Inputs

    refuse_overwriting_inputs(model, weights, data, format, out_file)
    loaded, example = load_model_and_example(model, weights, input_shape, trust_pickle)
    first = Inputs.of(example).first
    calib_data = calibration_data(data, calib, model, tuple(first.shape[1:])) if precision == "int8" else None
    options = {"quant_mode": quant_mode, "workspace_mb": workspace_mb, "dla_core": dla_core,
               "timing_cache": str(timing_cache) if timing_cache else None, "dynamic_batch": dynamic_batch}
    result, session = export_verified(loaded.model, example, format, out_file, precision=precision,
                                      calib=calib_data, options=options)
    v = result.info.get("verification", {})
    cal = result.info.get("calibration")
    note = " [calibrated on RANDOM data: scales are meaningless]" if cal and cal["source"] == "random" else ""
    out.print(f"wrote {result.path} ({result.exporter}, runs {session.precision_executed} on {session.runtime}"
              f"{', ' + result.info['quant_mode'] if 'quant_mode' in result.info else ''}); verified against "
              f"PyTorch: max rel error {v.get('max_rel_error', 0):.2e}, top-1 agreement "
              f"{v.get('top1_agreement', 1):.0%} over {v.get('inputs', 0)} inputs{note}")


@app.command()
def benchmark(
    artifacts: list[Path] = typer.Argument(..., help="one or more .onnx / OpenVINO .xml / TensorRT .engine files; "
                                                     "several are measured interleaved, run by run (A/B)"),
    runtime: str = typer.Option(None, help="onnxruntime | openvino | tensorrt (default: from the file suffix)"),
    precision: str = typer.Option("fp32", help="OpenVINO inference-precision hint: fp32 | bf16 | fp16 | int8 "
                                               "(= the runtime's default); ONNX/TensorRT run what the file holds"),
    threads: int = typer.Option(None, callback=o.checked("--threads", o.threads_problem),
                                help="runtime threads (default: all cores); recorded in the result"),
    input_shape: list[str] = typer.Option(None, help="input shape, e.g. 1,3,224,224 (default: the artifact's); "
                                          "several inputs: repeat with names, e.g. image:1,3,224,224"),
    batch_size: int = typer.Option(None, callback=o.checked("--batch-size", o.at_least_one_problem),
                                   help="batch size (replaces the first dimension of the input shape)"),
    streams: int = typer.Option(None, callback=o.checked("--streams", o.at_least_one_problem),
                                help="also measure throughput as a server runs it: this many requests in flight, "
                                     "each a batch of --batch-size (OpenVINO: THROUGHPUT hint, async queue)"),
    max_time: float = typer.Option(10.0, callback=o.checked("--max-time", o.positive_problem),
                                   help="seconds at most for the timed runs"),
    per_layer: bool = typer.Option(False, "--per-layer", help="also profile per-layer times (ONNX Runtime "
                                                              "profiler / OpenVINO performance counters)"),
    top: int = typer.Option(10, callback=o.checked("--top", o.at_least_one_problem),
                            help="layers to print with --per-layer"),
    device: str = typer.Option(None, help="measure on a remote `edgeopt agent`, e.g. http://jetson:8765"),
    token_file: Path = typer.Option(None, help="the agent's token file (with --device)"),
    dataset: str = typer.Option(None, help="with --device: top-1 on NAME.npz from the agent's --data-dir"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Measure latency: warm-up, repeated runs until the median is stable (or --max-time), percentiles;
    records runtime and version, the precision really executed, the device and the threads.

    With --device the artifacts are uploaded to an `edgeopt agent` and measured there (the agent builds
    what the device runs, e.g. a TensorRT engine from ONNX on a Jetson)."""
    from edgeopt.errors import ConfigError
    from edgeopt.inputs.models import parse_input_shape
    from edgeopt.measure.artifacts import benchmark_many
    from edgeopt.measure.artifacts import per_layer as profile
    from edgeopt.measure.timing import BenchConfig

    shape = parse_input_shape(input_shape)
    layers = {}
    if device:
        if per_layer or batch_size or streams:
            raise ConfigError("--per-layer, --batch-size and --streams are not available with --device")
        results = _remote_benchmark(artifacts, device, token_file, runtime, precision, threads, shape, max_time,
                                    dataset)
    else:
        if token_file or dataset:
            raise ConfigError("--token-file and --dataset only apply with --device")
        results = benchmark_many(artifacts, runtime=runtime, precision=precision, threads=threads,
                                 input_shape=shape, batch_size=batch_size, config=BenchConfig(max_time_s=max_time),
                                 streams=streams)
        layers = {str(a): [r.as_dict() for r in profile(a, runtime, precision, threads, shape, batch_size)]
                  for a in artifacts} if per_layer else {}
    if as_json:
        docs = [{**r.model_dump(mode="json"), **({"layers": layers[r.artifact]} if per_layer else {})}
                for r in results]
        out.print_json(json.dumps(docs[0] if len(docs) == 1 else docs))
        return
    for r in results:
        s = r.latency
        out.print(f"{r.artifact}: {r.runtime} {r.runtime_version} ({r.precision_executed}, {r.threads} threads, "
                  f"input {'x'.join(map(str, r.input_shape))}) p50 {s.p50:.3f} ms  p90 {s.p90:.3f}  "
                  f"p99 {s.p99:.3f}  mean {s.mean:.3f} ± {s.std:.3f}  n={s.n}")
        if r.throughput is not None:
            t = r.throughput
            out.print(f"  throughput {t.images_s:.1f} images/s (batch {t.batch}, {t.streams} streams): per request "
                      f"p50 {t.p50_ms:.3f} ms  p99 {t.p99_ms:.3f} ms")
    if device:
        for r in results:
            acc = f", top-1 {r.accuracy:.2f}%" if getattr(r, "accuracy", None) is not None else ""
            out.print(f"{r.artifact} measured on {r.device} via {device}{acc}", markup=False, highlight=False)
    elif len(results) > 1:
        out.print(f"measured interleaved on {results[0].device}")
    for name, rows in layers.items():
        out.print(f"top layers of {name} (median per run; profiling overhead included):")
        for row in rows[:top]:
            out.print(f"  {row['ms']:8.3f} ms {row['share']:6.1%}  {row['op']:<16} {row['name']}  {row['exec_type']}")


def _remote_benchmark(artifacts: list[Path], device: str, token_file: Path | None, runtime: str | None,
                      precision: str, threads: int | None, input_shape, max_time: float, dataset: str | None):
    from edgeopt.errors import ConfigError
    from edgeopt.remote import read_token_file
    from edgeopt.remote.client import measure_remote

    if token_file is None:
        raise ConfigError("--device needs --token-file (the file holding the agent's token)")
    results = measure_remote({str(a): a for a in artifacts}, device, read_token_file(token_file),
                             precision=precision, runtime=runtime, threads=threads, input_shape=input_shape,
                             max_time_s=max_time, dataset=dataset)
    return [results[str(a)] for a in artifacts]
