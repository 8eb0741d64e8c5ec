"""`edgeopt prune`, `export`, `benchmark`: the building blocks on their own."""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer

from edgeopt.cli import options as o
from edgeopt.cli.app import app
from edgeopt.cli.common import out, refuse_overwriting_inputs
from edgeopt.cli.optimize import MODEL_HELP

INPUT_SHAPE_HELP = ("example input shape, batch first, e.g. 1,3,224,224; for several inputs repeat it with names: "
                    "--input-shape image:1,3,224,224 --input-shape mask:1,1,224,224")


def _load(model: str, weights: Path | None, input_shape: list[str] | str | None, trust_pickle: bool):
    from edgeopt.inputs.model_io import Inputs
    from edgeopt.inputs.models import load_model, parse_input_shape

    loaded = load_model(model, weights=weights, input_shape=parse_input_shape(input_shape),
                        trust_pickle=trust_pickle)
    return loaded, Inputs.random(loaded.input_shapes or loaded.input_shape, keyword=True).example()


@app.command()
def prune(
    model: str = typer.Option("demo", help=MODEL_HELP),
    weights: Path = typer.Option(None), input_shape: list[str] = typer.Option(None, help=INPUT_SHAPE_HELP),
    trust_pickle: bool = typer.Option(False),
    ratio: float = typer.Option(0.3, help="fraction of channels to remove"),
    importance: str = typer.Option(
        "l2", help="l2 | l1 | bn_scale | fpgm | random | hrank (rank of the activated feature maps) | energy "
        "(mean squared activation of each channel's output maps) | recon (reconstruction error; with "
        "--reconstruct); hrank/energy/recon measure on --data, else on random inputs | taylor (needs labels: "
        "Python API)"),
    scope: str = typer.Option("local", help="local (same ratio per layer) | global (rank all groups together)"),
    max_layer_ratio: float = typer.Option(0.9, help="global scope: no layer loses more than this fraction"),
    round_to: int = typer.Option(None, help="round kept channels to this multiple (e.g. 8 or 16 for the target)"),
    steps: int = typer.Option(1, help="iterative pruning in this many steps"),
    timeout: float = typer.Option(120.0, help="seconds for tracing + pruning; past it the rest is skipped"),
    format: str = typer.Option("onnx", help="export the pruned model to this format"),
    out_file: Path = typer.Option(Path("pruned.onnx"), "--out"),
    record_file: Path = typer.Option(None, "--record", help="write the per-layer record (JSON) here"),
    reconstruct: bool = typer.Option(False, help="re-solve the layers fed by pruned channels by least squares on "
                                                 "unlabeled calibration inputs (--data), so accuracy holds "
                                                 "without retraining; per-layer errors in --record"),
    data: str = typer.Option(None, help="inputs for --reconstruct, --importance recon, hrank and energy: 'digits' (the "
                                        "demo's, default for it) or a .npy file shaped N,C,H,W; without it hrank "
                                        "ranks random inputs"),
) -> None:
    """Prune channels physically, export, verify against PyTorch, and print params/MACs before and after.
    Layers that cannot be pruned safely are kept, with a reason per layer (see --record).
    Retraining-free: `--importance recon --reconstruct --data inputs.npy`."""
    import torch

    from edgeopt import export
    from edgeopt.errors import ConfigError
    from edgeopt.inputs.analyze import count_macs, count_params
    from edgeopt.report import write_atomic
    from edgeopt.techniques.pruning.importance import NEEDS_INPUTS, importances
    from edgeopt.techniques.pruning.prune import prune as do_prune

    _prune_config(ratio=ratio, scope=scope, round_to=round_to, iterative_steps=steps,
                  max_layer_ratio=max_layer_ratio, timeout_s=timeout)
    if importance == "taylor":
        raise ConfigError("--importance taylor needs labelled batches: use edgeopt.prune(..., data=[(x, y)])")
    from edgeopt.inputs.model_io import Inputs

    refuse_overwriting_inputs(model, weights, data, format, out_file, record_file)
    loaded, example = _load(model, weights, input_shape, trust_pickle)
    shape = Inputs.of(example).first.shape  # sample inputs for hrank / energy / reconstruction: single input
    batches, source = None, None
    measured = importance == "recon" or importances().canonical(importance) in NEEDS_INPUTS
    if reconstruct or measured:
        batches = _calib_data(data, None, model, tuple(shape[1:]))
        if hasattr(batches, "inputs"):
            batches = list(batches.inputs())[:4]
    if measured and importance != "recon":
        source = "random" if batches is None else "data"
        if batches is None:
            batches = [torch.randn(8, *shape[1:]) for _ in range(2)]
        out.print(f"{importance}: measuring feature maps of " + (
            "RANDOM inputs (no --data given: pass real inputs for a meaningful ranking)" if source == "random"
            else f"{len(batches)} batches from --data"), markup=False, highlight=False)
    small, record = do_prune(loaded.model, example, ratio=ratio, importance=importance, scope=scope,
                             round_to=round_to, iterative_steps=steps, max_layer_ratio=max_layer_ratio,
                             timeout_s=timeout, data=batches, reconstruct=reconstruct)
    if source:
        record["hrank_inputs" if importance in ("hrank", "rank") else "importance_inputs"] = source
    path = export(small, example, format=format, out=out_file)
    if record_file:
        write_atomic(record_file, json.dumps(record, indent=2))
    out.print(f"params {count_params(loaded.model):,} -> {count_params(small):,}; "
              f"MACs {count_macs(loaded.model, example):,} -> {count_macs(small, example):,}; "
              f"{record['layers_changed']} layers changed, {len(record['skipped'])} skipped; wrote {path}")
    rec = record.get("reconstruction")
    if rec:
        out.print(f"reconstruction: {len(rec['layers'])} layers re-solved in {rec['seconds']} s" if rec["ran"]
                  else f"reconstruction skipped: {rec['reason']}")


# PruneConfig field -> the prune command's flag
_PRUNE_FLAGS = {"ratio": "--ratio", "scope": "--scope", "round_to": "--round-to", "iterative_steps": "--steps",
                "max_layer_ratio": "--max-layer-ratio", "timeout_s": "--timeout"}


def _prune_config(**fields) -> None:
    """The flags checked against the bounds the pruning technique's config holds (the ones `optimize` obeys),
    before the model is loaded; one line naming the flag."""
    from pydantic import ValidationError

    from edgeopt.errors import ConfigError
    from edgeopt.techniques import PruneConfig

    try:
        PruneConfig(**fields)
    except ValidationError as e:
        err = e.errors()[0]
        field = str(err["loc"][0]) if err.get("loc") else ""
        value = fields.get(field)
        raise ConfigError(f"{_PRUNE_FLAGS.get(field, field)} {value!r}: {err['msg'][0].lower()}{err['msg'][1:]}"
                          ) from None
    if not math.isfinite(fields["timeout_s"]):
        raise ConfigError(f"--timeout must be a finite number of seconds, got {fields['timeout_s']}")


def _calib_data(data: str | None, calib: str | None, model: str, sample_shape):
    """--calib random | --data digits | --data inputs.npy; the demo defaults to its own digits data."""
    from edgeopt.errors import ConfigError, DataError

    if calib is not None and calib != "random":
        raise ConfigError(f"--calib takes only 'random' (use --data for real calibration data), got {calib!r}")
    if data is None:
        if model == "demo":
            data = "digits"
        else:
            return "random" if calib == "random" else None
    if data == "digits":
        from edgeopt.inputs.data import digits_data

        return digits_data()[0]
    import numpy as np
    import torch

    path = Path(data)
    if path.suffix != ".npy" or not path.is_file():
        raise ConfigError(f"--data {data!r}: give 'digits' or an existing .npy file of inputs shaped N,C,H,W")
    try:
        arr = np.load(path, allow_pickle=False)  # never unpickle user files
    except Exception as e:
        raise DataError(f"--data {path} is not a readable .npy array: {str(e).splitlines()[0][:120]}") from None
    from edgeopt.inputs.data import as_batches

    return as_batches([torch.from_numpy(np.asarray(arr, dtype=np.float32))], "calibration data", sample_shape)


@app.command()
def export(
    model: str = typer.Option("demo", help=MODEL_HELP),
    weights: Path = typer.Option(None), input_shape: list[str] = typer.Option(None, help=INPUT_SHAPE_HELP),
    trust_pickle: bool = typer.Option(False),
    format: str = typer.Option("onnx", help="onnx | openvino | tensorrt"),
    precision: str = typer.Option("fp32", help="fp32 | fp16 | bf16 (openvino) | int8 (needs calibration data) | "
                                               "int8w (weight-only int8: ~4x smaller, float compute)"),
    data: str = typer.Option(None, help="int8 calibration data: 'digits' (the demo's, default for it) or a .npy "
                                        "file of inputs shaped N,C,H,W"),
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
    loaded, example = _load(model, weights, input_shape, trust_pickle)
    first = Inputs.of(example).first
    calib_data = _calib_data(data, calib, model, tuple(first.shape[1:])) if precision == "int8" else None
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
        if per_layer or batch_size:
            raise ConfigError("--per-layer and --batch-size are not available with --device")
        results = _remote_benchmark(artifacts, device, token_file, runtime, precision, threads, shape, max_time,
                                    dataset)
    else:
        if token_file or dataset:
            raise ConfigError("--token-file and --dataset only apply with --device")
        results = benchmark_many(artifacts, runtime=runtime, precision=precision, threads=threads,
                                 input_shape=shape, batch_size=batch_size, config=BenchConfig(max_time_s=max_time))
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
