"""`edgeopt factorize`: low-rank factorization on its own (Tucker-2 / CP convs, SVD linears)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from edgeopt.cli.app import app
from edgeopt.cli.common import out
from edgeopt.cli.optimize import MODEL_HELP


@app.command()
def factorize(
    model: str = typer.Option("demo", help=MODEL_HELP),
    weights: Path = typer.Option(None), input_shape: list[str] = typer.Option(None),
    trust_pickle: bool = typer.Option(False),
    method: str = typer.Option("tucker", help="tucker (k x k convs) | cp (k x k convs) | svd (Linear layers)"),
    energy: float = typer.Option(0.9, help="singular-value energy kept per layer (rank selection)"),
    macs_reduction: float = typer.Option(None, help="instead of --energy: cut each layer's MACs by this fraction"),
    vbmf: bool = typer.Option(False, "--vbmf", help="choose ranks by VBMF (noise-level estimate) instead"),
    layers: str = typer.Option(None, help="comma-separated layer names (default: every layer where it pays)"),
    format: str = typer.Option("onnx", help="export the factorized model to this format"),
    out_file: Path = typer.Option(Path("factorized.onnx"), "--out"),
    record_file: Path = typer.Option(None, "--record", help="write the per-layer record (JSON) here"),
) -> None:
    """Factorize layers into low-rank ones physically, export, verify against PyTorch, print MACs before/after.
    Layers where factorization does not reduce MACs (1x1, depthwise, small) are skipped with the reason."""
    from edgeopt import export
    from edgeopt.cli.commands import _load
    from edgeopt.cli.common import parse_list
    from edgeopt.inputs.analyze import count_macs, count_params
    from edgeopt.report import write_atomic
    from edgeopt.techniques.factorize import factorize as do_factorize

    loaded, example = _load(model, weights, input_shape, trust_pickle)
    small, record = do_factorize(loaded.model, example, method=method, energy=energy, macs_reduction=macs_reduction,
                                 layers=parse_list(layers), rank_method="vbmf" if vbmf else "energy")
    path = export(small, example, format=format, out=out_file)
    if record_file:
        write_atomic(record_file, json.dumps(record, indent=2))
    out.print(f"params {count_params(loaded.model):,} -> {count_params(small):,}; "
              f"MACs {count_macs(loaded.model, example):,} -> {count_macs(small, example):,}; "
              f"{record['layers_changed']} layers factorized, {len(record['skipped'])} skipped; wrote {path}")
