"""The one pipeline: prepare (context -> target -> model -> analyze -> data; shared with `edgeopt plan`) ->
plan -> search (screen structures by bisection against held-out accuracy, export the survivors at every
precision, verify, evaluate on the runtime; on the selection part of the held-out data) -> measure latency
(interleaved) -> the report, built once (`_report`: select, judge the choice on the test part
(engine/holdout.py), publish) -> written once. The CLI and the Python API both build a RunConfig and call `run`."""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from edgeopt import __version__
from edgeopt.config import RunConfig
from edgeopt.decide.plan import Plan
from edgeopt.decide.plan import plan as make_plan
from edgeopt.decide.policy import QUICK_BENCH
from edgeopt.decide.select import select
from edgeopt.engine import cluster, distributed, holdout
from edgeopt.engine.build import Builder, export_options
from edgeopt.engine.cache import CandidateCache, producer_parts
from edgeopt.engine.choices import measured_choices
from edgeopt.engine.measuring import architecture_table, check_choice, latency, measure_all
from edgeopt.engine.phases import Phases
from edgeopt.engine.prepare import Prepared, Progress, check_names, prepare, resolve_data
from edgeopt.engine.search import Search, SearchResult
from edgeopt.errors import ConfigError, DataError
from edgeopt.formats import BACKENDS, artifact_files, backend_for, device_commands, installed_runtimes
from edgeopt.inputs.model_io import Inputs, model_outputs
from edgeopt.measure.accuracy import Metric, score, torch_predictions
from edgeopt.measure.timing import BenchConfig
from edgeopt.report import (
    Candidate,
    Decision,
    Report,
    ReportContext,
    ReportModel,
    ReportTarget,
    write_atomic,
)
from edgeopt.report.headline import headline
from edgeopt.report.html import plot_file, write_all
from edgeopt.report.outputs import check_out_dir, mark_folder
from edgeopt.targets.host import environment
from edgeopt.training import ddp

__all__ = ["Prepared", "Progress", "check_names", "optimize", "plan_for", "prepare", "resolve_data", "run"]


def optimize(model=None, example_inputs=None, *, config: RunConfig | None = None,
             eval_data=None, calib_data=None, train_data=None, progress: Progress | None = None,
             bench_config: BenchConfig | None = None, device_token: str | None = None, **flat) -> Report | None:
    """The Python API's form: flat options (`target=`, `max_accuracy_drop=`, `epochs=`, ...) set on `config`
    (default: RunConfig()), validated (unknown ones are errors with did-you-mean), then `run`.
    `example_inputs`: a tensor, a tuple or a dict of tensors; `metric=`: "file.py:fn" or a callable."""
    if model is not None:
        flat["model"] = model if isinstance(model, str) else None
    metric_fn = flat.pop("metric") if callable(flat.get("metric")) else None
    flat = {k: str(v) if k in ("out_dir", "weights", "token_file") and v is not None else v for k, v in flat.items()}
    config = (config or RunConfig()).with_flat(**flat)
    return run(config, model=None if model is None or isinstance(model, str) else model, example=example_inputs,
               eval_data=eval_data, calib_data=calib_data, train_data=train_data, progress=progress,
               bench_config=bench_config, device_token=device_token, metric=metric_fn)


def run(config: RunConfig, model=None, example=None, eval_data=None, calib_data=None, train_data=None,
        progress: Progress | None = None, bench_config: BenchConfig | None = None,
        device_token: str | None = None, metric=None) -> Report | None:
    """The one optimize (see the module docstring). Under torchrun (WORLD_SIZE > 1) only rank 0 searches,
    exports, measures and writes the report, and only it returns the Report; the other ranks join the DDP
    fine-tuning of each structure it builds and return None. `metric`: a callable metric passed in memory."""
    t_start = time.perf_counter()
    progress = progress or Progress()
    out_dir = Path(config.output.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} exists and is not a directory")
    check_out_dir(out_dir, config.inputs)  # never a folder of the user's own files, nor one holding an input
    threads = config.measure.threads or os.cpu_count()
    torch.set_num_threads(threads)
    torch.manual_seed(config.measure.seed)
    phases = Phases()  # where the wall time goes: report.json's model.profile
    prep = prepare(config, model, example, eval_data, calib_data, train_data, progress, phases)
    # a model that cannot be distilled (splits.untrained says why) goes on without fine-tuning, and says so
    if prep.context.retrain and prep.splits.train is None and not prep.splits.untrained:
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
    write_atomic(mark_folder(out_dir) / "run.yaml", used.to_yaml())
    found = _search(prep, out_dir, threads, config.output.cache, progress, t_start,
                    metric if metric is not None else config.inputs.metric, phases)
    bench_config = fit_bench(bench_config or BenchConfig(max_time_s=config.measure.bench_time_s), found.result)
    with phases("measure"):
        device = measure_all(found.result.candidates, found.result.sessions, found.plan.measure_locally, prep,
                             out_dir, config, bench_config, device_token, progress)
    report = _report(prep, found, threads, device, out_dir, t_start, phases, bench_config)
    write_all(report, out_dir)  # report.png, .json, .md and the self-contained .html, each once
    return report


# Of the time left for the tail of a time-budgeted run, the share the latency measurement may take: the test split
# and writing the report take the rest.
BENCH_SHARE = 0.5


def fit_bench(bench: BenchConfig, result: SearchResult) -> BenchConfig:
    """The final latency measurement, shortened to fit what is left of --time-budget (fewer runs, a shorter
    measurement; traced as a cut); as asked without a time budget or when it fits."""
    clock = result.clock
    left = clock.left("end") if clock is not None else None
    if left is None:
        return bench
    ok = sum(1 for c in result.candidates if c.status == "ok")
    allowed = max(0.5, BENCH_SHARE * left - bench.warmup_s)
    if bench.max_time_s <= allowed:
        return bench
    clock.cut(f"latency of {ok} candidate(s) measured for {allowed:.1f} s, not {bench.max_time_s:g} s "
              f"({max(left, 0):.0f} s of the budget left)")
    return dataclasses.replace(bench, max_time_s=allowed, min_runs=min(bench.min_runs, 10),
                               warmup_runs=min(bench.warmup_runs, 3))


def plan_for(prep: Prepared, sensitivity: dict | None = None, architectures: list[dict] | None = None) -> Plan:
    """The planner on a prepared run (what `edgeopt plan` prints and `optimize` searches): what the plan may
    assume (calibration and training data, class labels for gradient criteria) comes from the resolved data
    and the model's outputs, the runtimes from what is installed."""
    return make_plan(prep.context, prep.profile, prep.summary, prep.local, installed_runtimes(),
                     has_calib_data=prep.splits.calib is not None, has_train_data=prep.splits.train is not None,
                     precisions_of_format={n: b.precisions for n, b in BACKENDS.items()}, sensitivity=sensitivity,
                     architectures=architectures, has_class_labels=_class_labels(prep))


def _class_labels(prep: Prepared) -> bool:
    """Labelled training data for a classifier (one (N, classes) output): what gradient criteria need."""
    train = prep.splits.train
    if train is None or not train.labelled:
        return False
    outs = list(model_outputs(prep.loaded.model.eval(), prep.ex).values())
    return len(outs) == 1 and outs[0].dim() == 2


@dataclass
class Searched:
    """What the search stage hands on: the plan, the held-out data split, the sensitivity table (or None), the
    metric every candidate was scored with, the model's output shapes (taken before the search, as ever), and
    the search's result."""

    plan: Plan
    held: holdout.Holdout
    sensitivity: dict | None
    metric: Metric
    outputs: dict[str, list[int]]
    result: SearchResult


def _search(prep: Prepared, out_dir: Path, threads: int, resume: bool, progress: Progress, t_start: float,
            metric, phases: Phases) -> Searched:
    """Plan, then search (rank 0; with followers under torchrun, released however the search ends)."""
    context, splits, net, ex = prep.context, prep.splits, prep.loaded.model, prep.ex
    _, world_size = ddp.world()
    leader = distributed.Leader() if world_size > 1 else None
    executor = None
    try:
        if prep.config.search.cluster:
            if world_size > 1:
                raise ConfigError("--cluster and torchrun do not go together: Ray runs the candidates in parallel, "
                                  "torchrun spreads the fine-tuning of one; use one of them")
            with phases("cluster start"):
                executor = cluster.executor_for(prep.config.search.cluster, threads)
        full = splits.eval if splits.eval is not None else holdout.fidelity_inputs(ex, 256, context.seed)
        full.metric = holdout.metric_for(metric, full, net, ex)  # how every candidate is scored (both parts alike)
        # the search sees the selection part only; the test part is touched once, after it (see `_report`)
        held = holdout.split(full, context.seed, ex, random_inputs=splits.eval is None)
        eval_b = held.selection
        fidelity = eval_b.metric.name == "fidelity"
        batch = ex.batch
        with phases("reference predictions"):
            reference = torch_predictions(net, eval_b, batch)
            why = None if fidelity else holdout.degenerate(eval_b.metric, score(reference, eval_b, reference)[0],
                                                            prep.summary.num_outputs)
            if why:
                held.judge_by_fidelity(why)
                progress.log(f"[yellow]warning:[/] {held.fallback}")
                fidelity, reference = True, torch_predictions(net, eval_b, batch)
        with phases("sensitivity"):
            sens = (_sensitivity(net, prep.example, eval_b, batch, reference if fidelity else None, progress)
                    if context.sensitivity else None)
        with phases("architectures"):
            # switching architecture needs training from scratch: measured only when that is allowed
            archs = architecture_table(prep, progress) if context.from_scratch else None
        with phases("plan"):
            the_plan = plan_for(prep, sensitivity=sens["layers"] if sens else None, architectures=archs)
        outputs = output_shapes(net, ex)
        options = export_options(prep.config, prep.profile)
        builder = Builder(net=net, example=prep.example, splits=splits, eval_b=eval_b, batch=batch,
                          reference=reference if fidelity else None, out_dir=out_dir, threads=threads,
                          calib_random=context.calib_random, progress=progress.log, export_options=options)
        if executor is not None:
            builder = executor.wrap(builder)
        search = Search(
            plan=the_plan, context=context, builder=builder, base_torch_acc=score(reference, eval_b, reference)[0],
            cache=CandidateCache(out_dir, enabled=resume),
            cache_parts=producer_parts(net, ex, eval_b, splits, context, options, prep.profile),
            progress=progress, t_start=t_start, announce=leader, executor=executor,
            quick_latency=partial(latency, measure_locally=the_plan.measure_locally, profile=prep.profile, ex=ex,
                                  bench_config=BenchConfig(**QUICK_BENCH)))
        t0 = time.perf_counter()
        result = search.run()
        took = time.perf_counter() - t0
        if executor is not None:
            executor.settle(result)
        for phase, sec in result.profile().items():
            phases.add(phase, sec)
        phases.add("search other", max(0.0, took - sum(result.profile().values())))
    finally:
        if leader is not None:  # however the search ended, the followers must not wait for it forever
            leader.close()
        if executor is not None:
            executor.close()
    return Searched(the_plan, held, sens, eval_b.metric, outputs, result)


def _report(prep: Prepared, found: Searched, threads: int, device: dict | None, out_dir: Path,
            t_start: float, phases: Phases, bench_config: BenchConfig) -> Report:
    """The run's report, built once here from what the stages returned: the search's result (with the latency
    just measured on its candidates) and `device` (the remote agent's environment, or None); then selected
    on the selection part, judged on the test part, its chosen artifact published (and bundled for a target
    that is not this machine). Nothing writes into it after this."""
    loaded, splits, ex, context = prep.loaded, prep.splits, prep.ex, prep.context
    result, the_plan, held = found.result, found.plan, found.held
    model = ReportModel(**{"source": loaded.source, "input_shape": list(ex.first.shape),
                           "inputs": {n: list(v) for n, v in ex.shapes.items()},
                           "outputs": found.outputs, "metric": found.metric.name,
                           "metric_meaning": found.metric.meaning, **prep.summary.model_dump(),
                           **{f"info_{k}": v for k, v in loaded.info.items()}})
    model.plan_notes = the_plan.notes
    model.sensitivity = found.sensitivity
    model.plan = [{"id": c.id, "reason": c.reason} for c in the_plan.candidates]
    model.search = result.summary()
    model.test_split = held.record
    env = {**environment(threads), "data": splits.source, "heldout_sha256": splits.heldout_hash,
           **batch_note(prep.config, ex)}
    decisions = list(the_plan.decisions)
    if context.calib_random and splits.calib is None:
        env["calibration"] = "random"
        decisions.append(Decision(technique="calibration", decision="applied", reason=(
            "--calib random: INT8 scales come from random inputs and are meaningless; the measured accuracy "
            "of each int8 candidate shows what that costs")))
    if device is not None:
        env["device"] = device
    if splits.augmentation:
        decisions.append(Decision(technique="augmentation", decision="applied", reason=splits.augmentation))
    if splits.untrained:
        decisions.append(Decision(technique="distillation", decision="rejected", reason=splits.untrained))
    decisions.append(held.decision())
    if held.fallback:
        decisions.append(Decision(technique="metric", decision="rejected", reason=held.fallback))
    decisions += result.decisions  # taken on measurements (e.g. QAT only where PTQ broke the budget)
    decisions += measured_choices(result.candidates)  # made inside the retraining steps
    report = Report(edgeopt_version=__version__, context=ReportContext(**context.model_dump()),
                    target=ReportTarget(**prep.profile.model_dump()), environment=env, model=model,
                    baseline=next((c for c in result.candidates if c.id == the_plan.baseline_id), None),
                    candidates=[c for c in result.candidates if c.id != the_plan.baseline_id], decisions=decisions)
    select(report, context)  # on the selection part, like every decision of the search
    # the final choice's latency measured again, beside what the headline compares it with (it chose nothing)
    check = (partial(check_choice, sessions=result.sessions, ex=ex, bench_config=bench_config)
             if the_plan.measure_locally and device is None and context.goal == "latency" else None)
    # then the test part, once: the budget of the final choice is judged there (the next best when it breaks)
    with phases("test split"):
        holdout.judge(report, context, held, result.sessions, ex.batch, loaded.model, check=check)
    report.model.headline = headline(report)  # vs the best plain conversion of the original, and vs fp32
    _publish_chosen(report, out_dir)
    if not the_plan.measure_locally:  # the artifact + the exact build/run command for the device
        from edgeopt.report.bundle import write_bundle

        write_bundle(report, out_dir, prep.profile, artifact_files, device_commands)
    report.model.cache_hits = sum(1 for c in result.candidates if c.from_cache)
    report.model.plot = plot_file(report)  # the plot report.md and report.html show, named in report.json too
    report.wall_time_s = round(time.perf_counter() - t_start, 2)
    for c in [report.baseline, *report.candidates]:
        if c is not None and c.id in result.phases:
            c.seconds = result.phases[c.id]
    # "other": what no phase accounts for (selecting, publishing, the report built); writing the files the
    # profile is in comes after it
    report.model.profile = phases.summary(report.wall_time_s)
    return report


def batch_note(config: RunConfig, ex: Inputs) -> dict:
    """What report.json's environment says about the batch: the size latency is measured at, and whether the
    artifacts take any batch size."""
    d = config.deploy
    streams = d.streams or "the runtime's choice of"
    serving = {"figures": f"latency_ms: batch {ex.batch}, one request at a time (goal latency); throughput: "
                          f"batch {d.serve_batch or 1}, {streams} requests in flight (goal throughput)"
               } if d.goal == "throughput" else {}
    if not config.output.dynamic_batch and not d.serves_batches:
        return serving
    return {"batch": f"{ex.batch} (artifacts have a dynamic batch axis; latency measured at batch {ex.batch}, "
                     "the example's)", **serving}


def output_shapes(net, ex: Inputs) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model_outputs(net, ex).items()}


def _sensitivity(net, example, eval_b, batch, reference, progress) -> dict:
    """--sensitivity: each prunable layer pruned alone at 50%, accuracy drop measured on the held-out data."""
    from edgeopt.techniques.pruning.sensitivity import sensitivity

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
    # every file of the artifact, as its format row lists them: companions first, so model.xml never points at
    # a missing .bin
    for f in backend_for(chosen.runtime).artifact_files(src):
        name = "model" + f.name[len(src.stem):]
        tmp = out_dir / f".{name}.tmp"
        shutil.copyfile(f, tmp)
        os.replace(tmp, out_dir / name)
    report.model.chosen_artifact = f"model{src.suffix}"
    from edgeopt.formats.device_shell import load_note

    # e.g. a plain OpenVINO compile_model may not run the precision that was measured
    report.model.load_note = load_note(chosen.runtime, report.model.chosen_artifact, chosen.precision)
