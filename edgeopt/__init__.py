"""edgeopt: make PyTorch vision models fit their deployment target.

Python API (the CLI calls the same functions). Heavy libraries are imported on use, so that
`import edgeopt` and `edgeopt --help` stay fast."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    import torch

    from edgeopt.config import RunConfig
    from edgeopt.report import BenchmarkResult, Report

__all__ = ["__version__", "optimize", "load_config", "prune", "factorize", "prune_sensitivity", "export", "benchmark",
           "load_model", "list_targets", "distill", "prune_at_init", "sparsify", "imp", "qat",
           "depth_prune", "supermask", "efficient_architectures", "slim"]


def optimize(model=None, example_inputs=None, *, config: RunConfig | None = None,
             eval_data=None, calib_data=None, train_data=None, **options) -> Report | None:
    """Decide, compress, export and measure; returns the Report (also written to out_dir/report.json, with the
    run's config in out_dir/run.yaml), or None on the ranks > 0 of a torchrun launch (they only join rank 0's
    fine-tuning).

    `model` is an nn.Module or a spec string ("demo" (default), "torchvision:resnet18?num_classes=10",
    "file.py:factory", "model.pt2"). `eval_data`/`calib_data`/`train_data`: iterables of tensors or
    (tensor, label); or `data="digits"`, an image folder, or "module:function" (with `data_options=
    {"image_size", "mean", "std", "val_split", ...}` for folders). `config`: a RunConfig (e.g.
    `edgeopt.load_config("out/run.yaml")`); `options` override its fields by name: target, goal,
    max_accuracy_drop, retrain, from_scratch, latency_budget_ms, size_budget_mb, time_budget_s, techniques,
    runtimes, weights, trust_pickle, input_shape, data, data_options, metric, epochs, sensitivity, threads,
    bench_time_s, seed, calib_random, device, token_file, out_dir, cache (or resume); an unknown name is a
    ConfigError with did-you-mean. In-memory objects: `bench_config` (a BenchConfig), `progress`,
    `device_token`, `metric=fn` (a callable). `retrain=True` fine-tunes each compressed candidate with Hinton
    distillation from `model` (needs training data); `from_scratch=True` (implies retrain) allows pruning at
    initialisation; `sensitivity=True` measures per-layer pruning sensitivity first
    (report.model.sensitivity). Finished candidates are cached in out_dir and reused by a rerun unless
    `cache=False`. `example_inputs`: a tensor, a tuple or a dict of tensors (named inputs); outputs may be
    tuples or nested dicts of tensors. Targets may be class labels (top1), masks (miou) or anything your
    `metric=fn(outputs, targets) -> percent` reads (e.g. box lists for mAP); without targets, fidelity.
    """
    from edgeopt.engine.pipeline import optimize as _optimize

    return _optimize(model, example_inputs, config=config, eval_data=eval_data, calib_data=calib_data,
                     train_data=train_data, **options)


def load_config(path: str | Path) -> RunConfig:
    """A RunConfig from a YAML file (`out/run.yaml` of an earlier run, or one written by hand)."""
    from edgeopt.config import load_config as _load

    return _load(path)


def prune(model, example_inputs, ratio: float = 0.3, importance: str = "l2",
          scope: str = "local", round_to: int | None = None, iterative_steps: int = 1, data=None,
          max_layer_ratio: float = 0.9, layer_ratios: dict[str, float] | None = None, timeout_s: float = 120,
          reconstruct: bool = False):
    """A physically smaller copy of `model` (every output keeps its shape; `example_inputs` is a tensor, a
    tuple or a dict of tensors). `importance`: l2 | l1 | bn_scale | taylor (needs labelled
    `data=[(x, y), ...]`) | hrank (needs `data` inputs) | fpgm | random | recon (needs `data` inputs).
    `reconstruct=True` re-solves the layers fed by pruned channels on `data` (no retraining). What changed
    per layer, and what was skipped and why, is in `result.edgeopt_record`."""
    from edgeopt.techniques.pruning.prune import prune as _prune

    small, record = _prune(model, example_inputs, ratio=ratio, importance=importance, scope=scope,
                           round_to=round_to, iterative_steps=iterative_steps, data=data,
                           max_layer_ratio=max_layer_ratio, layer_ratios=layer_ratios, timeout_s=timeout_s,
                           reconstruct=reconstruct)
    small.edgeopt_record = record
    return small


def factorize(model, example_inputs, method: str = "tucker", energy: float | None = 0.9,
              macs_reduction: float | None = None, layers: list[str] | None = None, rank_method: str = "energy"):
    """A low-rank factorized copy of `model`: method tucker | cp (k x k convs) | svd (Linears); ranks by
    `energy` kept, by `rank_method="vbmf"`, or by a target `macs_reduction` per layer. The record per
    layer (ranks, MACs before/after, skipped with reason) is in `result.edgeopt_record`."""
    from edgeopt.techniques.lowrank.factorize import factorize as _factorize

    small, record = _factorize(model, example_inputs, method=method, energy=energy,
                               macs_reduction=macs_reduction, layers=layers, rank_method=rank_method)
    small.edgeopt_record = record
    return small


def prune_sensitivity(model, example_inputs: torch.Tensor, evaluate, ratio: float = 0.5,
                      importance: str = "l2", max_groups: int | None = None, data=None) -> dict:
    """Per-layer sensitivity: accuracy drop when each prunable layer's group is pruned alone at `ratio`.
    `evaluate(model) -> accuracy`. Returns {"baseline", "layers": {name: drop}, "layer_ratios": {...}};
    pass `layer_ratios` on to `prune(...)` so that sensitive layers are pruned less."""
    from edgeopt.techniques.pruning.sensitivity import sensitivity

    return sensitivity(model, example_inputs, evaluate, ratio=ratio, importance=importance,
                       max_groups=max_groups, data=data)


def export(model, example_inputs, format: str = "onnx", precision: str = "fp32",
           out: str | Path = "model.onnx", calib_data=None, verify: bool = True, dynamic_batch: bool = False) -> Path:
    """Export and verify every output against PyTorch (VerificationError on mismatch). Returns the artifact
    path. `example_inputs`: a tensor, a tuple of tensors or a dict name -> tensor (the input names); the
    outputs (tensors, tuples, nested dicts) keep their names ("output", "0", "boxes", "scores.logits").
    `dynamic_batch`: the first axis of every input and output may vary (ONNX, OpenVINO)."""
    from edgeopt.formats import export_verified

    result, _ = export_verified(model, example_inputs, format, Path(out), precision=precision,
                                calib=calib_data, verify=verify,
                                options={"dynamic_batch": True} if dynamic_batch else None)
    return result.path


def benchmark(path: str | Path, runtime: str | None = None, precision: str = "fp32",
              threads: int | None = None, input_shape: tuple[int, ...] | None = None,
              config=None) -> BenchmarkResult:
    """Measure an artifact's latency on a runtime: warm-up, repetitions until the median is stable."""
    from edgeopt.measure.artifacts import benchmark_artifact

    return benchmark_artifact(Path(path), runtime=runtime, precision=precision, threads=threads,
                              input_shape=input_shape, config=config)


def load_model(spec="demo", weights=None, input_shape=None, trust_pickle: bool = False):
    """Load a model spec; returns edgeopt.inputs.models.LoadedModel (model, source, input_shape, info)."""
    from edgeopt.inputs.models import load_model as _load

    return _load(spec, weights=weights, input_shape=input_shape, trust_pickle=trust_pickle)


def list_targets():
    from edgeopt.targets import list_targets as _list

    return _list()


def distill(student, teacher, train_data, kind: str = "response", epochs: int = 3, eval_data=None, **fit_kwargs):
    """Fine-tune `student` (in place) from `teacher`: kind "response" | "feature" | "relation" or a
    combination like "response+feature". Returns edgeopt.training.DistillResult (kind used, teacher and
    student top-1 before/after on labelled `eval_data`, share of the gap recovered)."""
    from edgeopt.training import distill as _distill

    return _distill(student, teacher, train_data, kind=kind, epochs=epochs, eval_data=eval_data, **fit_kwargs)[1]


def prune_at_init(model, data, method: str = "snip", sparsity: float = 0.8):
    """Attach SNIP / GraSP / SynFlow masks of `sparsity` to a freshly initialised `model` (in place), to be
    trained from scratch (edgeopt.training.fit keeps masked weights at zero). Returns the record."""
    from edgeopt.techniques.sparsity.prune_at_init import prune_at_init as _pai

    return _pai(model, data, method=method, sparsity=sparsity)[1]


def sparsify(model, sparsity: float = 0.5, pattern: str = "global"):
    """Unstructured pruning of a copy: global magnitude (`pattern="global"`) or 2:4 semi-structured.
    Returns (sparse model, record with the compressed size on disk). No speedup on dense CPU kernels."""
    from edgeopt.techniques import TECHNIQUES

    tech = TECHNIQUES.get("unstructured")
    return tech.apply_fn()(model, None, tech.make_config({"sparsity": sparsity, "pattern": pattern}))


def imp(model, train_data, sparsity: float = 0.8, rounds: int = 3, epochs: int = 3, rewind: str = "lr",
        rewind_epoch: int = 1, eval_data=None, **fit_kwargs):
    """Iterative magnitude pruning with rewinding ("init" = lottery ticket, "epoch" = weights of epoch
    `rewind_epoch`, "lr" = learning-rate rewinding). Returns (pruned copy with masks, IMPResult)."""
    from edgeopt.techniques.sparsity.lottery import imp as _imp
    from edgeopt.training import fit, top1

    eval_fn = (lambda m: top1(m, eval_data)) if eval_data is not None else None
    return _imp(model, train_data, fit, target_sparsity=sparsity, rounds=rounds, epochs=epochs, rewind=rewind,
                rewind_epoch=rewind_epoch, eval_fn=eval_fn, **fit_kwargs)


def slim(model, example_inputs, train_data, ratio: float = 0.3, epochs: int = 2, strength: float = 0.1,
         lr: float = 0.01, scope: str = "global"):
    """Network Slimming: a copy of `model` fine-tuned `epochs` with `strength * sum|BN gamma|` added to the loss
    (distilled from `model`, so labels are optional), then pruned by BN scale at `ratio`. Fine-tune the result
    with `distill`. A model without BatchNorm is a ConfigError. The record (mean |gamma| before/after) is in
    `result.edgeopt_record`."""
    from edgeopt.techniques import TECHNIQUES
    from edgeopt.techniques.pruning.slimming import apply_slimming

    config = TECHNIQUES.get("slimming").make_config({"ratio": ratio, "epochs": epochs, "strength": strength,
                                                     "lr": lr, "scope": scope})
    small, record = apply_slimming(model, example_inputs, config, teacher=model, train_data=train_data)
    small.edgeopt_record = record
    return small


def qat(model, train_data, epochs: int = 2, lr: float = 0.005, distill: bool = True, **kwargs):
    """Quantization-aware training of a copy; export the result with `export(..., format="onnx")` to get
    an INT8 Q/DQ model. With `distill`, the float model teaches the quantized one."""
    from edgeopt.techniques.retraining.qat import qat as _qat
    from edgeopt.training import fit

    if distill:
        kwargs.setdefault("teacher", model)
    return _qat(model, train_data, fit, epochs=epochs, lr=lr, **kwargs)


def depth_prune(model, example_inputs: torch.Tensor, data, blocks: int = 1, train_data=None, epochs: int = 0,
                lr: float = 0.01):
    """Layer-level pruning: a copy without the `blocks` residual blocks whose removal costs least, measured
    on held-out `data` (accuracy drop when labelled, output KL otherwise), BatchNorm re-estimated, fine-tuned
    from `model` for `epochs` on `train_data` when given. A model without residual blocks comes back
    unchanged with the reason in `result.edgeopt_record["skipped"]`."""
    from edgeopt.techniques.pruning.depth import depth_prune as _depth

    small, record = _depth(model, example_inputs, data, blocks=blocks, train_data=train_data, epochs=epochs, lr=lr)
    small.edgeopt_record = record
    return small


def supermask(model, data, sparsity: float = 0.5, epochs: int = 3, method: str = "edge_popup",
              eval_data=None, lr: float | None = None, seed: int = 0, return_record: bool = False):
    """A supermask for `model`'s (random) weights, searched on labelled `data`: method "edge_popup" (weights
    frozen, scores trained), "large_final" or "magnitude_increase" (weights trained, mask applied to the
    initial ones). Returns the masked copy (its own initial weights, zeros where masked; the record with
    measured sparsity and top-1 on `eval_data` is in `result.edgeopt_record`), or (copy, record)."""
    from edgeopt.techniques.sparsity.supermask import supermask as _supermask

    masked, record = _supermask(model, data, sparsity=sparsity, epochs=epochs, method=method, lr=lr,
                                eval_data=eval_data, seed=seed)
    masked.edgeopt_record = record
    return (masked, record) if return_record else masked


def efficient_architectures(model, example_inputs: torch.Tensor, families: list[str] | None = None,
                            train_data=None, eval_data=None, epochs: int = 3, top: int = 2,
                            max_time_s: float = 6.0) -> dict:
    """Measure efficient families (MobileNetV3, EfficientNet, RegNet, GhostNet, MobileOne, RepVGG,
    ConvNeXt-atto; random init, deploy form) next to `model` at its input size and number of outputs.
    With `train_data`, the `top` most promising are trained by distillation from `model` (from scratch).
    Returns {"table": rows with p50_ms, "decision": {...}, "trained": {family: {top1, p50_ms, model}}}."""
    from edgeopt.techniques.retraining.architecture import decision, latency_table, train_candidates

    rows = latency_table(model, example_inputs, families=families, max_time_s=max_time_s)
    trained = (train_candidates(model, example_inputs, rows, train_data, eval_data, epochs=epochs, top=top)
               if train_data is not None else {})
    return {"table": rows, "trained": trained, "decision": decision(rows, train_data is not None, trained)}
