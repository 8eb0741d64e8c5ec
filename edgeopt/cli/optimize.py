"""`edgeopt optimize` and `edgeopt plan`: both build one RunConfig (cli/options.py) and share the pipeline's
prepare step (context -> target -> model -> analyze -> data)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import typer

from edgeopt.cli import options as o
from edgeopt.cli.app import app
from edgeopt.cli.common import RichProgress, candidates_table, console, out
from edgeopt.cli.options import MODEL_HELP  # noqa: F401  (re-exported for the other commands)


@app.command()
def optimize(
    ctx: typer.Context,
    config: Path = o.CONFIG,
    model: str = o.MODEL, weights: Path = o.WEIGHTS, input_shape: list[str] = o.INPUT_SHAPE,
    trust_pickle: bool = o.TRUST_PICKLE, target: str = o.TARGET, goal: str = o.GOAL,
    max_accuracy_drop: float = o.MAX_DROP, retrain: bool = o.RETRAIN, from_scratch: bool = o.FROM_SCRATCH,
    sensitivity: bool = typer.Option(False, "--sensitivity", help="measure each layer's pruning sensitivity "
                                     "first; sensitive layers are pruned less (saved in the report)"),
    latency_budget_ms: float = o.LATENCY_BUDGET, size_budget_mb: float = o.SIZE_BUDGET,
    time_budget: float = typer.Option(None, help="wall-time budget for the whole run (loading, search, final "
                                      "measurement), seconds; a latency table or graph tracing in progress "
                                      "stops at it (its measurements kept for the next run); a fine-tuning "
                                      "that would end past it runs fewer steps, and the report says so; what the final "
                                      "measurement and test split need is forecast (at most 10 %); with goal "
                                      "latency an INT8 that ran under 1.1x faster than the fastest float "
                                      "conversion of the original is not exported for compressed models (the "
                                      "report says so)"),
    techniques: str = o.TECHNIQUES, runtimes: str = o.RUNTIMES,
    data: str = o.DATA, masks: Path = o.MASKS, metric: str = o.METRIC,
    # --- data options (image folders; --batch-size/--workers/--calib-size also for Datasets) -> DataOptions
    image_size: str = o.IMAGE_SIZE, resize: int = o.RESIZE, crop: str = o.CROP, mean: str = o.MEAN, std: str = o.STD,
    val_split: float = o.VAL_SPLIT, augment: bool = o.AUGMENT, calib_size: int = o.CALIB_SIZE,
    batch_size: int = o.BATCH_SIZE, workers: int = o.WORKERS,
    # --- end of data options
    epochs: int = typer.Option(None, help="fine-tuning epochs per candidate with --retrain (default 2, raised on a "
                               "small training split to about 300 optimizer steps, at most 16; a fine-tuned "
                               "family's next level is cut from the level it holds and fine-tuned again, and a "
                               "near miss is trained on in blocks of as many, up to 3 more, while its measured "
                               "recovery closes the gap)"),
    train_precision: str = typer.Option("auto", help="what fine-tuning trains at with --retrain: auto (bfloat16 "
                                        "autocast where the processor has it and a timed step runs at least 1.25x "
                                        "faster), fp32 or bf16"),
    calib: str = typer.Option("data", help="INT8 calibration: 'data' (needs --data or the demo's) or 'random' "
                              "(meaningless scales, marked in the report)"),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="resume from OUT/cache (finished candidates)"),
    threads: int = typer.Option(None, help="runtime threads (default: all cores)"),
    seed: int = typer.Option(0),
    bench_time: float = typer.Option(10.0, help="seconds at most for the interleaved latency measurement (> 0); "
                                     "the choice's second measurement takes a third of it, at least 2 s"),
    out_dir: Path = typer.Option(Path("out"), "--out", help="output folder for report and artifacts"),
    as_json: bool = typer.Option(False, "--json", help="print report.json to stdout instead of the table"),
    verbose: bool = typer.Option(False, "--verbose", help="also print where the wall time went, one line per phase"),
    dynamic_batch: bool = o.DYNAMIC_BATCH, streams: int = o.STREAMS,
    device: list[str] = o.DEVICE,
    token_file: Path = typer.Option(None, help="the agent's token file (with --device)"),
    cluster: str = o.CLUSTER,
) -> None:
    """Decide, compress, export and measure; write OUT/report.json, report.md, report.html, the chosen model
    and OUT/run.yaml (the config used: `edgeopt optimize --config OUT/run.yaml` replays the run).

    The search bisects each pruning/factorization family against accuracy on held-out data, then bisects
    another technique's family on top of the fastest structure (stacking: e.g. depth2+prune-recon20), exports the
    survivors at every precision the target accelerates, measures them interleaved, and keeps the fastest
    (--goal latency) or smallest (--goal size) or the most images/s (--goal throughput --batch-size N
    and/or --streams N) within --max-accuracy-drop; the choice is then timed again beside the plain conversions
    of the original, and the headline ratios come from that second measurement. Finished candidates are cached in
    OUT/cache: rerunning after an interruption resumes. Example: edgeopt optimize --max-accuracy-drop 1 --retrain
    Fine-tuning on N GPUs/processes: torchrun --nproc-per-node N -m edgeopt optimize ... --retrain (rank 0 reports).
    Candidates in parallel on Ray: edgeopt optimize ... --retrain --cluster local:4 (or ray://HOST:10001).

    Exit 0 when a candidate meets the constraints, 1 when none does (the report is still written)."""
    cfg = o.run_config(ctx, config)  # first: a bad flag or config file fails before torch is imported
    if config is None and cfg.inputs.model == "demo" and cfg.deploy.time_budget_s is None:
        from edgeopt.decide.policy import DEMO_TIME_BUDGET_S

        cfg = cfg.with_flat(time_budget_s=DEMO_TIME_BUDGET_S)  # the quick start ends in a minute or two
    from edgeopt.engine.pipeline import run

    token = _check_device(cfg.measure.device, cfg.measure.token_file)
    if cfg.search.cluster:  # fail now when Ray is missing, not after loading the model
        from edgeopt.engine.cluster import require_ray

        require_ray()
    out_path = Path(cfg.output.out_dir)
    # under torchrun only rank 0 shows progress and reports; the other ranks just join the fine-tuning
    rank0 = int(os.environ.get("RANK", "0")) == 0
    try:
        with RichProgress() if rank0 else contextlib.nullcontext() as progress:
            report = run(cfg, progress=progress, device_token=token)
    except KeyboardInterrupt:
        _interrupted(out_path)
        raise typer.Exit(130) from None
    if report is None:  # a torchrun follower: rank 0 prints and writes everything
        return
    if cfg.output.as_json:
        out.print_json(json.dumps(report.model_dump(mode="json")))
    else:
        _summary(report, out_path, cfg.output.verbose)
    if report.chosen is None:
        console.print("no candidate met the constraints (report written)", style="red")
        raise typer.Exit(1)


def _check_device(device: list[str] | None, token_file: str | None) -> str | None:
    """Remote measurement: fail now on a wrong URL, or when no device answers, not after the search."""
    if not (device or token_file):
        return None
    from edgeopt.errors import ConfigError
    from edgeopt.remote import read_token_file
    from edgeopt.remote.fleet import check_devices, checked_urls

    if not (device and token_file):
        raise ConfigError("--device and --token-file go together")
    urls = checked_urls(device)
    token = read_token_file(token_file)
    for row in check_devices(urls, token):
        if not row["ok"]:
            print(f"warning: {row['error']}; the run goes on with the other devices", file=sys.stderr)
    return token


def _interrupted(out_dir: Path) -> None:
    """Ctrl-C: one plain line (no rich wrapping) with what was kept and how to resume."""
    kept = len(list((out_dir / "cache").glob("*.json")))
    run_yaml = out_dir / "run.yaml"
    how = (f"resume with: edgeopt optimize --config {run_yaml}" if run_yaml.is_file()
           else "rerun the same command to start again")
    print(f"interrupted: kept {kept} finished cache entries in {out_dir / 'cache'}; {how}", file=sys.stderr)


def _summary(report, out_dir: Path, verbose: bool = False) -> None:
    out.print(candidates_table(report))
    if verbose:  # where the wall time went, one line per phase (report.json's model.profile)
        for phase, sec in (report.model.profile or {}).items():
            if sec >= 0.0005:
                out.print(f"  {phase:<24} {sec:8.2f} s", markup=False, highlight=False)
    from rich.markup import escape

    from edgeopt.report.headline import accuracy_line, speed_line

    chosen = report.chosen_candidate
    if chosen is not None:
        # the headline: vs the best plain conversion of the original (what exporting alone gives), fp32 beside
        out.print(f"chosen [bold]{escape(chosen.id)}[/]: {escape(speed_line(report) or 'not measured')}",
                  highlight=False)
        out.print(accuracy_line(report), markup=False, highlight=False)
        for d in report.decisions:
            if d.technique == "metric" and d.decision == "rejected":  # the task metric told nothing apart
                out.print(f"[yellow]warning:[/] {escape(d.reason)}", highlight=False)
            if d.technique == "latency_check":  # measured again, the compressed choice was not faster
                out.print(f"latency check: {escape(d.reason)}", highlight=False)
        if report.model.load_note:  # the published model runs as measured only when loaded this way
            out.print(f"load {report.model.chosen_artifact} as measured: {report.model.load_note[-1]}", markup=False,
                      highlight=False)
    hits = report.model.cache_hits or 0
    budget = (report.model.search or {}).get("time_budget") or {}
    stopped = f", stopped by the time budget of {budget['budget_s']:g} s" if budget.get("stopped") else ""
    from edgeopt.remote.fleet import failed_devices

    for d in failed_devices(report.environment):
        out.print(f"device {d['url']} failed: {d['error']} (its candidates went to the others)", markup=False,
                  highlight=False)
    out.print(f"report: {out_dir / 'report.md'}, report.html, report.json, run.yaml  (wall time "
              f"{report.wall_time_s:.1f} s{stopped}{f', {hits} candidates from the cache' if hits else ''})")


@app.command()
def plan(
    ctx: typer.Context,
    config: Path = o.CONFIG,
    model: str = o.MODEL, weights: Path = o.WEIGHTS, input_shape: list[str] = o.INPUT_SHAPE,
    trust_pickle: bool = o.TRUST_PICKLE, target: str = o.TARGET, goal: str = o.GOAL,
    max_accuracy_drop: float = o.MAX_DROP, retrain: bool = o.RETRAIN, from_scratch: bool = o.FROM_SCRATCH,
    latency_budget_ms: float = o.LATENCY_BUDGET, size_budget_mb: float = o.SIZE_BUDGET,
    techniques: str = o.TECHNIQUES, runtimes: str = o.RUNTIMES,
    data: str = o.DATA, masks: Path = o.MASKS, image_size: str = o.IMAGE_SIZE, mean: str = o.MEAN,
    std: str = o.STD, val_split: float = o.VAL_SPLIT, batch_size: int = o.BATCH_SIZE, streams: int = o.STREAMS,
    as_json: bool = typer.Option(False, "--json", help="print the plan as JSON"),
) -> None:
    """Print the candidates the planner would try, and why (and what it leaves out, and why), without
    exporting candidates. Its one measurement: efficient architectures' latency next to the model's on this
    machine, so the architecture decision shows what switching would buy. The model and data are loaded as
    `optimize` loads them (the same prepare step), so what calibration and fine-tuning could use is known.
    Example: edgeopt plan --target jetson --goal latency"""
    cfg = o.run_config(ctx, config, skip=("as_json",))
    from edgeopt.engine.measuring import architecture_table
    from edgeopt.engine.pipeline import plan_for, prepare
    from edgeopt.engine.prepare import Progress

    prep = prepare(cfg)
    # the one measurement plan makes: what switching to an efficient family would buy, on this machine
    p = plan_for(prep, architectures=architecture_table(prep, Progress()))
    if as_json:
        out.print_json(p.model_dump_json())
    else:
        c = prep.context
        out.print(f"plan for target {prep.profile.name} ({prep.profile.kind}), goal {c.goal}, max drop "
                  f"{c.max_accuracy_drop} pp, retrain {c.retrain}, data {prep.splits.source or 'none'}",
                  markup=False, highlight=False)
        out.print(p.to_text(), markup=False, highlight=False)
