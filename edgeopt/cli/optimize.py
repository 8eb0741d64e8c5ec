"""`edgeopt optimize` and `edgeopt plan`."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import typer

from edgeopt.cli.app import app
from edgeopt.cli.common import RichProgress, candidates_table, console, out, parse_list

MODEL_HELP = ("demo (built-in, default), torchvision:NAME?num_classes=10, timm:NAME, path/file.py:factory, "
              "package.module:factory, or a torch.export .pt2 file. file.py:factory and module:factory "
              "IMPORT AND RUN that code: use only code you trust")


@app.command()
def optimize(
    model: str = typer.Option("demo", help=MODEL_HELP),
    weights: Path = typer.Option(None, help="state dict (.pth) loaded with weights_only=True"),
    input_shape: list[str] = typer.Option(None, help="example input shape, batch first, e.g. 1,3,224,224; for "
                                          "several inputs repeat it with names: --input-shape image:1,3,224,224 "
                                          "--input-shape mask:1,1,224,224"),
    trust_pickle: bool = typer.Option(False, help="allow loading a full pickled model (runs its code)"),
    target: str = typer.Option("local", help="target profile name/alias, a YAML file, or 'local'"),
    goal: str = typer.Option("latency", help="latency | size"),
    max_accuracy_drop: float = typer.Option(1.0, help="accuracy budget in percentage points"),
    retrain: bool = typer.Option(False, "--retrain/--no-retrain", help="may the model be fine-tuned?"),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="the model may be trained from scratch "
                                      "(implies --retrain): pruning at initialisation (SNIP) for size goals"),
    sensitivity: bool = typer.Option(False, "--sensitivity", help="measure each layer's pruning sensitivity "
                                     "first; sensitive layers are pruned less (saved in the report)"),
    latency_budget_ms: float = typer.Option(None, help="reject candidates slower than this p50"),
    size_budget_mb: float = typer.Option(None, help="reject candidates larger than this on disk (compressed)"),
    time_budget: float = typer.Option(None, help="wall-time budget for the search, seconds"),
    techniques: str = typer.Option(None, help="restrict to these techniques, comma separated"),
    runtimes: str = typer.Option(None, help="restrict to these runtimes, e.g. onnxruntime,openvino"),
    data: str = typer.Option(None, help="'digits' (built-in; default for the demo), an image folder (one "
                             "sub-folder per class), or module:function / file.py:function returning "
                             "{'calib','train','eval'} iterables (IMPORTS AND RUNS that code: only code you "
                             "trust)"),
    masks: Path = typer.Option(None, help="segmentation: a folder of masks (class index per pixel) with the same "
                               "file stems as the images in --data; accuracy is then mIoU"),
    metric: str = typer.Option(None, help="your metric, file.py:fn or module:fn (IMPORTS AND RUNS that code): "
                               "fn(outputs, targets) -> score in %, higher is better (e.g. mAP with your own box "
                               "decoding); needs --data with held-out targets. --max-accuracy-drop is in points "
                               "of it"),
    # --- data options (image folders; --batch-size/--workers/--calib-size also for Datasets) -> DataOptions
    image_size: str = typer.Option(None, help="image folder: resize to H,W or S (default: the model's input)"),
    resize: int = typer.Option(None, help="image folder: resize the shorter side to this, then center-crop "
                               "(default with --crop: crop / 0.875; without either: plain resize)"),
    crop: str = typer.Option(None, help="image folder: center-crop size H,W or S after --resize"),
    mean: str = typer.Option(None, help="image folder: per-channel mean, e.g. 0.485,0.456,0.406 (default 0.5)"),
    std: str = typer.Option(None, help="image folder: per-channel std (default 0.5)"),
    val_split: float = typer.Option(0.2, help="image folder: fraction held out per class for accuracy (never "
                                    "trained on; its file-list hash goes into report.json)"),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="random resized crop + horizontal flip "
                                 "when fine-tuning (never for calibration or evaluation)"),
    calib_size: int = typer.Option(300, help="calibration: a stratified sample of this many training images"),
    batch_size: int = typer.Option(32, help="data batch size for fine-tuning and evaluation"),
    workers: int = typer.Option(None, help="data loading worker processes (default: cores - 1)"),
    # --- end of data options
    epochs: int = typer.Option(2, help="fine-tuning epochs per candidate with --retrain"),
    calib: str = typer.Option("data", help="INT8 calibration: 'data' (needs --data or the demo's) or 'random' "
                              "(meaningless scales, marked in the report)"),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="resume from OUT/cache (finished candidates)"),
    threads: int = typer.Option(None, help="runtime threads (default: all cores)"),
    seed: int = typer.Option(0),
    bench_time: float = typer.Option(10.0, help="seconds at most for the interleaved latency measurement"),
    out_dir: Path = typer.Option(Path("out"), "--out", help="output folder for report and artifacts"),
    as_json: bool = typer.Option(False, "--json", help="print report.json to stdout instead of the table"),
    device: str = typer.Option(None, help="measure latency on a remote `edgeopt agent`, e.g. http://jetson:8765"),
    token_file: Path = typer.Option(None, help="the agent's token file (with --device)"),
) -> None:
    """Decide, compress, export and measure; write OUT/report.json, report.md, report.html and the chosen model.

    The search bisects each pruning/factorization family against accuracy on held-out data, exports the
    survivors at every precision the target accelerates, measures them interleaved, and keeps the fastest
    (--goal latency) or smallest (--goal size) within --max-accuracy-drop. Finished candidates are cached in
    OUT/cache: rerunning after an interruption resumes. Example: edgeopt optimize --max-accuracy-drop 1 --retrain
    Fine-tuning on N GPUs/processes: torchrun --nproc-per-node N -m edgeopt optimize ... --retrain (rank 0 reports).

    Exit 0 when a candidate meets the constraints, 1 when none does (the report is still written)."""
    from edgeopt.engine.pipeline import optimize as run
    from edgeopt.inputs.models import parse_input_shape
    from edgeopt.measure.timing import BenchConfig

    token = None
    if device or token_file:  # issue 6: remote measurement
        from edgeopt.errors import ConfigError
        from edgeopt.remote import read_token_file

        if not (device and token_file):
            raise ConfigError("--device and --token-file go together")
        token = read_token_file(token_file)
        from edgeopt.remote.client import AgentClient

        AgentClient(device, token).info()  # fail now on a wrong URL/token/protocol, not after the search
    # under torchrun only rank 0 shows progress and reports; the other ranks just join the fine-tuning
    rank0 = int(os.environ.get("RANK", "0")) == 0
    with RichProgress() if rank0 else contextlib.nullcontext() as progress:
        report = run(model, target=target, goal=goal, max_accuracy_drop=max_accuracy_drop, retrain=retrain,
                     out_dir=out_dir, weights=weights, input_shape=parse_input_shape(input_shape),
                     trust_pickle=trust_pickle, data=data, progress=progress, resume=cache,
                     data_options=_data_options(image_size, mean, std, val_split, resize=resize,
                                                crop=crop, augment=augment, calib_size=calib_size,
                                                batch_size=batch_size, workers=workers,
                                                masks=str(masks) if masks else None), epochs=epochs, metric=metric,
                     bench_config=BenchConfig(max_time_s=bench_time),
                     latency_budget_ms=latency_budget_ms, size_budget_mb=size_budget_mb,
                     time_budget_s=time_budget, techniques=parse_list(techniques),
                     runtimes=parse_list(runtimes), threads=threads, seed=seed, device=device,
                     calib_random=_calib_random(calib), from_scratch=from_scratch, sensitivity=sensitivity,
                     device_token=token)
    if report is None:  # a torchrun follower: rank 0 prints and writes everything
        return
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
        hits = report.model.get("cache_hits") or 0
        out.print(f"report: {out_dir / 'report.md'}, report.html, report.json  (wall time "
                  f"{report.wall_time_s:.1f} s{f', {hits} candidates from the cache' if hits else ''})")
    if report.chosen is None:
        console.print("no candidate met the constraints (report written)", style="red")
        raise typer.Exit(1)


def _floats(text: str | None, name: str) -> tuple[float, ...] | None:
    from edgeopt.errors import ConfigError

    if not text:
        return None
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise ConfigError(f"--{name} must be comma-separated numbers, got {text!r}") from None


def _size(text: str | None, name: str):
    size = _floats(text, name)
    if size is not None:
        size = int(size[0]) if len(size) == 1 else tuple(int(v) for v in size)
    return size


def _data_options(image_size, mean, std, val_split, crop=None, **rest) -> dict:
    """The data options block -> DataOptions fields (None = DataOptions' default)."""
    return {"image_size": _size(image_size, "image-size"), "crop": _size(crop, "crop"), "mean": _floats(mean, "mean"),
            "std": _floats(std, "std"), "val_split": val_split, **rest}


def _calib_random(calib: str) -> bool:
    from edgeopt.errors import ConfigError

    if calib not in ("data", "random"):
        raise ConfigError(f"--calib must be 'data' or 'random', got {calib!r}")
    return calib == "random"


@app.command()
def plan(
    model: str = typer.Option("demo", help=MODEL_HELP),
    input_shape: list[str] = typer.Option(None, help="example input shape, e.g. 1,3,224,224 (several: NAME:SHAPE)"),
    target: str = typer.Option("local", help="target profile name/alias, a YAML file, or 'local'"),
    goal: str = typer.Option("latency", help="latency | size"),
    max_accuracy_drop: float = typer.Option(1.0, help="accuracy budget in percentage points"),
    retrain: bool = typer.Option(False, "--retrain/--no-retrain", help="may the model be fine-tuned?"),
    from_scratch: bool = typer.Option(False, "--from-scratch", help="the model may be trained from scratch"),
    latency_budget_ms: float = typer.Option(None, help="p50 budget; the search stops early once met with margin"),
    size_budget_mb: float = typer.Option(None, help="size budget; the search stops early once met with margin"),
    techniques: str = typer.Option(None, help="restrict to these techniques, comma separated"),
    runtimes: str = typer.Option(None, help="restrict to these runtimes"),
    data: str = typer.Option(None, help="the data optimize would get (only its presence matters here)"),
    as_json: bool = typer.Option(False, "--json", help="print the plan as JSON"),
    trust_pickle: bool = typer.Option(False, help="allow loading a full pickled model (runs its code)"),
) -> None:
    """Print the candidates the planner would try, and why (and what it leaves out, and why), without
    exporting or measuring anything. Example: edgeopt plan --target jetson --goal latency"""
    from edgeopt.config import make_context
    from edgeopt.decide.plan import plan as make_plan
    from edgeopt.formats import BACKENDS, installed_runtimes
    from edgeopt.inputs.analyze import analyze
    from edgeopt.inputs.models import load_model, parse_input_shape
    from edgeopt.targets import detect_local, load_target

    ctx = make_context(target=target, goal=goal, max_accuracy_drop=max_accuracy_drop, retrain=retrain,
                       from_scratch=from_scratch, latency_budget_ms=latency_budget_ms, size_budget_mb=size_budget_mb,
                       techniques=parse_list(techniques), runtimes=parse_list(runtimes))
    profile = load_target(ctx.target)
    loaded = load_model(model, input_shape=parse_input_shape(input_shape), trust_pickle=trust_pickle)
    summary = analyze(loaded.model, loaded.input_shapes or loaded.input_shape)
    has_data = model == "demo" or data is not None
    p = make_plan(ctx, profile, summary, detect_local(), installed_runtimes(), has_calib_data=has_data,
                  has_train_data=has_data, precisions_of_format={n: b.precisions for n, b in BACKENDS.items()})
    if as_json:
        out.print_json(p.model_dump_json())
    else:
        out.print(f"plan for target {profile.name} ({profile.kind}), goal {ctx.goal}, max drop "
                  f"{ctx.max_accuracy_drop} pp, retrain {ctx.retrain}", markup=False, highlight=False)
        out.print(p.to_text(), markup=False, highlight=False)
