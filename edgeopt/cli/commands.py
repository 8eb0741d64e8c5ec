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
    importance: str = typer.Option(
        "l2", help="l2 | l1 | bn_scale | fpgm | random | hrank (feature-map rank on random inputs here; "
        "use the Python API with real data) | taylor (needs labels: Python API)"),
    scope: str = typer.Option("local", help="local (same ratio per layer) | global (rank all groups together)"),
    max_layer_ratio: float = typer.Option(0.9, help="global scope: no layer loses more than this fraction"),
    round_to: int = typer.Option(None, help="round kept channels to this multiple (e.g. 8 or 16 for the target)"),
    steps: int = typer.Option(1, help="iterative pruning in this many steps"),
    timeout: float = typer.Option(120.0, help="seconds for tracing + pruning; past it the rest is skipped"),
    format: str = typer.Option("onnx", help="export the pruned model to this format"),
    out_file: Path = typer.Option(Path("pruned.onnx"), "--out"),
    record_file: Path = typer.Option(None, "--record", help="write the per-layer record (JSON) here"),
) -> None:
    """Prune channels physically, export, verify against PyTorch, and print params/MACs before and after.
    Layers that cannot be pruned safely are kept, with a reason per layer (see --record)."""
    import torch

    from edgeopt import export
    from edgeopt.analyze import count_macs, count_params
    from edgeopt.errors import ConfigError
    from edgeopt.report import write_atomic
    from edgeopt.techniques.prune import prune as do_prune

    if scope not in ("local", "global"):
        raise ConfigError(f"--scope must be local or global, got {scope!r}")
    if importance == "taylor":
        raise ConfigError("--importance taylor needs labelled batches: use edgeopt.prune(..., data=[(x, y)])")
    loaded, example = _load(model, weights, input_shape, trust_pickle)
    data = [torch.randn(8, *example.shape[1:]) for _ in range(2)] if importance in ("hrank", "rank") else None
    small, record = do_prune(loaded.model, example, ratio=ratio, importance=importance, scope=scope,
                             round_to=round_to, iterative_steps=steps, max_layer_ratio=max_layer_ratio,
                             timeout_s=timeout, data=data)
    path = export(small, example, format=format, out=out_file)
    if record_file:
        write_atomic(record_file, json.dumps(record, indent=2))
    out.print(f"params {count_params(loaded.model):,} -> {count_params(small):,}; "
              f"MACs {count_macs(loaded.model, example):,} -> {count_macs(small, example):,}; "
              f"{record['layers_changed']} layers changed, {len(record['skipped'])} skipped; wrote {path}")


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
    runtime: str = typer.Option(None, help="onnxruntime | openvino (default: from the file suffix)"),
    precision: str = typer.Option("fp32", help="precision to execute at (OpenVINO: fp32 | bf16)"),
    threads: int = typer.Option(None),
    input_shape: str = typer.Option(None),
    max_time: float = typer.Option(10.0, help="seconds at most for the timed runs"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Measure an artifact's latency: warm-up, repeated runs until the median is stable, percentiles."""
    from edgeopt import benchmark as do_bench
    from edgeopt.bench import BenchConfig
    from edgeopt.models import parse_input_shape

    r = do_bench(artifact, runtime=runtime, precision=precision, threads=threads,
                 input_shape=parse_input_shape(input_shape), config=BenchConfig(max_time_s=max_time))
    if as_json:
        out.print_json(json.dumps(r.model_dump(mode="json")))
        return
    s = r.latency
    out.print(f"{artifact}: {r.runtime} {r.runtime_version} ({r.precision_executed}, {r.threads} threads) "
              f"p50 {s.p50:.3f} ms  p90 {s.p90:.3f}  p99 {s.p99:.3f}  mean {s.mean:.3f} ± {s.std:.3f}  n={s.n}")


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
