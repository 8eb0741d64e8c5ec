"""The single optimize(): context -> analyze -> plan -> build/export/verify/evaluate each candidate
-> measure latency (interleaved) -> select -> report. The CLI and the Python API both call this."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import torch

from edgeopt import __version__
from edgeopt.analyze import analyze
from edgeopt.backends import BACKENDS, backend_for, installed_runtimes
from edgeopt.bench import BenchConfig, measure
from edgeopt.candidates import Built, build_structure, evaluate_candidate, export_candidate, new_candidate
from edgeopt.config import make_context
from edgeopt.data import Batches, as_batches, digits_data
from edgeopt.environment import environment
from edgeopt.errors import ConfigError, EdgeOptError
from edgeopt.evaluate import predictions, torch_runner
from edgeopt.models import load_model
from edgeopt.planner import plan as make_plan
from edgeopt.report import Candidate, Report, write_report
from edgeopt.roofline import estimate_stats
from edgeopt.selection import select
from edgeopt.targets import detect_local, load_target


class Progress:
    """No-op progress sink; the CLI passes a rich-backed one."""

    def stage(self, name: str, total: int | None = None) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def log(self, message: str) -> None: ...


def _resolve_data(spec: str, data, calib_data, eval_data, sample_shape, num_classes):
    if data == "digits" or (data is None and spec == "demo" and calib_data is None and eval_data is None):
        calib, ev = digits_data()
        return calib, ev, "digits"
    if data is not None and data != "digits":
        raise ConfigError(f"unknown dataset {data!r}: built-in datasets: digits (or pass calib/eval data)")
    calib = as_batches(calib_data, "calibration data", sample_shape, num_classes)
    ev = as_batches(eval_data, "evaluation data", sample_shape, num_classes)
    return calib, ev, "user" if (calib or ev) else None


def _prune_params(cspec) -> tuple[str | None, float]:
    for step in cspec.steps:
        if step.technique == "prune":
            return str(step.params.get("importance", "l2")), float(step.params.get("ratio", 0))
    return None, 0.0


def _layout(model) -> tuple:
    from edgeopt.techniques.prune import channel_table

    return tuple(sorted(channel_table(model).items()))


def _why(e: Exception) -> str:
    if isinstance(e, EdgeOptError):
        return str(e)
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"


def _fidelity_inputs(shape: tuple[int, ...], n: int, seed: int) -> Batches:
    gen = torch.Generator().manual_seed(seed + 1)
    return Batches([(torch.randn((n, *shape[1:]), generator=gen), None)])


def optimize(model="demo", example_inputs: torch.Tensor | None = None, target: str = "local",
             goal: str = "latency", max_accuracy_drop: float = 1.0, retrain: bool = False,
             eval_data=None, calib_data=None, train_data=None, out_dir: str | Path = "out",
             weights: str | Path | None = None, input_shape: tuple[int, ...] | None = None,
             trust_pickle: bool = False, data: str | None = None, progress: Progress | None = None,
             bench_config: BenchConfig | None = None, device: str | None = None,
             device_token: str | None = None, **context_kwargs) -> Report:
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
        input_shape = tuple(example_inputs.shape)
    loaded = load_model(model, weights=weights, input_shape=input_shape, trust_pickle=trust_pickle)
    example = example_inputs if example_inputs is not None else torch.randn(*loaded.input_shape)
    net = loaded.model
    progress.stage("analyzing")
    summary = analyze(net, loaded.input_shape)
    spec = model if isinstance(model, str) else "module"
    calib, eval_b, data_source = _resolve_data(spec, data, calib_data, eval_data, tuple(example.shape[1:]),
                                               summary.num_outputs)
    fidelity = eval_b is None or not eval_b.labelled
    if eval_b is None:
        eval_b = _fidelity_inputs(loaded.input_shape, 256, context.seed)
    batch = loaded.input_shape[0]
    reference = predictions(torch_runner(net), eval_b, batch)
    verify_inputs = calib.inputs()[:1] if calib is not None else None
    if verify_inputs and verify_inputs[0].shape[0] != batch:
        verify_inputs = [verify_inputs[0][:batch]] if verify_inputs[0].shape[0] >= batch else None

    the_plan = make_plan(context, profile, summary, local, installed_runtimes(), has_calib_data=calib is not None,
                         precisions_of_format={n: b.precisions for n, b in BACKENDS.items()})
    report = Report(
        edgeopt_version=__version__, context=context.model_dump(), target=profile.model_dump(),
        environment={**environment(threads), "data": data_source},
        model={"source": loaded.source, "input_shape": list(loaded.input_shape), **summary.model_dump(),
               **{f"info_{k}": v for k, v in loaded.info.items()}},
        decisions=the_plan.decisions)
    report.model["plan_notes"] = the_plan.notes
    artifacts = out_dir / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)

    built: dict[str, Built | Exception] = {}
    lost_at: dict[str, tuple[float, float]] = {}  # criterion -> (ratio, pp lost) once a ratio broke the budget
    shapes: dict[tuple, str] = {}  # channel layout -> first structure with it (ratios can round alike)
    base_acc: float | None = None
    sessions = {}
    results = {}
    progress.stage("building and checking candidates", total=len(the_plan.candidates))
    for cspec in the_plan.candidates:
        cand = new_candidate(cspec)
        report.candidates.append(cand)
        progress.advance()
        if context.time_budget_s and time.perf_counter() - t_start > context.time_budget_s:
            cand.status, cand.reason = "rejected", "not tried: --time-budget exhausted"
            continue
        crit, ratio = _prune_params(cspec)
        if crit in lost_at and ratio > lost_at[crit][0]:
            # accuracy falls with the ratio: larger ratios than one already over budget are not worth building
            cand.status = "rejected"
            cand.reason = f"not tried: {crit} at ratio {lost_at[crit][0]:.2f} already lost {lost_at[crit][1]:.2f} pp"
            continue
        if cspec.structure not in built:
            progress.log(f"building {cspec.structure}")
            try:
                built[cspec.structure] = build_structure(net, example, cspec, calib)
            except Exception as e:  # one candidate's failure is data in the report, not a crash
                built[cspec.structure] = e
            b = built[cspec.structure]
            if not isinstance(b, Exception):
                shapes.setdefault((crit, _layout(b.model)), cspec.structure)
        b = built[cspec.structure]
        if isinstance(b, Exception):
            cand.status, cand.reason = "failed", _why(b)
            continue
        twin = shapes.get((crit, _layout(b.model)))
        if twin != cspec.structure:
            cand.status, cand.reason = "rejected", f"not tried: same channel layout as {twin}"
            continue
        cand.params, cand.macs = b.params, b.macs
        for rec in b.records:
            for step in cand.steps:
                if step.technique == rec["technique"]:
                    step.params["record"] = {k: v for k, v in rec.items() if k != "technique"}
        try:
            result, session = export_candidate(b, example, cspec, artifacts, threads, calib, verify_inputs)
        except Exception as e:
            cand.status, cand.reason = "failed", _why(e)
            continue
        cand.artifact = str(result.path.relative_to(out_dir))
        cand.size_bytes = result.size_bytes
        cand.precision_executed = session.precision_executed
        cand.exporter = result.exporter
        cand.verification = result.info.get("verification")
        try:
            cand.accuracy, cand.metric = evaluate_candidate(session.run, eval_b, batch,
                                                            reference if fidelity else None)
        except Exception as e:
            cand.status, cand.reason = "failed", f"evaluation failed: {_why(e)}"
            continue
        cand.status = "ok"
        sessions[cand.id], results[cand.id] = session, result
        if cand.id == the_plan.baseline_id:
            base_acc = cand.accuracy
        elif crit is not None and base_acc is not None and cspec.precision == "fp32":
            lost = base_acc - cand.accuracy
            if lost > 3 * context.max_accuracy_drop + 1.0:
                lost_at[crit] = min(lost_at.get(crit, (ratio, lost)), (ratio, lost))

    progress.stage("measuring latency" if the_plan.measure_locally or device else "estimating latency")
    ok = [c for c in report.candidates if c.status == "ok"]
    # --- remote device (issue 6): --device URL measures on an `edgeopt agent` instead of here ---
    if device and ok:
        from edgeopt.agent.client import measure_candidates

        report.environment["device"] = measure_candidates(
            ok, out_dir, profile.runtimes, device, device_token or "", tuple(example.shape), context.threads,
            (bench_config or BenchConfig()).max_time_s)
    # --- end remote device ---
    elif the_plan.measure_locally and ok:
        x = example.numpy()
        stats = measure({c.id: sessions[c.id].lean_call(x) for c in ok}, bench_config)
        for c in ok:
            c.latency_ms, c.latency_source = stats[c.id], "measured"
    else:
        for c in ok:
            c.latency_ms = estimate_stats(profile, c.macs or 0, c.size_bytes or 0, c.precision or "fp32")
            c.latency_source = "estimated"

    base = next((c for c in report.candidates if c.id == the_plan.baseline_id), None)
    report.candidates = [c for c in report.candidates if c.id != the_plan.baseline_id]
    report.baseline = base
    select(report, context)
    _publish_chosen(report, out_dir)
    if not the_plan.measure_locally:  # issue 6: artifact + exact build/run command for the device
        from edgeopt.bundle import write_bundle

        write_bundle(report, out_dir, profile)
    report.wall_time_s = round(time.perf_counter() - t_start, 2)
    write_report(report, out_dir)
    return report


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
    report.model["chosen_artifact"] = dst.name
