"""One technique on its own: `edgeopt prune` (channels), `factorize` (low-rank), `depth` (residual blocks
removed), `supermask` (masks on random weights), each through the Python API's function (an Applied) and
one load -> apply -> export -> record -> print path; `architecture` (efficient families measured beside the
model)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path

import typer

import edgeopt
from edgeopt.cli.app import app
from edgeopt.cli.common import (
    INPUT_SHAPE_HELP,
    calibration_data,
    load_model_and_example,
    out,
    parse_list,
    refuse_overwriting_inputs,
)
from edgeopt.cli.optimize import MODEL_HELP


def run_technique(model: str, weights, input_shape, trust_pickle: bool, apply: Callable, summary: Callable, *,
                  format: str, out_file: Path, record_file: Path | None = None, data: str | None = None) -> None:
    """Every technique command: refuse to overwrite what it reads, load the model, `apply(loaded, example) ->
    Applied` (the API's function), export the model (verified by the exporter), write the record when asked,
    print the lines of `summary(loaded, example, result, path)`."""
    from edgeopt.report import write_atomic

    refuse_overwriting_inputs(model, weights, data, format, out_file, record_file)
    loaded, example = load_model_and_example(model, weights, input_shape, trust_pickle)
    result = apply(loaded, example)
    path = edgeopt.export(result.model, example, format=format, out=out_file)
    if record_file:
        write_atomic(record_file, json.dumps(result.record, indent=2))
    lines: Iterable[str] = summary(loaded, example, result, path)
    for line in lines:
        out.print(line)


def _size_change(before, after, example, params: bool = True) -> str:
    """`params a -> b; MACs c -> d` of the model before and after a technique (torch imported on use)."""
    from edgeopt.inputs.analyze import count_macs, count_params

    macs = f"MACs {count_macs(before, example):,} -> {count_macs(after, example):,}"
    return f"params {count_params(before):,} -> {count_params(after):,}; {macs}" if params else macs


@app.command()
def prune(
    model: str = typer.Option("demo", help=MODEL_HELP),
    weights: Path = typer.Option(None), input_shape: list[str] = typer.Option(None, help=INPUT_SHAPE_HELP),
    trust_pickle: bool = typer.Option(False),
    ratio: float = typer.Option(0.3, help="fraction of channels to remove"),
    importance: str = typer.Option(
        "l2", "--importance", "--method", help="l2 | l1 | bn_scale | fpgm | random | hrank (rank of the activated "
        "feature maps) | energy (mean squared activation of each channel's output maps) | recon (reconstruction "
        "error; with --reconstruct); hrank/energy/recon measure on --data, else on random inputs | taylor (needs "
        "labels: Python API)"),
    scope: str = typer.Option("local", help="local (same ratio per layer) | global (rank all groups together)"),
    max_layer_ratio: float = typer.Option(0.9, help="global scope: no layer loses more than this fraction"),
    round_to: int = typer.Option(None, help="keep whole blocks of this many channels (16 for AVX-512 and GPUs, "
                                 "8 for AVX2): kept channels rounded up to a multiple (smaller multiples for layers "
                                 "under 4 blocks wide)"),
    steps: int = typer.Option(1, help="iterative pruning in this many steps"),
    timeout: float = typer.Option(120.0, help="seconds for tracing + pruning; past it the rest is skipped"),
    format: str = typer.Option("onnx", help="export the pruned model to this format"),
    out_file: Path = typer.Option(Path("pruned.onnx"), "--out"),
    record_file: Path = typer.Option(None, "--record", help="write the per-layer record (JSON) here"),
    reconstruct: bool = typer.Option(False, help="re-solve the layers fed by pruned channels by least squares on "
                                                 "unlabeled calibration inputs (--data), so accuracy holds "
                                                 "without retraining; per-layer errors in --record"),
    data: str = typer.Option(None, help="inputs for --reconstruct, --importance recon, hrank and energy: 'digits' (the "
                                        "demo's, default for it), a .npy file shaped N,C,H,W, an image folder or "
                                        "module:function; without it hrank ranks random inputs"),
) -> None:
    """Prune channels physically, export, verify against PyTorch, and print params/MACs before and after.
    Layers that cannot be pruned safely are kept, with a reason per layer (see --record).
    Retraining-free: `--importance recon --reconstruct --data inputs.npy`."""
    from edgeopt.errors import ConfigError
    from edgeopt.inputs.model_io import Inputs
    from edgeopt.techniques.pruning.importance import NEEDS_INPUTS, importances

    _check_prune_flags(ratio=ratio, scope=scope, round_to=round_to, iterative_steps=steps,
                       max_layer_ratio=max_layer_ratio, timeout_s=timeout)
    if importance == "taylor":
        raise ConfigError("--importance taylor needs labelled batches: use edgeopt.prune(..., data=[(x, y)])")

    def apply(loaded, example):
        import torch

        shape = Inputs.of(example).first.shape  # sample inputs for hrank / energy / reconstruction: single input
        batches, source = None, None
        measured = importance == "recon" or importances().canonical(importance) in NEEDS_INPUTS
        if reconstruct or measured:
            batches = calibration_data(data, None, model, tuple(shape[1:]))
            if hasattr(batches, "inputs"):
                batches = list(batches.inputs())[:4]
        if measured and importance != "recon":
            source = "random" if batches is None else "data"
            if batches is None:
                batches = [torch.randn(8, *shape[1:]) for _ in range(2)]
            out.print(f"{importance}: measuring feature maps of " + (
                "RANDOM inputs (no --data given: pass real inputs for a meaningful ranking)" if source == "random"
                else f"{len(batches)} batches from --data"), markup=False, highlight=False)
        result = edgeopt.prune(loaded.model, example, ratio=ratio, method=importance, scope=scope,
                               round_to=round_to, iterative_steps=steps, max_layer_ratio=max_layer_ratio,
                               timeout_s=timeout, data=batches, reconstruct=reconstruct)
        if source:
            result.record["hrank_inputs" if importance in ("hrank", "rank") else "importance_inputs"] = source
        return result

    def summary(loaded, example, result, path):
        record = result.record
        yield (f"{_size_change(loaded.model, result.model, example)}; "
               f"{record['layers_changed']} layers changed, {len(record['skipped'])} skipped; wrote {path}")
        rec = record.get("reconstruction")
        if rec:
            yield (f"reconstruction: {len(rec['layers'])} layers re-solved in {rec['seconds']} s" if rec["ran"]
                   else f"reconstruction skipped: {rec['reason']}")

    run_technique(model, weights, input_shape, trust_pickle, apply, summary, format=format, out_file=out_file,
                  record_file=record_file, data=data)


# PruneConfig field -> the prune command's flag
_PRUNE_FLAGS = {"ratio": "--ratio", "scope": "--scope", "round_to": "--round-to", "iterative_steps": "--steps",
                "max_layer_ratio": "--max-layer-ratio", "timeout_s": "--timeout"}


def _check_prune_flags(**fields) -> None:
    """The flags checked against the bounds the pruning technique's config holds (the ones `optimize` obeys),
    before the model is loaded; one line naming the flag."""
    from pydantic import ValidationError

    from edgeopt.errors import ConfigError, one_line
    from edgeopt.techniques import PruneConfig

    try:
        PruneConfig(**fields)
    except ValidationError as e:
        loc = e.errors()[0].get("loc") or ("",)
        raise one_line(e, "edgeopt prune", where=_PRUNE_FLAGS.get(str(loc[0]), str(loc[0]))) from None
    if not math.isfinite(fields["timeout_s"]):
        raise ConfigError(f"--timeout must be a finite number of seconds, got {fields['timeout_s']}")


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
    def apply(loaded, example):
        return edgeopt.factorize(loaded.model, example, method=method, energy=energy, macs_reduction=macs_reduction,
                                 layers=parse_list(layers), rank_method="vbmf" if vbmf else "energy")

    def summary(loaded, example, result, path):
        record = result.record
        yield (f"{_size_change(loaded.model, result.model, example)}; "
               f"{record['layers_changed']} layers factorized, {len(record['skipped'])} skipped; wrote {path}")

    run_technique(model, weights, input_shape, trust_pickle, apply, summary, format=format, out_file=out_file,
                  record_file=record_file)


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
    resolve: bool = typer.Option(True, "--resolve/--no-resolve",
                                 help="re-solve the layers after the removed blocks to the original's outputs "
                                      "(kept only where that brings the outputs closer on data it was not "
                                      "fitted on)"),
) -> None:
    """Layer-level pruning: remove whole residual blocks (replaced by their skip connection), the ones whose
    removal costs least on held-out data, re-estimate BatchNorm statistics, then re-solve the layers after
    them by least squares where that helps. A model without residual blocks is exported unchanged, with the
    reason. Example: edgeopt depth --blocks 2 --record depth.json"""
    def apply(loaded, example):
        import torch

        real = calibration_data(data, None, model, tuple(example.shape[1:]))
        if model == "demo" and data is None:
            from edgeopt.inputs.data import digits_data

            real = digits_data()[1]  # the demo's labelled held-out split: costs are measured accuracy drops
        batches = (real.items[:8] if hasattr(real, "items")
                   else [torch.randn(8, *example.shape[1:]) for _ in range(2)])
        return edgeopt.depth_prune(loaded.model, example, batches, blocks=blocks, resolve=resolve)

    def summary(loaded, example, result, path):
        record = result.record
        yield from (f"skipped: {why}" for why in record["skipped"])
        if got := record.get("resolved"):
            yield (f"re-solved {got['solved']} later layers (output gap {got['gap_before']:.4g} -> "
                   f"{got['gap_after']:.4g} on data it was not fitted on)" if got["kept"]
                   else f"later layers not re-solved: {got['reason']}")
        yield (f"removed {len(record['removed'])} of {len(record['blocks_found'])} residual blocks "
               f"({', '.join(record['removed']) or 'none'}); "
               f"{_size_change(loaded.model, result.model, example, params=False)}; wrote {path}")

    run_technique(model, weights, input_shape, trust_pickle, apply, summary, format=format, out_file=out_file,
                  record_file=record_file, data=data)


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
    from edgeopt.errors import ConfigError

    if data != "digits":
        raise ConfigError(f"--data {data!r}: the supermask command takes digits; use edgeopt.supermask() for "
                          "your own labelled data")

    def apply(loaded, example):
        import torch

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
        return edgeopt.supermask(net, train, ratio=sparsity, epochs=epochs, method=method, eval_data=val)

    def summary(loaded, example, result, path):
        record = result.record
        yield (f"{method}: sparsity {record['measured_sparsity']:.2f}; top-1 {record['init_top1']:.1f}% "
               f"(weights alone) -> {record['top1']:.1f}% (masked); wrote {path}")

    run_technique(model, weights, input_shape, trust_pickle, apply, summary, format=format, out_file=out_file)


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
    from edgeopt.errors import ConfigError
    from edgeopt.report import write_atomic

    refuse_overwriting_inputs(model, weights, record_file=record_file)
    loaded, example = load_model_and_example(model, weights, input_shape, trust_pickle)
    train = val = None
    if from_scratch:
        from edgeopt.inputs.data import digits_data

        train, val = digits_data()
        if tuple(train.items[0][0].shape[1:]) != tuple(example.shape[1:]):
            raise ConfigError("--from-scratch here trains on the digits data (1x32x32); for other inputs use "
                              "edgeopt.efficient_architectures(model, x, train_data=...)")
    found = edgeopt.efficient_architectures(loaded.model, example, families=parse_list(families), train_data=train,
                                            eval_data=val, epochs=epochs, top=top, max_time_s=seconds)
    dec = found.decision
    for r in found.table:
        out.print(f"{r['name']:>20}  {r['p50_ms']:9.3f} ms  x{r['speedup']:<6}  params {r['params']:>10,}  "
                  f"MACs {r['macs']:>12,}{'  (re-parameterized)' if r['reparameterized'] else ''}")
    for name, t in found.trained.items():
        out.print(f"trained {name}: top-1 {t['top1']}% (your model {t['teacher_top1']}%)")
    out.print(f"architecture: {dec['decision']} — {dec['reason']}")
    if record_file:
        slim = {n: {k: v for k, v in t.items() if k != "model"} for n, t in found.trained.items()}
        write_atomic(record_file, json.dumps({"table": found.table, "trained": slim, "decision": dec}, indent=2))
