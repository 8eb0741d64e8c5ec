"""The measuring stage of a run: every finished candidate's latency, measured interleaved on this machine,
on a remote `edgeopt agent`, or estimated by the roofline for a target that is not this machine; for a
throughput goal also its images/s under the served load (measure/throughput.py), on this machine."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from edgeopt.config import RunConfig
from edgeopt.decide.select import measured_tie
from edgeopt.inputs.model_io import Inputs
from edgeopt.measure.roofline import estimate_stats
from edgeopt.measure.timing import BenchConfig, measure
from edgeopt.report import Candidate, Decision, LatencyCheck, Report


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


# of the final measurement's time, what measuring the choice again takes (at least CHECK_MIN_S): a handful of
# models settle quickly
CHECK_SHARE = 1 / 3
CHECK_MIN_S = 2.0


def _check_seconds(bench_config: BenchConfig) -> float:
    """How long `check_choice` measures the choice again."""
    return max(CHECK_MIN_S, bench_config.max_time_s * CHECK_SHARE)


def measurement_seconds(bench_config: BenchConfig) -> float:
    """What the final measurement should take at most on this machine: every candidate's warm-up, the
    interleaved group for `max_time_s`, then the choice measured again (`check_choice`). A group of slow models
    can need longer for its minimum of runs; `fit_bench` shortens it to what is left."""
    return bench_config.warmup_s + bench_config.max_time_s + _check_seconds(bench_config)


def check_choice(report: Report, sessions: dict, ex: Inputs, bench_config: BenchConfig) -> list[Decision]:
    """The chosen model measured again, fresh and interleaved, beside the plain conversions of the original
    within the budget (the best of them is the headline's comparison) and the fp32 baseline. The choice is the
    fastest of many noisy figures, and the fastest of many is biased low, as the best accuracy on the selection
    split is biased high: the headline's ratios come from this second measurement, which chose nothing, and
    compare figures of one measurement only. When a compressed choice does not win against the best plain
    conversion here (by `select`'s rule: faster, or within noise and at least as accurate), that conversion is
    shipped instead: nothing is gained by the compression. A plain conversion chosen stays chosen. After
    `select` and the test split; on this machine only. Returns the decisions."""
    from edgeopt.report.headline import best_plain, plain_conversions

    chosen, base = report.chosen_candidate, report.baseline
    pool = [c for c in (chosen, *plain_conversions(report), base)
            if c is not None and c.id in sessions and c.latency_ms is not None]
    cands = {c.id: c for c in pool}
    ids = list(cands)
    if chosen is None or chosen.id not in cands or len(ids) < 2:
        return []
    before = {cid: cands[cid].latency_ms.p50 for cid in ids}
    feed = ex.numpy()
    config = dataclasses.replace(bench_config, max_time_s=_check_seconds(bench_config))
    stats = measure({cid: sessions[cid].timed_call(feed) for cid in ids}, config, seed=1)
    for cid in ids:
        cands[cid].latency_ms = stats[cid]
    plain = best_plain(report)  # among the figures just measured
    decisions: list[Decision] = []
    note = "the chosen model measured again beside " + " and ".join(i for i in ids if i != chosen.id)
    if chosen.steps and plain is not None and plain.id in cands and plain.status == "ok" and \
            not _faster(chosen, plain, stats[chosen.id].p50, stats[plain.id].p50):
        why = (f"measured again beside {plain.id}: p50 {stats[chosen.id].p50:.3f} ms vs {stats[plain.id].p50:.3f} "
               f"ms (the search measured {before[chosen.id]:.3f} vs {before[plain.id]:.3f} ms): the compression "
               "does not pay here, the plain conversion is shipped")
        chosen.status, chosen.reason = "rejected", why
        report.chosen = plain.id
        plain.status, plain.reason = "ok", "chosen: measured again, faster than the compressed choice"
        decisions.append(Decision(technique="latency_check", decision="rejected", reason=f"{chosen.id}: {why}"))
        note += f"; {chosen.id} was not faster, so {plain.id} is shipped"
    report.model.latency_check = LatencyCheck(
        measured=ids, search_p50={i: round(v, 4) for i, v in before.items()},
        p50={i: round(stats[i].p50, 4) for i in ids}, note=note)
    return decisions


def _faster(chosen: Candidate, plain: Candidate, chosen_ms: float, plain_ms: float) -> bool:
    """Does the compressed choice still win, by `select`'s rule: faster, and within noise of the plain
    conversion (`measured_tie`) only if at least as accurate."""
    if chosen_ms >= plain_ms:
        return False
    if not measured_tie(chosen_ms, plain_ms):
        return True
    return (chosen.accuracy if chosen.accuracy is not None else float("-inf")) >= (
        plain.accuracy if plain.accuracy is not None else float("-inf"))


def measure_all(cands: list[Candidate], sessions: dict, measure_locally: bool, prep, out_dir: Path,
                config: RunConfig, bench_config: BenchConfig, device_token: str | None, progress) -> dict | None:
    """Latency of every ok candidate: on remote `edgeopt agent`s (--device, once per agent; several of one kind
    share the candidates, several kinds each measure them all), interleaved here, or estimated. Returns what
    report.json's environment says about the remote devices, None when measured here."""
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
            prep.context.threads, bench_config.max_time_s, tensorrt=prep.profile.tensorrt, log=progress.log)
    latency(ok, sessions, measure_locally, prep.profile, prep.ex, bench_config)
    if config.deploy.goal == "throughput" and measure_locally:
        progress.stage("measuring throughput")
        throughput(ok, sessions, out_dir, config, prep.context.threads, bench_config.max_time_s, progress)
    return None


# a batch run at once may differ from its images run one by one by kernel order only (fp32 ~1e-6; INT8
# requantization flips a step here and there); beyond this the artifact does not serve batches correctly
BATCH_TOLERANCE = 0.05


def throughput(cands: list[Candidate], sessions: dict, out_dir: Path, config: RunConfig, threads: int | None,
               seconds: float, progress) -> None:
    """Every candidate's images/s and per-request p50/p99 under the goal's load (batch, streams), measured
    interleaved; each is first verified at the served batch against its images run one by one. A candidate
    that cannot serve the load is rejected with the reason."""
    import os

    from edgeopt.errors import first_line
    from edgeopt.measure.throughput import Load, ThroughputConfig, batch_consistency, measure_throughput, server_for

    load = Load(batch=config.deploy.serve_batch or 1, streams=config.deploy.streams)
    threads = threads or os.cpu_count()
    servers = {}
    for c in cands:
        try:
            gap = batch_consistency(sessions[c.id], load.batch) if c.id in sessions else 0.0
            if gap > BATCH_TOLERANCE:
                raise ValueError(f"batch {load.batch} run at once differs from one by one by {gap:.1%}")
            servers[c.id] = server_for(out_dir / c.artifact, c.runtime, c.precision, threads, load)
        except Exception as e:  # this candidate does not serve the load; the others are still measured
            c.status, c.reason = "rejected", f"cannot serve batch {load.batch}: {first_line(e, 200)}"
    if not servers:
        return
    stats = measure_throughput(servers, ThroughputConfig(max_time_s=seconds))
    for c in cands:
        if c.id in stats:
            c.throughput = stats[c.id]
    progress.log("throughput: " + ", ".join(f"{cid} {t.images_s:.0f} images/s" for cid, t in stats.items()))


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
