"""A fleet of measurement agents: several `--device` URLs measured from one run.

Devices are grouped by kind (what the agent reports: its `--target` label, else its board model, else its GPU,
else its CPU). Every candidate is measured once on each kind: the devices of one kind take candidates from one
queue in parallel, each candidate as its own job as on a single agent (which measures one job at a time). The
first kind given is the one the run selects on (the candidate's `latency_ms`); every kind's figures go to the
candidate's `latency_by_device`. A device that cannot be reached, or stops answering, is reported and its
candidates go to the remaining devices of its kind; the run stops only when a kind has no device left."""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from edgeopt.errors import ConfigError

HEALTH_TIMEOUT_S = 5.0  # an agent that does not answer its info request in this long is reported unreachable


def url_problem(url: str) -> str | None:
    """Why `url` is not an agent URL (http(s)://HOST[:PORT]), or None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a port that is not a number)
    except ValueError as e:
        return f"is not a URL ({e})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be a URL like http://HOST:8765"
    if parts.query or parts.fragment:
        return "must be a URL like http://HOST:8765, without a query"
    return None


def checked_urls(urls: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """The device URLs, each checked, duplicates refused (a device twice would take two jobs at once)."""
    if urls is None:
        return []
    urls = [urls] if isinstance(urls, str) else list(urls)
    for u in urls:
        problem = url_problem(u)
        if problem:
            raise ConfigError(f"--device {u!r} {problem}")
    seen = [u.rstrip("/") for u in urls]
    dups = sorted({u for u in seen if seen.count(u) > 1})
    if dups:
        raise ConfigError(f"--device {dups[0]} is given twice")
    return seen


def kind_of(info: dict) -> str:
    """The kind of device an agent is: its `--target` label, else its board, else its GPU, else its CPU."""
    if info.get("kind"):
        return str(info["kind"])
    env = info.get("environment") or {}
    return str(info.get("target") or env.get("device_model") or env.get("gpu") or env.get("cpu")
               or env.get("machine") or "unknown")


def health(url: str, token: str, timeout_s: float = HEALTH_TIMEOUT_S) -> dict[str, Any]:
    """One agent's health: reachable, ok (answered the info request), kind, target, version, busy, error."""
    from edgeopt.remote.client import AgentClient, AgentError

    row: dict[str, Any] = {"url": url, "reachable": False, "ok": False, "kind": None, "target": None,
                           "cpu": None, "gpu": None, "version": None, "runtimes": [], "busy": None, "error": None}
    try:
        info = AgentClient(url, token, timeout_s=timeout_s, connect_s=timeout_s).info()
    except AgentError as e:
        row["error"] = str(e)
        row["reachable"] = not str(e).startswith("cannot reach")  # it answered, but refused
        return row
    env, load = info.get("environment") or {}, info.get("load") or {}
    running, waiting = int(load.get("running") or 0), int(load.get("waiting") or 0)
    row.update(reachable=True, ok=True, kind=kind_of(info), target=info.get("target"), cpu=env.get("cpu"),
               gpu=env.get("gpu"), version=info.get("edgeopt_version"), runtimes=info.get("runtimes") or [],
               busy=running > 0 or waiting > 0, running=running, waiting=waiting)
    return row


def health_all(urls: list[str], token: str, timeout_s: float = HEALTH_TIMEOUT_S) -> list[dict[str, Any]]:
    """Every agent's health, asked in parallel, in the order given."""
    if not urls:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(urls))) as pool:
        return list(pool.map(lambda u: health(u, token, timeout_s), urls))


def check_devices(urls: list[str], token: str) -> list[dict[str, Any]]:
    """Before a run: every device's health; an error when none answers (a run would measure nowhere)."""
    from edgeopt.remote.client import AgentError

    rows = health_all(urls, token)
    if not any(r["ok"] for r in rows):
        raise AgentError("no measurement device answers: " + "; ".join(r["error"] for r in rows))
    return rows


@dataclass
class Device:
    url: str
    kind: str | None = None
    error: str | None = None  # why this device was dropped
    measured: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {"url": self.url, "kind": self.kind, "status": "failed" if self.error else "ok",
                "error": self.error, "measured": len(self.measured)}


def _stats(r) -> dict[str, Any]:
    s = r.latency
    return {"p50": s.p50, "p90": s.p90, "p99": s.p99, "mean": s.mean, "std": s.std, "n": s.n, "agent": r.agent_url,
            "device": r.device, "runtime": r.runtime, "precision_executed": r.precision_executed}


def measure_fleet(jobs: dict[str, dict[str, Any]], urls: list[str], token: str, measure_one, log=None):
    """Measure every job on one device of each kind. `jobs` is {candidate id: what `measure_one(url, cid, job)`
    needs}; `measure_one` returns the device's result or raises JobFailed (the candidate is refused: the others
    go on) or AgentError (the device is dropped and the candidate goes back to its kind's queue).
    Returns (kinds in the order given, {kind: {cid: result}}, {cid: why refused}, devices)."""
    from edgeopt.remote.client import AgentError, JobFailed

    log = log or (lambda message: None)
    devices = [Device(u) for u in urls]
    for d, row in zip(devices, health_all(urls, token), strict=True):
        if row["ok"]:
            d.kind = row["kind"]
        else:
            d.error = row["error"]
            log(f"device {d.url} dropped: {d.error}")
    kinds = list(dict.fromkeys(d.kind for d in devices if d.kind is not None))
    if not kinds:
        raise AgentError("no measurement device answers: " + "; ".join(f"{d.error}" for d in devices))
    results: dict[str, dict[str, Any]] = {k: {} for k in kinds}
    refused: dict[str, str] = {}
    queues = {k: deque(jobs) for k in kinds}
    lock = threading.Lock()

    def serve(d: Device) -> None:
        queue = queues[d.kind]
        while True:
            with lock:
                if not queue:
                    return
                cid = queue.popleft()
            try:
                r = measure_one(d.url, cid, jobs[cid])
            except JobFailed as e:
                with lock:
                    refused.setdefault(cid, f"on the device{'' if len(kinds) == 1 else f' {d.kind}'}: {e}")
                continue
            except AgentError as e:
                with lock:
                    d.error = str(e)
                    queue.appendleft(cid)  # the next device of this kind takes it
                log(f"device {d.url} failed: {d.error}; its candidates go to the other {d.kind} devices")
                return
            with lock:
                results[d.kind][cid] = r
                d.measured.append(cid)

    live = [d for d in devices if d.error is None]
    with ThreadPoolExecutor(max_workers=len(live)) as pool:
        list(pool.map(serve, live))
    for k in kinds:
        if queues[k]:
            gone = "; ".join(f"{d.url}: {d.error}" for d in devices if d.kind == k)
            raise AgentError(f"no {k} device left to measure {len(queues[k])} candidate(s): {gone}")
    return kinds, results, refused, devices


def fill_candidates(cands, kinds: list[str], results: dict, devices: list[Device]) -> dict[str, Any]:
    """Write each candidate's figures: the first kind's latency is the one the run selects on; every kind's in
    `latency_by_device` (kind -> p50/p90/p99/..., the agent and device). Returns report.json's environment of
    the device: the first kind's environment as on one agent, plus the fleet (every device, with its status)."""
    env: dict[str, Any] = {}
    first = results[kinds[0]]
    for c in cands:
        if c.id not in first:
            continue
        r = first[c.id]
        c.latency_ms, c.latency_source = r.latency, "measured"
        c.precision_executed = r.precision_executed
        c.measured_on = {"agent": r.agent_url, "device": r.device, "runtime": r.runtime,
                         "runtime_version": r.runtime_version}
        c.latency_by_device = {k: _stats(results[k][c.id]) for k in kinds if c.id in results[k]}
        env = {"agent": r.agent_url, **r.environment, "round_trip_s": r.round_trip_s, "job_s": r.job_s}
    if len(devices) > 1 or any(d.error for d in devices):
        env["kinds"] = kinds
        env["fleet"] = [d.record() for d in devices]
    return env


def failed_devices(report_environment: dict) -> list[dict[str, Any]]:
    """The devices a run dropped, from report.json's environment."""
    return [d for d in ((report_environment.get("device") or {}).get("fleet") or []) if d.get("status") == "failed"]

