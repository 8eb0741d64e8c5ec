"""The single optimize(): context -> analyze -> plan -> search (screen structures by bisection against
held-out accuracy, export the survivors at every precision, verify, evaluate on the runtime) -> measure
latency (interleaved) -> select -> report. The CLI and the Python API both call this."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import torch
from pydantic import ValidationError

from edgeopt import __version__
from edgeopt.config import DataOptions, make_context
from edgeopt.decide.plan import plan as make_plan
from edgeopt.decide.policy import QUICK_BENCH
from edgeopt.decide.select import select
from edgeopt.engine import distributed
from edgeopt.engine.build import Builder
from edgeopt.engine.cache import CandidateCache, data_hash, model_hash
from edgeopt.engine.search import Search
from edgeopt.errors import ConfigError, DataError
from edgeopt.formats import BACKENDS, artifact_files, backend_for, device_commands, installed_runtimes
from edgeopt.inputs.analyze import analyze
from edgeopt.inputs.data import (
    Batches,
    DataSplits,
    as_batches,
    calibration_sample,
    digits_data,
    folder_splits,
    from_function,
    make_preprocess,
)
from edgeopt.inputs.models import load_model
from edgeopt.inputs.structure import Inputs, model_outputs, output_layout
from edgeopt.measure.accuracy import Metric, default_metric, load_metric, score, torch_predictions
from edgeopt.measure.roofline import estimate_stats
from edgeopt.measure.timing import BenchConfig, measure
from edgeopt.report import Candidate, Decision, Report, write_report
from edgeopt.report.html import write_html_report
from edgeopt.targets import detect_local, load_target
from edgeopt.targets.host import environment
from edgeopt.training import ddp


class Progress:
    """No-op progress sink; the CLI passes a rich-backed one."""

    def stage(self, name: str, total: int | None = None) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def log(self, message: str) -> None: ...


def resolve_data(spec: str, data, calib_data, train_data, eval_data, sample_shape, num_classes,
                 data_options: dict | DataOptions | None = None, progress: Progress | None = None) -> DataSplits:
    """--data digits | image folder (+ --masks folder) | module:function, or the API's batches / Datasets /
    DataLoaders; validated one batch at a time. Calibration read from a stream becomes a stratified in-memory
    sample (`calib_size`)."""
    opts = _data_options(data_options)
    if opts.masks is not None:
        from edgeopt.inputs.masks import mask_folder

        if data is None or not os.path.isdir(str(data)):
            raise ConfigError("--masks needs --data with the image folder (same file stems as the masks)")
        size = opts.image_size or tuple(sample_shape[1:])
        return mask_folder(str(data), opts.masks, (size, size) if isinstance(size, int) else size,
                           sample_shape[0], tuple(opts.mean or (0.5,)), tuple(opts.std or (0.5,)),
                           val_split=opts.val_split, seed=opts.seed)
    if data == "digits" or (data is None and spec == "demo" and calib_data is None and eval_data is None):
        calib, ev = digits_data()
        return DataSplits(calib, calib, ev, "digits")  # fine-tuning and calibration use the training split
    heldout_hash = None
    if data is not None:
        data = str(data)
        if os.path.isdir(data):
            pre = make_preprocess(sample_shape, opts.image_size, opts.resize, opts.crop, opts.mean, opts.std,
                                  opts.augment)
            splits = folder_splits(Path(data), pre, opts.val_split, opts.seed, opts.batch_size, opts.calib_size,
                                   opts.workers, progress)
            calib_data, train_data, eval_data = splits.calib, splits.train, splits.eval
            source, heldout_hash = splits.source, splits.heldout_hash
        elif ":" in data:
            got = from_function(data)
            calib_data, train_data, eval_data = got.get("calib"), got.get("train"), got.get("eval")
            source = f"function:{data}"
        else:
            raise ConfigError(f"--data {data!r} is neither 'digits', an image folder, nor module:function")
    else:
        source = "user" if (calib_data is not None or eval_data is not None or train_data is not None) else None
    kw = {"batch_size": opts.batch_size, "workers": opts.workers}
    calib = as_batches(calib_data, "calibration data", sample_shape, num_classes, **kw)
    return DataSplits(calibration_sample(calib, opts.calib_size, opts.seed),
                      as_batches(train_data, "training data", sample_shape, num_classes, **kw),
                      as_batches(eval_data, "evaluation data", sample_shape, num_classes, **kw), source,
                      heldout_hash)


def _data_options(options) -> DataOptions:
    if isinstance(options, DataOptions):
        return options
    try:
        return DataOptions(**{k: v for k, v in (options or {}).items() if v is not None})
    except ValidationError as e:
        first = e.errors()[0]
        raise ConfigError(f"invalid data option {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


def _fidelity_inputs(ex: Inputs, n: int, seed: int) -> Batches:
    """Random held-out inputs (every named input) when there is no evaluation data."""
    x = ex.fresh(torch.Generator().manual_seed(seed + 1), batch=n)
    return Batches([(x.first if x.single else x, None)])


def optimize(model="demo", example_inputs=None, target: str = "local",
             goal: str = "latency", max_accuracy_drop: float = 1.0, retrain: bool = False,
             eval_data=None, calib_data=None, train_data=None, out_dir: str | Path = "out",
             weights: str | Path | None = None, input_shape: tuple[int, ...] | None = None,
             trust_pickle: bool = False, data: str | None = None, progress: Progress | None = None,
             bench_config: BenchConfig | None = None, data_options: dict | None = None, resume: bool = True,
             device: str | None = None, device_token: str | None = None, metric=None,
             **context_kwargs) -> Report | None:
    """The one optimize (see the module docstring); the CLI and edgeopt.optimize call it. Under torchrun
    (WORLD_SIZE > 1) only rank 0 searches, exports, measures and writes the report, and only it returns the
    Report; the other ranks join the DDP fine-tuning of each structure it builds and return None.
    `example_inputs`: a tensor, a tuple or a dict of tensors; `input_shape`: a tuple, or name -> shape for
    several named inputs. `metric`: a callable (outputs, targets) -> score in %, or "file.py:fn"."""
    t_start = time.perf_counter()
    progress = progress or Progress()
    context = make_context(target=target, goal=goal, max_accuracy_drop=max_accuracy_drop, retrain=retrain,
                           **context_kwargs)
    profile = load_target(context.target)
    local = detect_local()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} exists and is not a directory")
    threads = context.threads or os.cpu_count()
    torch.set_num_threads(threads)
    torch.manual_seed(context.seed)

    progress.stage("loading model")
    if example_inputs is not None:
        given = Inputs.of(example_inputs)
        input_shape = given.first.shape if given.single else given.shapes
    loaded = load_model(model, weights=weights, input_shape=input_shape, trust_pickle=trust_pickle)
    net = loaded.model
    ex = (Inputs.of(example_inputs, net) if example_inputs is not None else
          Inputs.random(loaded.input_shapes or loaded.input_shape, keyword=True))
    example = ex.example()
    progress.stage("analyzing")
    summary = analyze(net, ex)
    spec = model if isinstance(model, str) else "module"
    splits = resolve_data(spec, data, calib_data, train_data, eval_data, tuple(ex.first.shape[1:]),
                          summary.num_outputs, {**(data_options or {}), "seed": context.seed}, progress)
    if context.retrain and splits.train is None:
        raise DataError("--retrain needs training data: pass --data (image folder, module:function returning "
                        "'train', or digits) or train_data=..., or use --no-retrain")
    rank, world_size = ddp.world()  # (0, 1) unless torchrun started this with WORLD_SIZE > 1
    if world_size > 1:
        distributed.share_cores(context.threads)
    if rank > 0:  # a follower: only joins rank 0's DDP fine-tuning; exports, measures and writes nothing
        distributed.follow(net, example, splits)
        return None
    leader = distributed.Leader() if world_size > 1 else None
    try:
        eval_b = splits.eval if splits.eval is not None else _fidelity_inputs(ex, 256, context.seed)
        eval_b.metric = _metric(metric, eval_b, net, ex)  # how every candidate is scored
        fidelity = eval_b.metric.name == "fidelity"
        batch = ex.batch
        reference = torch_predictions(net, eval_b, batch)

        sens = (_sensitivity(net, example, eval_b, batch, reference if fidelity else None, progress)
                if context.sensitivity else None)
        the_plan = make_plan(context, profile, summary, local, installed_runtimes(),
                             has_calib_data=splits.calib is not None, has_train_data=splits.train is not None,
                             precisions_of_format={n: b.precisions for n, b in BACKENDS.items()},
                             sensitivity=sens["layers"] if sens else None)
        report = Report(
            edgeopt_version=__version__, context=context.model_dump(), target=profile.model_dump(),
            environment={**environment(threads), "data": splits.source, "heldout_sha256": splits.heldout_hash},
            model={"source": loaded.source, "input_shape": list(ex.first.shape),
                   "inputs": {n: list(v) for n, v in ex.shapes.items()}, "outputs": _output_shapes(net, ex),
                   "metric": eval_b.metric.name, "metric_meaning": eval_b.metric.meaning, **summary.model_dump(),
                   **{f"info_{k}": v for k, v in loaded.info.items()}},
            decisions=the_plan.decisions)
        report.model["plan_notes"] = the_plan.notes
        if sens is not None:
            report.model["sensitivity"] = sens
        if context.calib_random and splits.calib is None:
            report.environment["calibration"] = "random"
            report.decisions.append(Decision(technique="calibration", decision="applied", reason=(
                "--calib random: INT8 scales come from random inputs and are meaningless; the measured accuracy "
                "of each int8 candidate shows what that costs")))
        report.model["plan"] = [{"id": c.id, "reason": c.reason} for c in the_plan.candidates]
        cache = CandidateCache(out_dir, enabled=resume)
        builder = Builder(net=net, example=example, splits=splits, eval_b=eval_b, batch=batch,
                          reference=reference if fidelity else None, out_dir=out_dir, threads=threads,
                          calib_random=context.calib_random, progress=progress.log)
        search = Search(
            plan=the_plan, context=context, builder=builder, base_torch_acc=score(reference, eval_b, reference)[0],
            cache=cache, cache_parts=(__version__, model_hash(net), data_hash(eval_b), data_hash(splits.calib),
                                      data_hash(splits.train) if context.retrain else None, context.seed),
            progress=progress, t_start=t_start, announce=leader,
            quick_latency=lambda cands: _latency(
                cands, search.sessions, the_plan.measure_locally, profile, ex, BenchConfig(**QUICK_BENCH)))
        report.candidates = search.run()
    finally:
        if leader is not None:  # however the search ended, the followers must not wait for it forever
            leader.close()
    report.model["search"] = search.summary()
    report.decisions += search.decisions  # taken on measurements (e.g. QAT only where PTQ broke the budget)

    progress.stage("measuring latency" if the_plan.measure_locally or device else "estimating latency")
    ok = [c for c in report.candidates if c.status == "ok"]
    if device and ok:  # --device URL (issue 6): measured on an `edgeopt agent`, not here
        from edgeopt.remote.client import measure_candidates

        report.environment["device"] = measure_candidates(
            ok, out_dir, profile.runtimes, device, device_token or "",
            tuple(ex.first.shape) if ex.single else ex.shapes,
            context.threads,
            (bench_config or BenchConfig()).max_time_s)
    else:
        _latency(ok, search.sessions, the_plan.measure_locally, profile, ex, bench_config)

    base = next((c for c in report.candidates if c.id == the_plan.baseline_id), None)
    report.candidates = [c for c in report.candidates if c.id != the_plan.baseline_id]
    report.baseline = base
    select(report, context)
    _publish_chosen(report, out_dir)
    if not the_plan.measure_locally:  # the artifact + the exact build/run command for the device
        from edgeopt.report.bundle import write_bundle

        write_bundle(report, out_dir, profile, artifact_files, device_commands)
    report.model["cache_hits"] = sum(1 for c in [base, *report.candidates] if c is not None and c.from_cache)
    report.wall_time_s = round(time.perf_counter() - t_start, 2)
    write_report(report, out_dir)
    write_html_report(report, out_dir)  # report.png, report.md with the plot, self-contained report.html
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


def _latency(cands: list[Candidate], sessions: dict, measure_locally: bool, profile, ex: Inputs,
             bench_config: BenchConfig | None) -> None:
    """The measuring block: interleaved runs on this machine (every input fed), or a roofline estimate for a
    remote target."""
    if not cands:
        return
    if measure_locally:
        feed = ex.numpy()
        stats = measure({c.id: sessions[c.id].lean_call(feed) for c in cands}, bench_config)
        for c in cands:
            c.latency_ms, c.latency_source = stats[c.id], "measured"
    else:
        for c in cands:
            c.latency_ms = estimate_stats(profile, c.macs or 0, c.size_bytes or 0, c.precision or "fp32")
            c.latency_source = "estimated"


def _metric(spec, eval_b: Batches, net, ex: Inputs) -> Metric:
    """The user's metric (--metric / metric=) on labelled held-out data, else what the labels allow."""
    if spec is None:
        return default_metric(eval_b)
    if not eval_b.labelled:
        raise DataError("--metric needs held-out data with targets: pass --data (module:function returning "
                        "'eval' as (inputs, targets) batches) or eval_data=...")
    with torch.no_grad():
        layout = output_layout(ex.call(net))
    return load_metric(spec, layout)


def _output_shapes(net, ex: Inputs) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model_outputs(net, ex).items()}


def _publish_chosen(report: Report, out_dir: Path) -> None:
    """Copy the chosen artifact to out/model.<ext> (atomically: temp name, then rename)."""
    chosen: Candidate | None = report.chosen_candidate
    if chosen is None or chosen.artifact is None:
        return
    src = out_dir / chosen.artifact
    # every file of the artifact, as its format row lists them: companions first, so model.xml never points at
    # a missing .bin
    for f in backend_for(chosen.runtime).artifact_files(src):
        name = "model" + f.name[len(src.stem):]
        tmp = out_dir / f".{name}.tmp"
        shutil.copyfile(f, tmp)
        os.replace(tmp, out_dir / name)
    dst = out_dir / f"model{src.suffix}"
    report.model["chosen_artifact"] = dst.name
