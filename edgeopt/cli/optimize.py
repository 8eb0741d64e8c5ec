"""`edgeopt optimize` and `edgeopt plan`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from edgeopt.cli.app import app
from edgeopt.cli.common import RichProgress, candidates_table, console, out, parse_list

MODEL_HELP = ("demo (built-in, default), torchvision:NAME?num_classes=10, timm:NAME, path/file.py:factory, "
              "package.module:factory, or a torch.export .pt2 file")


@app.command()
def optimize(
    model: str = typer.Option("demo", help=MODEL_HELP),
    weights: Path = typer.Option(None, help="state dict (.pth) loaded with weights_only=True"),
    input_shape: str = typer.Option(None, help="example input shape, batch first, e.g. 1,3,224,224"),
    trust_pickle: bool = typer.Option(False, help="allow loading a full pickled model (runs its code)"),
    target: str = typer.Option("local", help="target profile name/alias, a YAML file, or 'local'"),
    goal: str = typer.Option("latency", help="latency | size"),
    max_accuracy_drop: float = typer.Option(1.0, help="accuracy budget in percentage points"),
    retrain: bool = typer.Option(False, "--retrain/--no-retrain", help="may the model be fine-tuned?"),
    latency_budget_ms: float = typer.Option(None, help="reject candidates slower than this p50"),
    size_budget_mb: float = typer.Option(None, help="reject candidates larger than this on disk"),
    time_budget: float = typer.Option(None, help="wall-time budget for the search, seconds"),
    techniques: str = typer.Option(None, help="restrict to these techniques, comma separated"),
    runtimes: str = typer.Option(None, help="restrict to these runtimes, e.g. onnxruntime,openvino"),
    data: str = typer.Option(None, help="dataset: 'digits' (built-in; default for the demo)"),
    threads: int = typer.Option(None, help="runtime threads (default: all cores)"),
    seed: int = typer.Option(0),
    bench_time: float = typer.Option(10.0, help="seconds at most for the interleaved latency measurement"),
    out_dir: Path = typer.Option(Path("out"), "--out", help="output folder for report and artifacts"),
    as_json: bool = typer.Option(False, "--json", help="print report.json to stdout instead of the table"),
    device: str = typer.Option(None, help="measure latency on a remote `edgeopt agent`, e.g. http://jetson:8765"),
    token_file: Path = typer.Option(None, help="the agent's token file (with --device)"),
) -> None:
    """Decide, compress, export and measure; write OUT/report.json, report.md and the chosen model.

    Exit 0 when a candidate meets the constraints, 1 when none does (the report is still written)."""
    from edgeopt.bench import BenchConfig
    from edgeopt.models import parse_input_shape
    from edgeopt.pipeline import optimize as run

    token = None
    if device or token_file:  # issue 6: remote measurement
        from edgeopt.agent import read_token_file
        from edgeopt.errors import ConfigError

        if not (device and token_file):
            raise ConfigError("--device and --token-file go together")
        token = read_token_file(token_file)
        from edgeopt.agent.client import AgentClient

        AgentClient(device, token).info()  # fail now on a wrong URL/token/protocol, not after the search
    with RichProgress() as progress:
        report = run(model, target=target, goal=goal, max_accuracy_drop=max_accuracy_drop, retrain=retrain,
                     out_dir=out_dir, weights=weights, input_shape=parse_input_shape(input_shape),
                     trust_pickle=trust_pickle, data=data, progress=progress,
                     bench_config=BenchConfig(max_time_s=bench_time),
                     latency_budget_ms=latency_budget_ms, size_budget_mb=size_budget_mb,
                     time_budget_s=time_budget, techniques=parse_list(techniques),
                     runtimes=parse_list(runtimes), threads=threads, seed=seed, device=device,
                     device_token=token)
    if as_json:
        out.print_json(json.dumps(report.model_dump(mode="json")))
    else:
        out.print(candidates_table(report))
        chosen, base = report.chosen_candidate, report.baseline
        if chosen is not None and base is not None and chosen.latency_ms and base.latency_ms:
            out.print(f"chosen [bold]{chosen.id}[/]: p50 {chosen.latency_ms.p50:.3f} ms vs baseline "
                      f"{base.latency_ms.p50:.3f} ms ({base.latency_ms.p50 / chosen.latency_ms.p50:.2f}× faster, "
                      f"{chosen.latency_source}), accuracy drop {chosen.accuracy_drop or 0:+.2f} pp "
                      f"({chosen.metric})")
        out.print(f"report: {out_dir / 'report.json'}  (wall time {report.wall_time_s:.1f} s)")
    if report.chosen is None:
        console.print("no candidate met the constraints (report written)", style="red")
        raise typer.Exit(1)


@app.command()
def plan(
    model: str = typer.Option("demo", help=MODEL_HELP),
    input_shape: str = typer.Option(None, help="example input shape, e.g. 1,3,224,224"),
    target: str = typer.Option("local"),
    goal: str = typer.Option("latency"),
    max_accuracy_drop: float = typer.Option(1.0),
    retrain: bool = typer.Option(False, "--retrain/--no-retrain"),
    techniques: str = typer.Option(None),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Print the candidates the planner would try, and why, without running anything heavy."""
    from edgeopt.analyze import analyze
    from edgeopt.backends import installed_runtimes
    from edgeopt.config import make_context
    from edgeopt.models import load_model, parse_input_shape
    from edgeopt.planner import plan as make_plan
    from edgeopt.targets import detect_local, load_target

    ctx = make_context(target=target, goal=goal, max_accuracy_drop=max_accuracy_drop, retrain=retrain,
                       techniques=parse_list(techniques))
    profile = load_target(ctx.target)
    loaded = load_model(model, input_shape=parse_input_shape(input_shape))
    summary = analyze(loaded.model, loaded.input_shape)
    p = make_plan(ctx, profile, summary, detect_local(), installed_runtimes(),
                  has_calib_data=(model == "demo"))
    if as_json:
        out.print_json(p.model_dump_json())
    else:
        out.print(p.to_text(), markup=False, highlight=False)
