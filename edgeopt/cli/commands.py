"""`edgeopt prune`, `export`, `benchmark`, `targets`: the building blocks on their own."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from edgeopt.cli.app import app
from edgeopt.cli.common import out
from edgeopt.cli.optimize import MODEL_HELP


def _load(model: str, weights: Path | None, input_shape: str | None, trust_pickle: bool):
    import torch

    from edgeopt.models import load_model, parse_input_shape

    loaded = load_model(model, weights=weights, input_shape=parse_input_shape(input_shape),
                        trust_pickle=trust_pickle)
    return loaded, torch.randn(*loaded.input_shape)


@app.command()
def prune(
    model: str = typer.Option("demo", help=MODEL_HELP),
    weights: Path = typer.Option(None), input_shape: str = typer.Option(None),
    trust_pickle: bool = typer.Option(False),
    ratio: float = typer.Option(0.3, help="fraction of channels to remove"),
    importance: str = typer.Option("l2", help="l2 | l1 | bn_scale | taylor | fpgm | random"),
    scope: str = typer.Option("local", help="local (same ratio per layer) | global"),
    round_to: int = typer.Option(None, help="round kept channels to this multiple"),
    format: str = typer.Option("onnx", help="export the pruned model to this format"),
    out_file: Path = typer.Option(Path("pruned.onnx"), "--out"),
) -> None:
    """Prune channels physically, export, verify against PyTorch, and print params/MACs before and after."""
    from edgeopt import export
    from edgeopt.analyze import count_macs, count_params
    from edgeopt.errors import ConfigError
    from edgeopt.techniques.prune import prune as do_prune

    if scope not in ("local", "global"):
        raise ConfigError(f"--scope must be local or global, got {scope!r}")
    loaded, example = _load(model, weights, input_shape, trust_pickle)
    small, record = do_prune(loaded.model, example, ratio=ratio, importance=importance, scope=scope,
                             round_to=round_to)
    path = export(small, example, format=format, out=out_file)
    out.print(f"params {count_params(loaded.model):,} -> {count_params(small):,}; "
              f"MACs {count_macs(loaded.model, example):,} -> {count_macs(small, example):,}; "
              f"{record['layers_changed']} layers changed; wrote {path}")


@app.command()
def export(
    model: str = typer.Option("demo", help=MODEL_HELP),
    weights: Path = typer.Option(None), input_shape: str = typer.Option(None),
    trust_pickle: bool = typer.Option(False),
    format: str = typer.Option("onnx", help="onnx | openvino"),
    precision: str = typer.Option("fp32"),
    out_file: Path = typer.Option(Path("model.onnx"), "--out"),
) -> None:
    """Export a model and verify the artifact's outputs against PyTorch."""
    from edgeopt import export as do_export

    loaded, example = _load(model, weights, input_shape, trust_pickle)
    path = do_export(loaded.model, example, format=format, precision=precision, out=out_file)
    out.print(f"wrote {path} (verified against PyTorch)")


@app.command()
def benchmark(
    artifact: Path = typer.Argument(..., help="an .onnx or OpenVINO .xml file"),
    runtime: str = typer.Option(None, help="onnxruntime | openvino; tensorrt with --device (default: by suffix)"),
    precision: str = typer.Option("fp32", help="precision to execute at (OpenVINO: fp32 | bf16)"),
    threads: int = typer.Option(None),
    input_shape: str = typer.Option(None),
    max_time: float = typer.Option(10.0, help="seconds at most for the timed runs"),
    device: str = typer.Option(None, help="measure on a remote `edgeopt agent`, e.g. http://jetson:8765"),
    token_file: Path = typer.Option(None, help="the agent's token file (with --device)"),
    dataset: str = typer.Option(None, help="with --device: top-1 on NAME.npz from the agent's --data-dir"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Measure an artifact's latency: warm-up, repeated runs until the median is stable, percentiles.

    With --device the artifact is uploaded to an `edgeopt agent` and measured there (the agent builds
    what the device runs, e.g. a TensorRT engine from ONNX on a Jetson)."""
    from edgeopt import benchmark as do_bench
    from edgeopt.bench import BenchConfig
    from edgeopt.models import parse_input_shape

    if device:
        r = _remote_benchmark(artifact, device, token_file, runtime, precision, threads,
                              parse_input_shape(input_shape), max_time, dataset)
    else:
        if token_file or dataset:
            from edgeopt.errors import ConfigError

            raise ConfigError("--token-file and --dataset only apply with --device")
        r = do_bench(artifact, runtime=runtime, precision=precision, threads=threads,
                     input_shape=parse_input_shape(input_shape), config=BenchConfig(max_time_s=max_time))
    if as_json:
        out.print_json(json.dumps(r.model_dump(mode="json")))
        return
    s = r.latency
    out.print(f"{artifact}: {r.runtime} {r.runtime_version} ({r.precision_executed}, {r.threads} threads) "
              f"p50 {s.p50:.3f} ms  p90 {s.p90:.3f}  p99 {s.p99:.3f}  mean {s.mean:.3f} ± {s.std:.3f}  n={s.n}")
    if device:
        acc = f", top-1 {r.accuracy:.2f}%" if r.accuracy is not None else ""
        out.print(f"measured on {r.device} via {device}{acc}", markup=False, highlight=False)


def _remote_benchmark(artifact: Path, device: str, token_file: Path | None, runtime: str | None, precision: str,
                      threads: int | None, input_shape, max_time: float, dataset: str | None):
    from edgeopt.agent import read_token_file
    from edgeopt.agent.client import measure_remote
    from edgeopt.errors import ConfigError

    if token_file is None:
        raise ConfigError("--device needs --token-file (the file holding the agent's token)")
    results = measure_remote({"artifact": artifact}, device, read_token_file(token_file), precision=precision,
                             runtime=runtime, threads=threads, input_shape=input_shape, max_time_s=max_time,
                             dataset=dataset)
    return results["artifact"]


@app.command()
def targets(as_json: bool = typer.Option(False, "--json")) -> None:
    """List target profiles (name, aliases, kind, runtimes, precisions)."""
    from rich.table import Table

    from edgeopt.targets import builtin_targets, list_targets

    profiles = list_targets()
    if as_json:
        out.print_json(json.dumps([p.model_dump() for p in profiles]))
        return
    reg = builtin_targets()
    table = Table(title="edgeopt targets")
    for h in ("name", "aliases", "kind", "arch", "runtimes", "precisions", "channel multiple"):
        table.add_column(h)
    for p in profiles:
        table.add_row(p.name, ", ".join(reg.aliases_of(p.name)), p.kind, p.arch, ", ".join(p.runtimes),
                      ", ".join(p.precisions), str(p.channel_multiple))
    out.print(table)
