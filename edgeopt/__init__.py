"""edgeopt: make PyTorch vision models fit their deployment target.

Python API (the CLI calls the same functions): `optimize` returns a Report; `apply` and the named techniques
(edgeopt/api.py) return an Applied (model, record); `export` the artifact's path, `benchmark` a
BenchmarkResult, `load_model` a LoadedModel, `list_targets` the TargetProfiles. Heavy libraries are imported
on use, so that `import edgeopt` and `edgeopt --help` stay fast."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

__version__ = "0.1.0"

from edgeopt.formats.vendor_telemetry import keep_out

keep_out()  # before anything imports openvino or NNCF (edgeopt/formats/vendor_telemetry.py says why)


from edgeopt.api import (  # noqa: E402  (after keep_out, which must run first)
    Applied,
    Architectures,
    Sensitivity,
    apply,
    depth_prune,
    distill,
    efficient_architectures,
    factorize,
    imp,
    prune,
    prune_at_init,
    prune_sensitivity,
    qat,
    slim,
    sparsify,
    supermask,
)

if TYPE_CHECKING:
    from edgeopt.config import RunConfig
    from edgeopt.report import BenchmarkResult, Report

__all__ = ["__version__", "optimize", "load_config", "apply", "Applied", "Sensitivity", "Architectures", "prune",
           "factorize", "prune_sensitivity", "export", "benchmark", "load_model", "list_targets", "distill",
           "prune_at_init", "sparsify", "imp", "qat", "depth_prune", "supermask", "efficient_architectures", "slim"]


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
    runtimes, weights, trust_pickle, input_shape, data, data_options, metric, epochs, train_precision,
    sensitivity, threads, bench_time_s, seed, calib_random, serve_batch and streams (goal throughput),
    dynamic_batch, device (one
    agent URL or a list: a fleet), token_file, cluster ("local:N" or "ray://HOST:PORT"), out_dir, verbose,
    cache (or resume); an unknown name is a
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


def export(model, example_inputs, format: str = "onnx", precision: str = "fp32",
           out: str | Path = "model.onnx", calib_data=None, verify: bool = True, dynamic_batch: bool = False) -> Path:
    """Export and verify every output against PyTorch (VerificationError on mismatch). Returns the artifact
    path. `example_inputs`: a tensor, a tuple of tensors or a dict name -> tensor (the input names); the
    outputs (tensors, tuples, nested dicts) keep their names ("output", "0", "boxes", "scores.logits").
    `dynamic_batch`: the first axis of every input and output may vary (ONNX, OpenVINO)."""
    from edgeopt.api import model_of
    from edgeopt.formats import export_verified

    result, _ = export_verified(model_of(model), example_inputs, format, Path(out), precision=precision,
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
    """The built-in target profiles (edgeopt.targets.TargetProfile), this machine's as `local`."""
    from edgeopt.targets import list_targets as _list

    return _list()
