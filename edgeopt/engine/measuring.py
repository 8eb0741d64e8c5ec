"""The measuring stage of a run: every finished candidate's latency, measured interleaved on this machine,
on a remote `edgeopt agent`, or estimated by the roofline for a target that is not this machine."""

from __future__ import annotations

from pathlib import Path

from edgeopt.config import RunConfig
from edgeopt.inputs.model_io import Inputs
from edgeopt.measure.roofline import estimate_stats
from edgeopt.measure.timing import BenchConfig, measure
from edgeopt.report import Candidate


def latency(cands: list[Candidate], sessions: dict, measure_locally: bool, profile, ex: Inputs,
            bench_config: BenchConfig | None) -> None:
    """Interleaved runs on this machine (every input fed), or a roofline estimate for a remote target."""
    if not cands:
        return
    if measure_locally:
        feed = ex.numpy()
        stats = measure({c.id: sessions[c.id].timed_call(feed) for c in cands}, bench_config)
        for c in cands:
            c.latency_ms, c.latency_source = stats[c.id], "measured"
    else:
        for c in cands:
            c.latency_ms = estimate_stats(profile, c.macs or 0, c.size_bytes or 0, c.precision or "fp32")
            c.latency_source = "estimated"


def measure_all(cands: list[Candidate], sessions: dict, measure_locally: bool, prep, out_dir: Path,
                config: RunConfig, bench_config: BenchConfig, device_token: str | None, progress) -> dict | None:
    """Latency of every ok candidate: on a remote `edgeopt agent` (--device), interleaved here, or estimated.
    Returns what report.json's environment says about the remote device, None when measured here."""
    device = config.measure.device
    progress.stage("measuring latency" if measure_locally or device else "estimating latency")
    ok = [c for c in cands if c.status == "ok"]
    if device and ok:  # measured on an `edgeopt agent`, not here
        from edgeopt.remote import read_token_file
        from edgeopt.remote.client import measure_candidates

        if device_token is None and config.measure.token_file:
            device_token = read_token_file(config.measure.token_file)
        return measure_candidates(
            ok, out_dir, prep.profile.runtimes, device, device_token or "",
            tuple(prep.ex.first.shape) if prep.ex.single else prep.ex.shapes,
            prep.context.threads, bench_config.max_time_s, tensorrt=prep.profile.tensorrt)
    latency(ok, sessions, measure_locally, prep.profile, prep.ex, bench_config)
    return None


def architecture_table(prep, progress, seconds: float = 4.0) -> list[dict] | None:
    """The efficient families' latency beside the model (PyTorch eager, batch 1, interleaved on this machine),
    for the planner's efficient-architecture decision; None where it cannot stand for the target (another
    machine), or the model is not a one-input classifier (the families are classifiers)."""
    import torch

    from edgeopt.decide.plan import runs_here
    from edgeopt.techniques.retraining.architecture import latency_table

    ex = prep.ex
    if not runs_here(prep.profile, prep.local) or len(ex.shapes) != 1:
        return None
    x = ex.first[:1]
    with torch.no_grad():
        out = prep.loaded.model.eval()(x)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        return None
    progress.stage("efficient architectures")
    skipped: list[str] = []
    rows = latency_table(prep.loaded.model, x, max_time_s=seconds, skipped=skipped)
    progress.log("efficient architectures: " + ", ".join(f"{r['name']} {r['p50_ms']:.2f} ms" for r in rows)
                 + "".join(f"; {why}" for why in skipped))
    return rows + [{"name": why.split(":")[0], "skipped": why} for why in skipped]
