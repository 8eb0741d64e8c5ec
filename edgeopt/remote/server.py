"""The agent's HTTP server (FastAPI on uvicorn). Security and robustness, in the order a request meets them:

1. `Guard` (raw ASGI, before any body is read): the bearer token, compared in constant time (401); the
   protocol version (409); the upload size, from Content-Length and by counting the streamed body (413).
2. The manifest is validated; files are stored under the agent's own work dir with names the agent
   generates (`job-XXXX/a0/model.onnx`): nothing the client sends becomes a path.
3. One measurement at a time (the others wait in a bounded queue: 503 when full), each in its own
   process with a per-job timeout, so a corrupt or malicious artifact fails its job and nothing else; a job
   whose client has gone is cancelled, waiting or running.
4. What runs is decided by the agent's formats table: an artifact in a format its runtime only deserializes
   (a TensorRT engine: native code for the GPU) is refused unless the agent was started with --trust-engines;
   TensorRT jobs upload ONNX and the engine is built on the device."""


# no `from __future__ import annotations`: FastAPI must see the real `Request` class of the handler
import asyncio
import dataclasses
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from edgeopt.errors import first_line, one_line
from edgeopt.remote import PROTOCOL_VERSION, Manifest
from edgeopt.remote.guard import Guard, TooLarge, json_response

PKG_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the edgeopt package, for the worker


@dataclass
class AgentConfig:
    token: str
    max_upload_bytes: int = 512 * 2**20
    job_timeout_s: float = 300.0
    max_queue: int = 8  # jobs allowed to wait while one is measured
    data_dir: Path | None = None
    workdir: Path | None = None  # a private folder is created inside (default: in the temp dir)
    keep_jobs: bool = False
    trust_engines: bool = False  # accept uploaded engines (formats whose runtime only deserializes them)
    target: str | None = None  # what this device is, as a fleet groups it (default: its board, GPU or CPU)
    max_threads: int | None = None  # a job's runtime threads at most (several agents sharing one machine)
    running: int = field(default=0, init=False)
    waiting: int = field(default=0, init=False)
    measured: int = field(default=0, init=False)  # jobs run since the start


def installed_runtimes() -> list[str]:
    from edgeopt.formats import rows

    return [b.runtime for b in rows() if importlib.util.find_spec(b.module) is not None]


def _first_line(e: BaseException) -> str:
    from pydantic import ValidationError

    if isinstance(e, ValidationError):  # the field and what is wrong with it, not pydantic's headline
        return str(one_line(e, "manifest"))[:300]
    return first_line(e, 300, with_type=False)


async def _run_worker(job_dir: Path, timeout_s: float, gone) -> tuple[int, dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PKG_ROOT), os.environ.get("PYTHONPATH")]))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgeopt.remote.worker", str(job_dir), cwd=str(job_dir), env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    talk = asyncio.ensure_future(proc.communicate())
    deadline = asyncio.get_running_loop().time() + timeout_s
    outcome = None
    while not talk.done():
        await asyncio.wait({talk}, timeout=0.2)
        if talk.done():
            break
        if asyncio.get_running_loop().time() > deadline:
            outcome = 504, {"status": "timeout",
                            "error": f"job exceeded the agent's per-job timeout of {timeout_s:g} s"}
        elif await gone():  # nobody is waiting for the answer: free the device for the next job
            outcome = 499, {"status": "cancelled", "error": "the client disconnected"}
        if outcome:
            proc.kill()
            await talk
            return outcome
    _, err = talk.result()
    result = job_dir / "result.json"
    if result.is_file():
        body = json.loads(result.read_text())
        return (200 if body.get("status") == "ok" else 422), body
    tail = (err or b"").decode(errors="replace").strip().splitlines()[-1:] or [""]
    return 422, {"status": "failed", "error": f"the measuring process died (exit code {proc.returncode}) "
                                              f"{tail[0][:200]}".strip()}


async def _acquire(lock: asyncio.Lock, gone) -> bool:
    """Wait for the device; False when the client left while waiting."""
    while True:
        try:
            await asyncio.wait_for(lock.acquire(), 0.2)
            return True
        except asyncio.TimeoutError:
            if await gone():
                return False


def _scrub(body: dict, *folders: Path) -> dict:
    """Error texts name files relative to the job: the agent's own folders are not the client's business."""
    for key in ("error", "detail"):
        if isinstance(body.get(key), str):
            for f in folders:
                body[key] = body[key].replace(str(f) + os.sep, "").replace(str(f), ".")
    return body


def _write_job(job_dir: Path, manifest: Manifest, form, config: AgentConfig) -> None:
    from edgeopt.formats import backend_for

    threads = manifest.threads
    if config.max_threads:
        threads = min(threads or config.max_threads, config.max_threads)
    job = {"threads": threads, "input_shape": manifest.input_shape, "input_shapes": manifest.input_shapes,
           "max_time_s": manifest.max_time_s, "artifacts": []}
    if manifest.dataset:
        job["data_file"] = str(config.data_dir / f"{manifest.dataset}.npz")
    for i, a in enumerate(manifest.artifacts):
        sub = job_dir / f"a{i}"
        sub.mkdir()
        fmt = backend_for(a.format)
        for fieldname, suffix in zip(a.files, (fmt.suffix, *fmt.companions), strict=True):  # main file first
            with open(sub / f"model{suffix}", "wb") as f:
                shutil.copyfileobj(form[fieldname].file, f)
        row = dataclasses.asdict(backend_for(a.runtime))  # the worker runs exactly the row checked here
        job["artifacts"].append({"id": a.id, "runtime": a.runtime, "format": fmt.format, "precision": a.precision,
                                 "path": f"a{i}/model{fmt.suffix}", "row": row})
    (job_dir / "job.json").write_text(json.dumps(job))


def create_app(config: AgentConfig):
    from fastapi import FastAPI, Request
    from starlette.requests import ClientDisconnect

    from edgeopt.remote.fleet import kind_of
    from edgeopt.remote.worker import device_environment, gpu_name

    base = Path(config.workdir).resolve() if config.workdir else None  # a relative --workdir: from the start dir
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
    # a private folder of our own (0700 by mkdtemp) inside the user's, whose mode is left as it is
    workdir = Path(tempfile.mkdtemp(prefix="edgeopt-agent-", dir=base))
    lock = asyncio.Lock()
    env = device_environment()
    gpu = gpu_name()
    if gpu:
        env["gpu"] = gpu
    kind = kind_of({"target": config.target, "environment": env})
    api = FastAPI(title="edgeopt agent", docs_url=None, redoc_url=None, openapi_url=None)
    api.state.workdir = workdir

    @api.get("/v1/info")
    async def info():
        return {"protocol": PROTOCOL_VERSION, "edgeopt_version": env["edgeopt_version"], "kind": kind,
                "target": config.target, "runtimes": installed_runtimes(), "environment": env,
                "limits": {"max_upload_bytes": config.max_upload_bytes, "job_timeout_s": config.job_timeout_s,
                           "max_queue": config.max_queue, "trust_engines": config.trust_engines,
                           "max_threads": config.max_threads},
                "load": {"running": config.running, "waiting": config.waiting}}

    @api.post("/v1/measure")
    async def measure(request: Request):
        form = None
        try:
            form = await request.form(max_files=64, max_fields=8)
            manifest = Manifest.model_validate_json(str(form.get("manifest") or ""))
        except TooLarge:  # answered here: the framework would turn an escaping exception into a 500
            mb = config.max_upload_bytes / 2**20
            return json_response(413, {"status": "failed", "error": f"upload larger than {mb:.1f} MB"})
        except ClientDisconnect:  # the client left mid-upload: nobody to answer, nothing to log
            return json_response(499, {"status": "cancelled", "error": "the client disconnected"})
        except Exception as e:
            return json_response(400, {"status": "failed", "error": f"bad request: {_first_line(e)}"})
        problem = _check(manifest, form, config)
        if problem:
            await form.close()
            return json_response(400, {"status": "failed", "error": problem})
        if config.waiting >= config.max_queue:
            await form.close()
            return json_response(503, {"status": "failed", "error": (
                f"agent busy: {config.running} job measuring and {config.waiting} waiting "
                f"(this agent lets {config.max_queue} wait: option --queue)")})
        job_dir = Path(tempfile.mkdtemp(prefix="job-", dir=workdir))
        config.waiting += 1
        queued = True
        try:
            _write_job(job_dir, manifest, form, config)
            if not await _acquire(lock, request.is_disconnected):
                return json_response(499, {"status": "cancelled", "error": "the client disconnected"})
            config.waiting, config.running, queued = config.waiting - 1, config.running + 1, False
            config.measured += 1
            try:  # one measurement at a time: concurrent jobs would time each other
                status, body = await _run_worker(job_dir, config.job_timeout_s, request.is_disconnected)
            finally:
                config.running -= 1
                lock.release()
        finally:
            config.waiting -= queued
            await form.close()
            if not config.keep_jobs:
                shutil.rmtree(job_dir, ignore_errors=True)
        return json_response(status, _scrub(body, job_dir, workdir))

    return Guard(api, config)


def _check(m: Manifest, form, config: AgentConfig) -> str | None:
    from edgeopt.formats import BACKENDS, backend_for, runtime_names

    if m.protocol != PROTOCOL_VERSION:
        return f"protocol mismatch: agent {PROTOCOL_VERSION}, manifest {m.protocol}"
    if len({a.id for a in m.artifacts}) != len(m.artifacts):
        return "artifact ids must be unique"
    for a in m.artifacts:
        if a.format not in BACKENDS.names():
            return f"artifact {a.id!r}: unknown format {a.format!r} (known: {', '.join(BACKENDS.names())})"
        if a.runtime not in runtime_names():
            return f"artifact {a.id!r}: unknown runtime {a.runtime!r} (known: {', '.join(runtime_names())})"
        fmt, row = backend_for(a.format), backend_for(a.runtime)
        if a.format not in row.accepts:
            if a.format != row.format:
                return f"artifact {a.id!r}: {a.runtime} does not run {a.format} artifacts on this agent"
            if not config.trust_engines:
                return (f"artifact {a.id!r}: this agent does not load uploaded {a.format} files ({a.runtime} "
                        f"deserializes them as native code); send {' or '.join(row.accepts)} and the agent builds "
                        "it here, or start the agent with --trust-engines")
        if len(a.files) != len(fmt.files):
            return f"artifact {a.id!r}: format {a.format} needs {len(fmt.files)} file(s)"
        for f in a.files:
            if not hasattr(form.get(f), "file"):
                return f"artifact {a.id!r}: file field {f!r} missing from the upload"
    if m.dataset:
        if config.data_dir is None:
            return "this agent has no --data-dir: accuracy on device data is not available"
        if not (config.data_dir / f"{m.dataset}.npz").is_file():
            return f"dataset {m.dataset!r} not found in the agent's data dir"
    return None


def exposure_warning(host: str) -> str | None:
    """A warning when the agent is reachable from other machines (anything but loopback)."""
    import ipaddress

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        loopback = False
    if loopback:
        return None
    return (f"warning: the agent listens on {host}, reachable from the network: anyone with the token can run "
            "models here; prefer an SSH tunnel or a trusted network (traffic is plain HTTP)")


def serve(config: AgentConfig, host: str = "127.0.0.1", port: int = 8765) -> None:
    from edgeopt.errors import missing_backend

    try:
        import fastapi  # noqa: F401  (create_app's web framework: checked before anything starts)
        import uvicorn
    except ImportError:
        raise missing_backend("the agent's web server (fastapi, uvicorn)", "agent") from None

    warning = exposure_warning(host)
    if warning:
        print(warning, file=sys.stderr)
    print(f"edgeopt agent (protocol {PROTOCOL_VERSION}) on http://{host}:{port}", file=sys.stderr, flush=True)
    uvicorn.run(create_app(config), host=host, port=port, log_level="warning", access_log=False)
