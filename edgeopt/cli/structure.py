"""Model-structure commands: `edgeopt factorize` (low-rank), `depth` (residual blocks removed), `supermask`
(masks on random weights) and `architecture` (efficient families measured beside the model)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from edgeopt.cli.app import app
from edgeopt.cli.common import out, refuse_overwriting_inputs
from edgeopt.cli.optimize import MODEL_HELP


def _export(net, example, format: str, out_file: Path, record_file: Path | None = None, record=None) -> Path:
    """Every structure command ends the same way: the changed model exported (and verified by the exporter),
    its record written next to it when asked."""
    from edgeopt import export
    from edgeopt.report import write_atomic

    path = export(net, example, format=format, out=out_file)
    if record_file:
        write_atomic(record_file, json.dumps(record, indent=2))
    return path


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
    from edgeopt.cli.commands import _load
    from edgeopt.cli.common import parse_list
    from edgeopt.inputs.analyze import count_macs, count_params
    from edgeopt.techniques.lowrank.factorize import factorize as do_factorize

    refuse_overwriting_inputs(model, weights, None, format, out_file, record_file)
    loaded, example = _load(model, weights, input_shape, trust_pickle)
    small, record = do_factorize(loaded.model, example, method=method, energy=energy, macs_reduction=macs_reduction,
                                 layers=parse_list(layers), rank_method="vbmf" if vbmf else "energy")
    path = _export(small, example, format, out_file, record_file, record)
    out.print(f"params {count_params(loaded.model):,} -> {count_params(small):,}; "
              f"MACs {count_macs(loaded.model, example):,} -> {count_macs(small, example):,}; "
              f"{record['layers_changed']} layers factorized, {len(record['skipped'])} skipped; wrote {path}")


@app.command()
def depth(
    model: str = typer.Option("demo", help=MODEL_HELP),
    weights: Path = typer.Option(None), input_shape: str = typer.Option(None),
    trust_pickle: bool = typer.Option(False),
    blocks: int = typer.Option(1, help="residual blocks to remove (the cheapest by measured cost)"),
    data: str = typer.Option(None, help="held-out inputs that score each block: digits | inputs.npy (N,C,H,W); "
                             "the demo uses digits (labelled: accuracy drop), others random inputs (output KL)"),
    format: str = typer.Option("onnx", help="export the result to this format"),
    out_file: Path = typer.Option(Path("depth.onnx"), "--out"),
    record_file: Path = typer.Option(None, "--record", help="write the per-block costs (JSON) here"),
) -> None:
    """Layer-level pruning: remove whole residual blocks (replaced by their skip connection), the ones whose
    removal costs least on held-out data, then re-estimate BatchNorm statistics. A model without residual
    blocks is exported unchanged, with the reason."""
    import torch

    from edgeopt.cli.commands import _calib_data, _load
    from edgeopt.inputs.analyze import count_macs
    from edgeopt.techniques.pruning.depth import depth_prune

    refuse_overwriting_inputs(model, weights, data, format, out_file, record_file)
    loaded, example = _load(model, weights, input_shape, trust_pickle)
    real = _calib_data(data, None, model, tuple(example.shape[1:]))
    if model == "demo" and data is None:
        from edgeopt.inputs.data import digits_data

        real = digits_data()[1]  # the demo's labelled held-out split: costs are measured accuracy drops
    batches = real.items[:8] if hasattr(real, "items") else [torch.randn(8, *example.shape[1:]) for _ in range(2)]
    small, record = depth_prune(loaded.model, example, batches, blocks=blocks)
    path = _export(small, example, format, out_file, record_file, record)
    for why in record["skipped"]:
        out.print(f"skipped: {why}")
    out.print(f"removed {len(record['removed'])} of {len(record['blocks_found'])} residual blocks "
              f"({', '.join(record['removed']) or 'none'}); MACs {count_macs(loaded.model, example):,} -> "
              f"{count_macs(small, example):,}; wrote {path}")


@app.command()
def supermask(
    model: str = typer.Option("demo", help=MODEL_HELP),
    weights: Path = typer.Option(None), input_shape: str = typer.Option(None),
    trust_pickle: bool = typer.Option(False),
    method: str = typer.Option("edge_popup", help="edge_popup (frozen random weights, trained scores) | "
                               "large_final | magnitude_increase (weights trained, mask put on the initial ones)"),
    sparsity: float = typer.Option(0.5, help="fraction of each layer's weights masked"),
    epochs: int = typer.Option(3, help="epochs of the mask search"),
    reinit: bool = typer.Option(True, "--reinit/--keep-weights",
                                help="search on freshly initialised random weights (seeded) or the weights given"),
    data: str = typer.Option("digits", help="labelled training data: digits (the demo's data)"),
    format: str = typer.Option("onnx", help="export the masked model to this format"),
    out_file: Path = typer.Option(Path("supermask.onnx"), "--out"),
) -> None:
    """Supermask: find a mask that makes random, untrained weights work; export the masked model
    (zeros where masked) and print top-1 with and without the mask on the held-out split."""
    import torch

    from edgeopt.cli.commands import _load
    from edgeopt.errors import ConfigError
    from edgeopt.techniques.sparsity.supermask import supermask as do_supermask

    if data != "digits":
        raise ConfigError(f"--data {data!r}: the supermask command takes digits; use edgeopt.supermask() for "
                          "your own labelled data")
    refuse_overwriting_inputs(model, weights, None, format, out_file)
    loaded, example = _load(model, weights, input_shape, trust_pickle)
    from edgeopt.inputs.data import digits_data

    train, val = digits_data()
    if tuple(train.items[0][0].shape[1:]) != tuple(example.shape[1:]):
        raise ConfigError(f"--data digits is shaped {tuple(train.items[0][0].shape[1:])}, the model takes "
                          f"{tuple(example.shape[1:])}")
    net = loaded.model
    if reinit:
        torch.manual_seed(0)
        for m in net.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
    masked, record = do_supermask(net, train, sparsity=sparsity, epochs=epochs, method=method, eval_data=val)
    path = _export(masked, example, format, out_file)
    out.print(f"{method}: sparsity {record['measured_sparsity']:.2f}; top-1 {record['init_top1']:.1f}% "
              f"(weights alone) -> {record['top1']:.1f}% (masked); wrote {path}")


@app.command()
def architecture(
    model: str = typer.Option("demo", help=MODEL_HELP),
    weights: Path = typer.Option(None), input_shape: str = typer.Option(None),
    trust_pickle: bool = typer.Option(False),
    families: str = typer.Option(None, help="comma-separated families (default: mobilenet_v3_small, "
                                 "mobilenet_v3_large, efficientnet_b0, regnet_x_400mf, ghostnet_100, mobileone_s0, "
                                 "repvgg_a0, convnext_atto)"),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="train the most promising families by "
                                      "distillation from your model on the digits data (demo-shaped models)"),
    epochs: int = typer.Option(3, help="--from-scratch: training epochs per family"),
    top: int = typer.Option(2, help="--from-scratch: how many families to train"),
    seconds: float = typer.Option(6.0, help="time for the interleaved latency measurement"),
    record_file: Path = typer.Option(None, "--record", help="write the table and decision (JSON) here"),
) -> None:
    """Efficient architecture: measure the latency of efficient families (random init, deploy form with
    structural re-parameterization) at your model's input size and outputs, next to your model. Switching
    needs training from scratch: without --from-scratch the decision says so, with the measured table."""
    from edgeopt.cli.commands import _load
    from edgeopt.cli.common import parse_list
    from edgeopt.errors import ConfigError
    from edgeopt.report import write_atomic
    from edgeopt.techniques.retraining.architecture import decision, latency_table, train_candidates

    refuse_overwriting_inputs(model, weights, record_file=record_file)
    loaded, example = _load(model, weights, input_shape, trust_pickle)
    rows = latency_table(loaded.model, example, families=parse_list(families), max_time_s=seconds)
    trained = {}
    if from_scratch:
        from edgeopt.inputs.data import digits_data

        train, val = digits_data()
        if tuple(train.items[0][0].shape[1:]) != tuple(example.shape[1:]):
            raise ConfigError("--from-scratch here trains on the digits data (1x32x32); for other inputs use "
                              "edgeopt.efficient_architectures(model, x, train_data=...)")
        trained = train_candidates(loaded.model, example, rows, train, val, epochs=epochs, top=top)
    dec = decision(rows, from_scratch, trained)
    for r in rows:
        out.print(f"{r['name']:>20}  {r['p50_ms']:9.3f} ms  x{r['speedup']:<6}  params {r['params']:>10,}  "
                  f"MACs {r['macs']:>12,}{'  (re-parameterized)' if r['reparameterized'] else ''}")
    for name, t in trained.items():
        out.print(f"trained {name}: top-1 {t['top1']}% (your model {t['teacher_top1']}%)")
    out.print(f"architecture: {dec['decision']} — {dec['reason']}")
    if record_file:
        slim = {n: {k: v for k, v in t.items() if k != "model"} for n, t in trained.items()}
        write_atomic(record_file, json.dumps({"table": rows, "trained": slim, "decision": dec}, indent=2))
