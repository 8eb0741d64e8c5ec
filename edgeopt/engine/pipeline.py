"""The one pipeline: prepare (context -> target -> model -> analyze -> data; shared with `edgeopt plan`) ->
plan -> search (screen structures by bisection against held-out accuracy, export the survivors at every
precision, verify, evaluate on the runtime; on the selection part of the held-out data) -> measure latency
(interleaved) -> select -> judge the choice on the test part (engine/holdout.py) -> report.
The CLI and the Python API both build a RunConfig and call `run`."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import torch

from edgeopt import __version__
from edgeopt.config import RunConfig
from edgeopt.decide.policy import QUICK_BENCH
from edgeopt.decide.select import select
from edgeopt.engine import distributed, holdout
from edgeopt.engine.build import Builder
from edgeopt.engine.cache import CandidateCache, producer_parts
from edgeopt.engine.choices import measured_choices
from edgeopt.engine.measuring import architecture_table, latency, measure_all
from edgeopt.engine.prepare import (
    Prepared,
    Progress,
    batch_note,
    check_names,
    export_options,
    fidelity_inputs,
    metric_for,
    output_shapes,
    plan_for,
    prepare,
    resolve_data,
)
from edgeopt.engine.search import Search
from edgeopt.errors import ConfigError, DataError
from edgeopt.formats import artifact_files, backend_for, device_commands
from edgeopt.measure.accuracy import score, torch_predictions
from edgeopt.measure.timing import BenchConfig
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
from edgeopt.report.headline import headline
from edgeopt.report.html import write_html_report
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
    write_atomic(mark_folder(out_dir) / "run.yaml", used.to_yaml())
    report, search, the_plan, held = _search(prep, out_dir, threads, config.output.cache, progress, t_start,
                                             metric if metric is not None else config.inputs.metric)
    bench_config = bench_config or BenchConfig(max_time_s=config.measure.bench_time_s)
    measure_all(report, search.sessions, the_plan.measure_locally, prep, out_dir, config, bench_config, device_token,
                progress)
    base = next((c for c in report.candidates if c.id == the_plan.baseline_id), None)
    report.candidates = [c for c in report.candidates if c.id != the_plan.baseline_id]
    report.baseline = base
    select(report, prep.context)  # on the selection part, like every decision of the search
    # then the test part, once: the budget of the final choice is judged there (the next best when it breaks)
    holdout.judge(report, prep.context, held, search.sessions, prep.ex.batch, prep.loaded.model)
    report.model.headline = headline(report)  # vs the best plain conversion of the original, and vs fp32
    _publish_chosen(report, out_dir)
    if not the_plan.measure_locally:  # the artifact + the exact build/run command for the device
        from edgeopt.report.bundle import write_bundle

        write_bundle(report, out_dir, prep.profile, artifact_files, device_commands)
    report.model.cache_hits = sum(1 for c in [base, *report.candidates] if c is not None and c.from_cache)
    report.wall_time_s = round(time.perf_counter() - t_start, 2)
    write_report(report, out_dir)
    write_html_report(report, out_dir)  # report.png, report.md with the plot, self-contained report.html
    return report


def _search(prep: Prepared, out_dir: Path, threads: int, resume: bool, progress: Progress, t_start: float,
            metric):
    """Plan, then search (rank 0; with followers under torchrun, released however the search ends)."""
    context, splits, net, ex = prep.context, prep.splits, prep.loaded.model, prep.ex
    _, world_size = ddp.world()
    leader = distributed.Leader() if world_size > 1 else None
    try:
        full = splits.eval if splits.eval is not None else fidelity_inputs(ex, 256, context.seed)
        full.metric = metric_for(metric, full, net, ex)  # how every candidate is scored (both parts alike)
        # the search sees the selection part only; the test part is touched once, after it (see `run`)
        held = holdout.split(full, context.seed, ex, random_inputs=splits.eval is None)
        eval_b = held.selection
        fidelity = eval_b.metric.name == "fidelity"
        batch = ex.batch
        reference = torch_predictions(net, eval_b, batch)
        sens = (_sensitivity(net, prep.example, eval_b, batch, reference if fidelity else None, progress)
                if context.sensitivity else None)
        # switching architecture needs training from scratch: measured only when that is allowed
        archs = architecture_table(prep, progress) if context.from_scratch else None
        the_plan = plan_for(prep, sensitivity=sens["layers"] if sens else None, architectures=archs)
        report = _new_report(prep, the_plan, threads, sens, eval_b.metric)
        report.model.test_split = held.record
        report.decisions.append(held.decision())
        cache = CandidateCache(out_dir, enabled=resume)
        builder = Builder(net=net, example=prep.example, splits=splits, eval_b=eval_b, batch=batch,
                          reference=reference if fidelity else None, out_dir=out_dir, threads=threads,
                          calib_random=context.calib_random, progress=progress.log,
                          export_options=export_options(prep.config, prep.profile))
        search = Search(
            plan=the_plan, context=context, builder=builder, base_torch_acc=score(reference, eval_b, reference)[0],
            cache=cache, cache_parts=producer_parts(net, ex, eval_b, splits, context, builder.export_options,
                                                    prep.profile),
            progress=progress, t_start=t_start, announce=leader,
            quick_latency=lambda cands: latency(
                cands, search.sessions, the_plan.measure_locally, prep.profile, ex, BenchConfig(**QUICK_BENCH)))
        report.candidates = search.run()
    finally:
        if leader is not None:  # however the search ended, the followers must not wait for it forever
            leader.close()
    report.model.search = search.summary()
    report.decisions += search.decisions  # taken on measurements (e.g. QAT only where PTQ broke the budget)
    report.decisions += measured_choices(report.candidates)  # made inside the retraining steps
    return report, search, the_plan, held


def _new_report(prep: Prepared, the_plan, threads: int, sens: dict | None, metric) -> Report:
    loaded, splits, ex = prep.loaded, prep.splits, prep.ex
    model = ReportModel(**{"source": loaded.source, "input_shape": list(ex.first.shape),
                           "inputs": {n: list(v) for n, v in ex.shapes.items()},
                           "outputs": output_shapes(loaded.model, ex), "metric": metric.name,
                           "metric_meaning": metric.meaning, **prep.summary.model_dump(),
                           **{f"info_{k}": v for k, v in loaded.info.items()}})
    model.plan_notes = the_plan.notes
    model.sensitivity = sens
    report = Report(edgeopt_version=__version__, context=ReportContext(**prep.context.model_dump()),
                    target=ReportTarget(**prep.profile.model_dump()),
                    environment={**environment(threads), "data": splits.source,
                                 "heldout_sha256": splits.heldout_hash, **batch_note(prep.config, ex)},
                    model=model, decisions=the_plan.decisions)
    if prep.context.calib_random and splits.calib is None:
        report.environment["calibration"] = "random"
        report.decisions.append(Decision(technique="calibration", decision="applied", reason=(
            "--calib random: INT8 scales come from random inputs and are meaningless; the measured accuracy "
            "of each int8 candidate shows what that costs")))
    model.plan = [{"id": c.id, "reason": c.reason} for c in the_plan.candidates]
    return report


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
