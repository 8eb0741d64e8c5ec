"""The pipeline's search stage, on a prepared run: the held-out data split into its selection part (what the
search sees) and its test part (touched once, after it: engine/report_stage.py), the reference predictions
and the metric every candidate is scored with, the optional sensitivity and architecture tables, the plan,
then the builder and the `Search` wired up and run (rank 0; with followers under torchrun, released however
the search ends; with --cluster, on Ray). Hands on a `Searched`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from edgeopt.decide.plan import Plan
from edgeopt.decide.plan import plan as make_plan
from edgeopt.decide.policy import QUICK_BENCH
from edgeopt.engine import cluster, distributed, holdout
from edgeopt.engine.build import Builder, export_options
from edgeopt.engine.cache import CandidateCache, producer_parts
from edgeopt.engine.measuring import architecture_table, latency
from edgeopt.engine.phases import Phases
from edgeopt.engine.prepare import Prepared, Progress
from edgeopt.engine.search import Search, SearchResult
from edgeopt.errors import ConfigError
from edgeopt.formats import BACKENDS, installed_runtimes
from edgeopt.inputs.model_io import Inputs, model_outputs
from edgeopt.measure.accuracy import Metric, score, torch_predictions
from edgeopt.measure.timing import BenchConfig
from edgeopt.training import ddp


def plan_for(prep: Prepared, sensitivity: dict | None = None, architectures: list[dict] | None = None) -> Plan:
    """The planner on a prepared run (what `edgeopt plan` prints and `optimize` searches): what the plan may
    assume (calibration and training data, class labels for gradient criteria) comes from the resolved data
    and the model's outputs, the runtimes from what is installed."""
    return make_plan(prep.context, prep.profile, prep.summary, prep.local, installed_runtimes(),
                     has_calib_data=prep.splits.calib is not None, has_train_data=prep.splits.train is not None,
                     precisions_of_format={n: b.precisions for n, b in BACKENDS.items()}, sensitivity=sensitivity,
                     architectures=architectures, has_class_labels=_class_labels(prep),
                     train_steps_per_epoch=_steps_per_epoch(prep))


def _steps_per_epoch(prep: Prepared) -> int | None:
    """The optimizer steps of one pass over the training split, alone (None: no training split)."""
    from edgeopt.inputs.data.epochs import steps_per_epoch

    return steps_per_epoch(prep.splits.train) if prep.splits.train is not None else None


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


def run_search(prep: Prepared, out_dir: Path, threads: int, resume: bool, progress: Progress, t_start: float,
               metric, phases: Phases, final_bench: BenchConfig | None = None) -> Searched:
    """Plan, then search (rank 0; with followers under torchrun, released however the search ends).
    `final_bench`: the final latency measurement's settings, which the tail of a time-budgeted run is
    forecast with."""
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
        # the search sees the selection part only; the test part is touched once, after it (engine/report_stage.py)
        held = holdout.split(full, context.seed, ex, random_inputs=splits.eval is None)
        eval_b = held.selection
        fidelity = eval_b.metric.name == "fidelity"
        batch = ex.batch
        with phases("reference predictions"):
            t_ref = time.perf_counter()
            reference = torch_predictions(net, eval_b, batch)
            reference_s = time.perf_counter() - t_ref
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
                                  bench_config=BenchConfig(**QUICK_BENCH)),
            tail_forecast=tail_forecast(prep, the_plan, held, final_bench, reference_s))
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


# The tail of a time-budgeted run, forecast: the test part judges the baseline, the chosen candidate and the best
# plain conversion, and one more where the test part rejects the first choice; the forecast is kept with a
# margin, plus a few seconds for selecting, publishing the artifact and building the report.
TEST_JUDGED = 4
TAIL_MARGIN = 1.25
TAIL_OTHER_S = 3.0


def tail_forecast(prep: Prepared, the_plan: Plan, held: holdout.Holdout, bench: BenchConfig | None,
                  reference_s: float):
    """(evaluate_s -> (seconds, why)): the tail forecast from what the baseline's evaluation on the selection
    part took, scaled to the test part, and the final measurement's settings; None where the tail cannot be
    forecast here (no settings given, a throughput goal's load test, latency measured on a remote agent)."""
    if bench is None or prep.config.deploy.goal == "throughput" or prep.config.measure.device:
        return None
    from edgeopt.engine.measuring import measurement_seconds

    measure_s = measurement_seconds(bench) if the_plan.measure_locally else 0.0  # else estimated: no runs
    test = held.test
    share = len(test) / max(1, len(held.selection)) if test is not None else 0.0
    fidelity = test is not None and test.metric is not None and test.metric.name == "fidelity"

    def forecast(evaluate_s: float) -> tuple[float, str]:
        test_s = share * (TEST_JUDGED * evaluate_s + (reference_s if fidelity else 0.0))
        seconds = TAIL_MARGIN * (measure_s + test_s) + TAIL_OTHER_S
        return seconds, (f"the final measurement takes about {measure_s:.0f} s and the test split about "
                         f"{test_s:.0f} s ({TEST_JUDGED} models, the baseline's evaluation took {evaluate_s:.1f} s "
                         f"on the selection part), kept with a {TAIL_MARGIN:g}x margin and {TAIL_OTHER_S:g} s for "
                         "the report")
    return forecast


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
