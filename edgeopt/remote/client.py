"""Host side of the agent protocol (httpx): upload artifacts, get back what the device measured.

`measure_remote` is what `edgeopt benchmark --device` and `edgeopt optimize --device` call."""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from edgeopt.errors import ArtifactError, ConfigError, EdgeOptError, first_line, missing_backend
from edgeopt.formats import artifact_files, device_problem
from edgeopt.remote import PROTOCOL_HEADER, PROTOCOL_VERSION
from edgeopt.report import BenchmarkResult, LatencyStats


class AgentError(EdgeOptError):
    """The agent cannot be reached, refused the request, or the job failed on the device."""


class JobFailed(AgentError):
    """This job's artifacts were refused or failed on the device (the agent itself is fine): for a run's
    candidate, a rejected candidate, not a failed run."""


class RemoteBenchmarkResult(BenchmarkResult):
    """A BenchmarkResult measured on the device, with the device's environment and round-trip cost."""

    agent_url: str
    environment: dict[str, Any]
    accuracy: float | None = None
    metric: str | None = None
    job_s: float | None = None  # time the agent spent on the whole job (load, warm up, measure)
    round_trip_s: float | None = None  # host-side wall time of the whole request


def format_of(path: Path) -> str:
    """The artifact's format, from its suffix (the formats table)."""
    from edgeopt.formats import backend_for_artifact

    return backend_for_artifact(path).format


def default_runtime(fmt: str, preferred: list[str] | None = None) -> str:
    """The runtime the device should use for a format: the first of `preferred` (a target's runtimes)
    that accepts it (TensorRT builds its engine from ONNX there), else the format's own runtime."""
    from edgeopt.formats import device_backend

    return device_backend(fmt, None, preferred).runtime


class AgentClient:
    def __init__(self, url: str, token: str, timeout_s: float = 900.0, connect_s: float = 30.0):
        from edgeopt.remote.fleet import url_problem

        problem = url_problem(url)
        if problem:
            raise ConfigError(f"--device {url!r} {problem}")
        self.url, self.token = url.rstrip("/"), token
        self.timeout_s, self.connect_s = timeout_s, connect_s

    def _request(self, method: str, path: str, **kw):
        try:
            import httpx
        except ImportError:
            raise missing_backend("httpx (the agent client)", "agent") from None

        headers = {"Authorization": f"Bearer {self.token}", PROTOCOL_HEADER: str(PROTOCOL_VERSION)}
        try:
            with httpx.Client(timeout=httpx.Timeout(self.connect_s, read=self.timeout_s)) as c:
                r = c.request(method, self.url + path, headers=headers, **kw)
        except httpx.HTTPError as e:
            raise AgentError(f"cannot reach the agent at {self.url}: {first_line(e)}") from None
        try:
            body = r.json()
        except ValueError:
            body = {"error": r.text[:200]}
        if r.status_code == 401:
            raise AgentError(f"the agent at {self.url} refused the token (401): check --token-file")
        if r.status_code in (413, 400):  # this upload: too large, or an artifact the agent does not take
            raise JobFailed(f"agent {self.url} ({r.status_code}): {body.get('error')}")
        if r.status_code in (409, 503):
            raise AgentError(f"agent {self.url} ({r.status_code}): {body.get('error')}")
        if r.status_code in (422, 504) or body.get("status") not in (None, "ok"):
            raise JobFailed(f"the measurement job failed on the device ({body.get('status')}): {body.get('error')}")
        if r.status_code != 200:
            raise AgentError(f"agent {self.url} answered HTTP {r.status_code}: {body.get('error', body)}")
        return body

    def info(self) -> dict:
        return self._request("GET", "/v1/info")

    def measure(self, artifacts: dict[str, Path], runtimes: dict[str, str], precisions: dict[str, str],
                threads: int | None = None, input_shape: tuple[int, ...] | dict | None = None,
                max_time_s: float = 10.0, dataset: str | None = None) -> dict:
        named = isinstance(input_shape, dict)  # several named inputs: each shape by name
        manifest: dict[str, Any] = {"protocol": PROTOCOL_VERSION, "artifacts": [], "threads": threads,
                                    "input_shape": list(input_shape) if input_shape and not named else None,
                                    **({"input_shapes": {k: list(v) for k, v in input_shape.items()}}
                                       if named else {}),
                                    "max_time_s": max_time_s, "dataset": dataset}
        with ExitStack() as stack:
            files = {}
            for i, (aid, path) in enumerate(artifacts.items()):
                path = Path(path)
                if not path.is_file():
                    raise ArtifactError(f"artifact {path} does not exist")
                fmt = format_of(path)
                files_of = artifact_files(path)
                parts = files_of[-1:] + files_of[:-1]  # on the wire: the main file first, then its companions
                names = []
                for j, p in enumerate(parts):
                    if not p.is_file():
                        raise ArtifactError(f"{path} needs its file {p}, which does not exist")
                    names.append(f"f{i}_{j}")
                    files[names[-1]] = (p.name, stack.enter_context(open(p, "rb")), "application/octet-stream")
                manifest["artifacts"].append({"id": aid, "format": fmt, "runtime": runtimes[aid],
                                              "precision": precisions[aid], "files": names})
            return self._request("POST", "/v1/measure", data={"manifest": json.dumps(manifest)}, files=files)


def measure_remote(artifacts: dict[str, Path], url: str, token: str, precision: str | dict[str, str] = "fp32",
                   runtime: str | dict[str, str] | None = None, preferred_runtimes: list[str] | None = None,
                   threads: int | None = None, input_shape: tuple[int, ...] | None = None,
                   max_time_s: float = 10.0, dataset: str | None = None) -> dict[str, RemoteBenchmarkResult]:
    """Measure several artifacts on the device in one interleaved job; {id: result}. `runtime` defaults to
    the first of `preferred_runtimes` (the target's) that can run the artifact's format."""
    precisions = precision if isinstance(precision, dict) else {k: precision for k in artifacts}
    if isinstance(runtime, dict):
        runtimes = runtime
    else:
        runtimes = {k: runtime or default_runtime(format_of(p), preferred_runtimes) for k, p in artifacts.items()}
    client = AgentClient(url, token)
    t0 = time.perf_counter()
    body = client.measure(artifacts, runtimes, precisions, threads, input_shape, max_time_s, dataset)
    round_trip = time.perf_counter() - t0
    env = body.get("environment", {})
    device = env.get("device_model") or env.get("cpu") or "remote"
    out = {}
    for aid, r in body["results"].items():
        out[aid] = RemoteBenchmarkResult(
            artifact=str(artifacts[aid]), runtime=r["runtime"], runtime_version=r["runtime_version"],
            precision=r["precision"], precision_executed=r["precision_executed"],
            device=f"{device} ({r['device']})", threads=r.get("threads"), input_shape=r["input_shape"],
            latency=LatencyStats(**r["latency"]), agent_url=url, environment=env, accuracy=r.get("accuracy"),
            metric=r.get("metric"), job_s=body.get("job_s"), round_trip_s=round(round_trip, 4))
    return out


def device_runtime(candidate_runtime: str | None, target_runtimes: list[str], fmt: str = "onnx") -> str:
    """The runtime the device runs a candidate on. A target whose preferred runtime builds its artifact on the
    device (TensorRT from ONNX) gets the ONNX the planner exported for it."""
    from edgeopt.formats import device_backend

    return device_backend(fmt, candidate_runtime, target_runtimes).runtime


def measure_candidates(candidates, out_dir: Path, target_runtimes: list[str], url: str | list[str], token: str,
                       input_shape: tuple[int, ...], threads: int | None, max_time_s: float,
                       tensorrt: str | None = None, log=None) -> dict:
    """Measure a run's candidates on the agents (one URL or a fleet: edgeopt.remote.fleet), each as its own job,
    and fill in their latency (`measured`), the precision the device executed, and where. A candidate TensorRT's
    parser (release `tensorrt`) cannot read is rejected before it is sent; one whose job fails on a device is
    rejected with the device's reason, and the others are still measured. A device that cannot be reached or
    refuses the token is dropped (reported by `log` and in the returned environment's `fleet`) and its candidates
    go to the other devices of its kind; with none left the run stops (AgentError). Returns the device's
    environment."""
    from edgeopt.remote.fleet import checked_urls, fill_candidates, measure_fleet

    urls = checked_urls(url)
    cands = [c for c in candidates if c.artifact]
    jobs = {}
    for c in cands:
        path = Path(out_dir) / c.artifact
        runtime = device_runtime(c.runtime, target_runtimes, format_of(Path(c.artifact)))
        problem = device_problem(path, runtime, tensorrt)
        if problem is None:
            jobs[c.id] = {"path": path, "runtime": runtime, "precision": c.precision or "fp32"}
        else:
            c.status, c.reason = "rejected", problem
    if not jobs:  # every candidate was refused here: no device needs to be asked
        return {}

    def measure_one(device_url: str, cid: str, job: dict):
        return measure_remote({cid: job["path"]}, device_url, token, precision={cid: job["precision"]},
                              runtime={cid: job["runtime"]}, threads=threads, input_shape=input_shape,
                              max_time_s=max_time_s)[cid]

    kinds, results, refused, devices = measure_fleet(jobs, urls, token, measure_one, log)
    for c in cands:
        if c.id in refused:
            c.status, c.reason = "rejected", refused[c.id]
    return fill_candidates([c for c in cands if c.id not in refused], kinds, results, devices)
