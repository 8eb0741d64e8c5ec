"""The one pipeline: prepare (context -> target -> model -> analyze -> data; shared with `edgeopt plan`) ->
the search stage (engine/search_stage.py: plan, then screen structures by bisection against held-out accuracy,
export the survivors at every precision, verify, evaluate on the runtime; on the selection part of the
held-out data) -> measure latency (interleaved) -> the report stage (engine/report_stage.py: the report built
once, selected, the choice judged on the test part, published) -> written once. The CLI and the Python API
both build a RunConfig and call `run`."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import torch

from edgeopt.config import RunConfig
from edgeopt.engine import distributed
from edgeopt.engine.measuring import measure_all
from edgeopt.engine.phases import Phases
from edgeopt.engine.prepare import Prepared, Progress, check_names, prepare, resolve_data
from edgeopt.engine.report_stage import build_report
from edgeopt.engine.search import SearchResult
from edgeopt.engine.search_stage import plan_for, run_search
from edgeopt.errors import ConfigError, DataError
from edgeopt.measure.timing import BenchConfig
from edgeopt.report import Report, write_atomic
from edgeopt.report.html import write_all
from edgeopt.report.outputs import check_out_dir, mark_folder
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
    bench_config = bench_config or BenchConfig(max_time_s=config.measure.bench_time_s)
    found = run_search(prep, out_dir, threads, config.output.cache, progress, t_start,
                    metric if metric is not None else config.inputs.metric, phases, final_bench=bench_config)
    bench_config = fit_bench(bench_config, found.result)
    with phases("measure"):
        device = measure_all(found.result.candidates, found.result.sessions, found.plan.measure_locally, prep,
                             out_dir, config, bench_config, device_token, progress)
    report = build_report(prep, found, threads, device, out_dir, t_start, phases, bench_config)
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
