"""The pipeline's report stage: the run's report built once from what the stages returned (the plan, the
search's result with the latency just measured, the remote device's environment), then selected on the
selection part of the held-out data, the choice judged on the test part the search never saw
(engine/holdout.py), the headline set, the chosen artifact published as OUT/model.<ext> (and bundled for a
target that is not this machine). Nothing writes into the report after this."""

from __future__ import annotations

import os
import shutil
import time
from functools import partial
from pathlib import Path

from edgeopt import __version__
from edgeopt.config import RunConfig
from edgeopt.decide.select import select
from edgeopt.engine import holdout
from edgeopt.engine.choices import measured_choices
from edgeopt.engine.measuring import check_choice
from edgeopt.engine.phases import Phases
from edgeopt.engine.prepare import Prepared
from edgeopt.engine.search_stage import Searched
from edgeopt.formats import artifact_files, backend_for, device_commands
from edgeopt.inputs.model_io import Inputs
from edgeopt.measure.timing import BenchConfig
from edgeopt.report import (
    Candidate,
    Decision,
    Report,
    ReportContext,
    ReportModel,
    ReportTarget,
)
from edgeopt.report.headline import headline
from edgeopt.report.html import plot_file
from edgeopt.targets.host import environment


def build_report(prep: Prepared, found: Searched, threads: int, device: dict | None, out_dir: Path,
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
    publish_chosen(report, out_dir)
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


def publish_chosen(report: Report, out_dir: Path) -> None:
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
