"""The one pipeline: prepare (context -> target -> model -> analyze -> data; shared with `edgeopt plan`) ->
plan -> search (screen structures by bisection against held-out accuracy, export the survivors at every
precision, verify, evaluate on the runtime) -> measure latency (interleaved) -> select -> report.
The CLI and the Python API both build a RunConfig and call `run`."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from edgeopt import __version__
from edgeopt.config import RunConfig, RunContext
from edgeopt.decide.plan import plan as make_plan
from edgeopt.decide.select import select
from edgeopt.engine import distributed
from edgeopt.engine.cache import CandidateCache, data_hash, model_hash
from edgeopt.engine.measuring import latency, measure_all
from edgeopt.engine.search import Search
from edgeopt.errors import ConfigError, DataError
from edgeopt.formats import BACKENDS, backend_for, installed_runtimes
from edgeopt.inputs.analyze import analyze
from edgeopt.inputs.data import Batches, DataSplits, as_batches, digits_data, from_function, image_folder
from edgeopt.inputs.models import LoadedModel, load_model
from edgeopt.measure.accuracy import score, torch_predictions
from edgeopt.measure.timing import BenchConfig
from edgeopt.registry import Registry
from edgeopt.report import (
    Candidate,
    Decision,
    Report,
    ReportContext,
    ReportModel,
    ReportTarget,
    write_atomic,
    write_report,
)
from edgeopt.report.html import write_html_report
from edgeopt.targets import TargetProfile, detect_local, load_target
from edgeopt.targets.host import environment
from edgeopt.techniques import TECHNIQUES
from edgeopt.training import ddp


class Progress:
    """No-op progress sink; the CLI passes a rich-backed one."""

    def stage(self, name: str, total: int | None = None) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def log(self, message: str) -> None: ...


def resolve_data(spec: str, data, calib_data, train_data, eval_data, sample_shape, num_classes,
                 data_options: dict | None = None) -> DataSplits:
    """--data digits | image folder | module:function, or the API's iterables; validated one batch at a time."""
    opts = data_options or {}
    if data == "digits" or (data is None and spec == "demo" and calib_data is None and eval_data is None):
        calib, ev = digits_data()
        return DataSplits(calib, calib, ev, "digits")  # fine-tuning and calibration use the training split
    if data is not None:
        data = str(data)
        if os.path.isdir(data):
            splits = image_folder(data, opts.get("image_size") or tuple(sample_shape[1:]), sample_shape[0],
                                  tuple(opts.get("mean") or (0.5,)), tuple(opts.get("std") or (0.5,)),
                                  val_split=opts.get("val_split", 0.2), seed=opts.get("seed", 0))
            calib_data, train_data, eval_data = splits.calib, splits.train, splits.eval
            source = splits.source
        elif ":" in data:
            got = from_function(data)
            calib_data, train_data, eval_data = got.get("calib"), got.get("train"), got.get("eval")
            source = f"function:{data}"
        else:
            raise ConfigError(f"--data {data!r} is neither 'digits', an image folder, nor module:function")
    else:
        source = "user" if (calib_data is not None or eval_data is not None or train_data is not None) else None
    return DataSplits(as_batches(calib_data, "calibration data", sample_shape, num_classes),
                      as_batches(train_data, "training data", sample_shape, num_classes),
                      as_batches(eval_data, "evaluation data", sample_shape, num_classes), source)


def _fidelity_inputs(shape: tuple[int, ...], n: int, seed: int) -> Batches:
    gen = torch.Generator().manual_seed(seed + 1)
    return Batches([(torch.randn((n, *shape[1:]), generator=gen), None)])


@dataclass
class Prepared:
    """What `plan` and `optimize` both start from: the validated context, the target, the loaded and analysed
    model, and the resolved data (whose presence, not a guess, tells the planner what calibration and
    fine-tuning can use)."""

    config: RunConfig
    context: RunContext
    profile: TargetProfile
    local: TargetProfile
    loaded: LoadedModel
    example: torch.Tensor
    summary: object  # ModelSummary
    splits: DataSplits


def check_names(context: RunContext) -> RunContext:
    """Unknown technique or runtime names are errors with did-you-mean, before anything is loaded."""
    for t in context.techniques or ():
        TECHNIQUES.canonical(t)
    if not context.runtimes:
        return context
    runtimes: Registry = Registry("runtime")
    for _, b in BACKENDS.items():
        if b.runtime not in runtimes:
            runtimes.register(b.runtime, b)
    return context.model_copy(update={"runtimes": [runtimes.canonical(r) for r in context.runtimes]})


def prepare(config: RunConfig, model=None, example: torch.Tensor | None = None, eval_data=None, calib_data=None,
            train_data=None, progress: Progress | None = None) -> Prepared:
    """context -> target -> model -> analyze -> data. `model`/`example`/`*_data`: objects the Python API
    passes in memory (they take the place of inputs.model / inputs.data)."""
    progress = progress or Progress()
    context = check_names(config.context())
    profile = load_target(context.target)
    local = detect_local()
    inputs = config.inputs
    spec = model if model is not None else inputs.model
    if spec is None:
        raise ConfigError("no model: give --model (inputs.model in a config file) or pass the model object")
    progress.stage("loading model")
    shape = tuple(example.shape) if example is not None else (tuple(inputs.input_shape) if inputs.input_shape
                                                              else None)
    loaded = load_model(spec, weights=inputs.weights, input_shape=shape, trust_pickle=inputs.trust_pickle)
    example = example if example is not None else torch.randn(*loaded.input_shape)
    progress.stage("analyzing")
    summary = analyze(loaded.model, loaded.input_shape)
    options = {**inputs.data_options.model_dump(), "seed": context.seed}
    splits = resolve_data(spec if isinstance(spec, str) else "module", inputs.data, calib_data, train_data,
                          eval_data, tuple(example.shape[1:]), summary.num_outputs, options)
    return Prepared(config, context, profile, local, loaded, example, summary, splits)


def plan_for(prep: Prepared, sensitivity: dict | None = None):
    """The planner on a prepared run (what `edgeopt plan` prints and `optimize` searches)."""
    return make_plan(prep.context, prep.profile, prep.summary, prep.local, installed_runtimes(),
                     has_calib_data=prep.splits.calib is not None, has_train_data=prep.splits.train is not None,
                     precisions_of_format={n: b.precisions for n, b in BACKENDS.items()}, sensitivity=sensitivity)


def optimize(model=None, example_inputs: torch.Tensor | None = None, *, config: RunConfig | None = None,
             eval_data=None, calib_data=None, train_data=None, progress: Progress | None = None,
             bench_config: BenchConfig | None = None, device_token: str | None = None, **flat) -> Report | None:
    """The Python API's form: flat options (`target=`, `max_accuracy_drop=`, `epochs=`, ...) set on `config`
    (default: RunConfig()), validated (unknown ones are errors with did-you-mean), then `run`."""
    if model is not None:
        flat["model"] = model if isinstance(model, str) else None
    flat = {k: str(v) if k in ("out_dir", "weights", "token_file") and v is not None else v for k, v in flat.items()}
    config = (config or RunConfig()).with_flat(**flat)
    return run(config, model=None if model is None or isinstance(model, str) else model, example=example_inputs,
               eval_data=eval_data, calib_data=calib_data, train_data=train_data, progress=progress,
               bench_config=bench_config, device_token=device_token)


def run(config: RunConfig, model=None, example: torch.Tensor | None = None, eval_data=None, calib_data=None,
        train_data=None, progress: Progress | None = None, bench_config: BenchConfig | None = None,
        device_token: str | None = None) -> Report | None:
    """The one optimize (see the module docstring). Under torchrun (WORLD_SIZE > 1) only rank 0 searches,
    exports, measures and writes the report, and only it returns the Report; the other ranks join the DDP
    fine-tuning of each structure it builds and return None."""
    t_start = time.perf_counter()
    progress = progress or Progress()
    out_dir = Path(config.output.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} exists and is not a directory")
    threads = config.measure.threads or os.cpu_count()
    torch.set_num_threads(threads)
    torch.manual_seed(config.measure.seed)
    prep = prepare(config, model, example, eval_data, calib_data, train_data, progress)
    if prep.context.retrain and prep.splits.train is None:
        raise DataError("--retrain needs training data: pass --data (image folder, module:function returning "
                        "'train', or digits) or train_data=..., or use --no-retrain")
    rank, world_size = ddp.world()  # (0, 1) unless torchrun started this with WORLD_SIZE > 1
    if world_size > 1:
        distributed.share_cores(prep.context.threads)
    if rank > 0:  # a follower: only joins rank 0's DDP fine-tuning; exports, measures and writes nothing
        distributed.follow(prep.loaded.model, prep.example, prep.splits)
        return None
    # saved before the search, so an interrupted run can be resumed with --config OUT/run.yaml
    used = config if model is None else config.model_copy(update={"inputs": config.inputs.model_copy(
        update={"model": None})})
    write_atomic(out_dir / "run.yaml", used.to_yaml())
    report, search, the_plan = _search(prep, out_dir, threads, config.output.cache, progress, t_start)
    bench_config = bench_config or BenchConfig(max_time_s=config.measure.bench_time_s)
    measure_all(report, search.sessions, the_plan.measure_locally, prep, out_dir, config, bench_config, device_token,
                progress)
    base = next((c for c in report.candidates if c.id == the_plan.baseline_id), None)
    report.candidates = [c for c in report.candidates if c.id != the_plan.baseline_id]
    report.baseline = base
    select(report, prep.context)
    _publish_chosen(report, out_dir)
    if not the_plan.measure_locally:  # the artifact + the exact build/run command for the device
        from edgeopt.report.bundle import write_bundle

        write_bundle(report, out_dir, prep.profile)
    report.model.cache_hits = sum(1 for c in [base, *report.candidates] if c is not None and c.from_cache)
    report.wall_time_s = round(time.perf_counter() - t_start, 2)
    write_report(report, out_dir)
    write_html_report(report, out_dir)  # report.png, report.md with the plot, self-contained report.html
    return report


def _search(prep: Prepared, out_dir: Path, threads: int, resume: bool, progress: Progress, t_start: float):
    """Plan, then search (rank 0; with followers under torchrun, released however the search ends)."""
    context, splits, net, example = prep.context, prep.splits, prep.loaded.model, prep.example
    _, world_size = ddp.world()
    leader = distributed.Leader() if world_size > 1 else None
    try:
        fidelity = splits.eval is None or not splits.eval.labelled
        eval_b = splits.eval if splits.eval is not None else _fidelity_inputs(prep.loaded.input_shape, 256,
                                                                              context.seed)
        batch = prep.loaded.input_shape[0]
        reference = torch_predictions(net, eval_b, batch)
        sens = (_sensitivity(net, example, eval_b, batch, reference if fidelity else None, progress)
                if context.sensitivity else None)
        the_plan = plan_for(prep, sensitivity=sens["layers"] if sens else None)
        report = _new_report(prep, the_plan, threads, sens)
        cache = CandidateCache(out_dir, enabled=resume)
        search = Search(
            plan=the_plan, context=context, net=net, example=example, splits=splits, eval_b=eval_b, batch=batch,
            reference=reference if fidelity else None,
            base_torch_acc=score(reference, eval_b, reference)[0], out_dir=out_dir, threads=threads,
            cache=cache, cache_parts=(__version__, model_hash(net), data_hash(eval_b), data_hash(splits.calib),
                                      data_hash(splits.train) if context.retrain else None, context.seed),
            progress=progress, t_start=t_start, announce=leader,
            quick_latency=lambda cands: latency(
                cands, search.sessions, the_plan.measure_locally, prep.profile, example,
                BenchConfig(warmup_runs=3, warmup_s=0.0, min_runs=10, max_time_s=0.3)))
        report.candidates = search.run()
    finally:
        if leader is not None:  # however the search ended, the followers must not wait for it forever
            leader.close()
    report.model.search = search.summary()
    report.decisions += search.decisions  # taken on measurements (e.g. QAT only where PTQ broke the budget)
    return report, search, the_plan


def _new_report(prep: Prepared, the_plan, threads: int, sens: dict | None) -> Report:
    loaded, splits = prep.loaded, prep.splits
    model = ReportModel(**{"source": loaded.source, "input_shape": list(loaded.input_shape),
                           **prep.summary.model_dump(), **{f"info_{k}": v for k, v in loaded.info.items()}})
    model.plan_notes = the_plan.notes
    model.sensitivity = sens
    report = Report(edgeopt_version=__version__, context=ReportContext(**prep.context.model_dump()),
                    target=ReportTarget(**prep.profile.model_dump()),
                    environment={**environment(threads), "data": splits.source}, model=model,
                    decisions=the_plan.decisions)
    if prep.context.calib_random and splits.calib is None:
        report.environment["calibration"] = "random"
        report.decisions.append(Decision(technique="calibration", decision="applied", reason=(
            "--calib random: INT8 scales come from random inputs and are meaningless; the measured accuracy "
            "of each int8 candidate shows what that costs")))
    model.plan = [{"id": c.id, "reason": c.reason} for c in the_plan.candidates]
    return report


def _sensitivity(net, example, eval_b, batch, reference, progress) -> dict:
    """--sensitivity: each prunable layer pruned alone at 50%, accuracy drop measured on the held-out data."""
    from edgeopt.techniques.sensitivity import sensitivity

    progress.stage("sensitivity analysis")
    t0 = time.perf_counter()

    def evaluate(m) -> float:
        return score(torch_predictions(m, eval_b, batch), eval_b, reference)[0]

    result = sensitivity(net, example, evaluate, ratio=0.5, importance="l2")
    result["seconds"] = round(time.perf_counter() - t0, 2)
    progress.log(f"sensitivity: {len(result['layers'])} layers probed in {result['seconds']:.0f} s")
    return result


def _publish_chosen(report: Report, out_dir: Path) -> None:
    """Copy the chosen artifact to out/model.<ext> (atomically: temp name, then rename)."""
    chosen: Candidate | None = report.chosen_candidate
    if chosen is None or chosen.artifact is None:
        return
    src = out_dir / chosen.artifact
    backend = backend_for(chosen.runtime)
    companions = [src.with_suffix(".bin")] if backend.format == "openvino" else []
    dst = out_dir / f"model{src.suffix}"
    for s in companions:  # weights file first, so model.xml never points at a missing .bin
        tmp = out_dir / f".model{s.suffix}.tmp"
        shutil.copyfile(s, tmp)
        os.replace(tmp, out_dir / f"model{s.suffix}")
    tmp = out_dir / f".model{src.suffix}.tmp"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    report.model.chosen_artifact = dst.name
