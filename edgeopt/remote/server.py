"""The agent's HTTP server (FastAPI on uvicorn). Security and robustness, in the order a request meets them:

1. `Guard` (raw ASGI, before any body is read): the bearer token, compared in constant time (401); the
   protocol version (409); the upload size, from Content-Length and by counting the streamed body (413).
2. The manifest is validated; files are stored under the agent's own work dir with names the agent
   generates (`job-XXXX/a0/model.onnx`): nothing the client sends becomes a path.
3. One measurement at a time (the others wait in a bounded queue: 503 when full), each in its own
   process with a per-job timeout, so a corrupt or malicious artifact fails its job and nothing else."""


# no `from __future__ import annotations`: FastAPI must see the real `Request` class of the handler
import asyncio
import importlib.util
import json
import os
import secrets
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from edgeopt.remote import FORMATS, PROTOCOL_HEADER, PROTOCOL_VERSION, RUNTIMES, Manifest

PKG_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the edgeopt package, for the worker


@dataclass
class AgentConfig:
    token: str
    max_upload_bytes: int = 512 * 2**20
    job_timeout_s: float = 300.0
    max_queue: int = 8
    data_dir: Path | None = None
    workdir: Path | None = None  # default: a fresh private temp dir
    keep_jobs: bool = False
    pending: int = field(default=0, init=False)


class _TooLarge(Exception):
    pass


def _json_response(status: int, body: dict):
    from starlette.responses import JSONResponse

    return JSONResponse(body, status_code=status)


class Guard:
    """Token, protocol and size checks before the body is read, so an unauthenticated or oversized
    upload costs the agent nothing."""

    def __init__(self, app, config: AgentConfig):
        self.app, self.config = app, config
        self.expected = f"Bearer {config.token}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        if not secrets.compare_digest(headers.get("authorization", b""), self.expected):
            return await _json_response(401, {"error": "missing or wrong token"})(scope, receive, send)
        proto = headers.get(PROTOCOL_HEADER.lower(), b"").decode("latin-1")
        if proto != str(PROTOCOL_VERSION):
            return await _json_response(409, {
                "error": f"protocol mismatch: this agent speaks protocol {PROTOCOL_VERSION}, the client "
                         f"{proto or 'none'}; install the same edgeopt version on both sides",
                "protocol": PROTOCOL_VERSION})(scope, receive, send)
        limit = self.config.max_upload_bytes
        try:
            declared = int(headers.get("content-length", b"0") or 0)
        except ValueError:
            declared = 0
        if declared > limit:
            return await self._too_large(scope, receive, send)
        seen, started = 0, False

        async def counting_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return msg

        async def tracking_send(msg):
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._too_large(scope, receive, send)

    async def _too_large(self, scope, receive, send):
        mb = self.config.max_upload_bytes / 2**20
        await _json_response(413, {"error": f"upload larger than this agent's limit of {mb:.1f} MB "
                                            "(agent option --max-upload-mb)"})(scope, receive, send)


def installed_runtimes() -> list[str]:
    have = [r for r, mod in (("onnxruntime", "onnxruntime"), ("openvino", "openvino"))
            if importlib.util.find_spec(mod) is not None]
    if importlib.util.find_spec("tensorrt") is not None:
        have.append("tensorrt")
    return have


async def _run_worker(job_dir: Path, timeout_s: float) -> tuple[int, dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PKG_ROOT), os.environ.get("PYTHONPATH")]))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgeopt.remote.worker", str(job_dir), cwd=str(job_dir), env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return 504, {"status": "timeout", "error": f"job exceeded the agent's per-job timeout of {timeout_s:g} s"}
    result = job_dir / "result.json"
    if result.is_file():
        body = json.loads(result.read_text())
        return (200 if body.get("status") == "ok" else 422), body
    tail = (err or b"").decode(errors="replace").strip().splitlines()[-1:] or [""]
    return 422, {"status": "failed", "error": f"the measuring process died (exit code {proc.returncode}) "
                                              f"{tail[0][:200]}".strip()}


def create_app(config: AgentConfig):
    from fastapi import FastAPI, Request

    from edgeopt.remote.worker import device_environment

    workdir = Path(config.workdir or tempfile.mkdtemp(prefix="edgeopt-agent-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o700)
    lock = asyncio.Lock()
    env = device_environment()
    api = FastAPI(title="edgeopt agent", docs_url=None, redoc_url=None, openapi_url=None)

    @api.get("/v1/info")
    async def info():
        return {"protocol": PROTOCOL_VERSION, "edgeopt_version": env["edgeopt_version"],
                "runtimes": installed_runtimes(), "environment": env,
                "limits": {"max_upload_bytes": config.max_upload_bytes, "job_timeout_s": config.job_timeout_s,
                           "max_queue": config.max_queue}}

    @api.post("/v1/measure")
    async def measure(request: Request):
        try:
            form = await request.form(max_files=64, max_fields=8)
            manifest = Manifest.model_validate_json(str(form.get("manifest") or ""))
        except _TooLarge:  # answered here: the framework would turn an escaping exception into a 500
            mb = config.max_upload_bytes / 2**20
            return _json_response(413, {"status": "failed", "error": f"upload larger than {mb:.1f} MB"})
        except Exception as e:
            return _json_response(400, {"status": "failed", "error": f"bad request: {str(e).splitlines()[0][:300]}"})
        problem = _check(manifest, form, config)
        if problem:
            return _json_response(400, {"status": "failed", "error": problem})
        if config.pending >= config.max_queue:
            return _json_response(503, {"status": "failed", "error": f"agent busy: {config.pending} jobs queued"})
        job_dir = Path(tempfile.mkdtemp(prefix="job-", dir=workdir))
        config.pending += 1
        try:
            job = {"threads": manifest.threads, "input_shape": manifest.input_shape,
                   "input_shapes": manifest.input_shapes,
                   "max_time_s": manifest.max_time_s, "artifacts": []}
            if manifest.dataset:
                job["data_file"] = str(config.data_dir / f"{manifest.dataset}.npz")
            for i, a in enumerate(manifest.artifacts):
                sub = job_dir / f"a{i}"
                sub.mkdir()
                for fieldname, suffix in zip(a.files, FORMATS[a.format], strict=True):
                    with open(sub / f"model{suffix}", "wb") as f:
                        shutil.copyfileobj(form[fieldname].file, f)
                job["artifacts"].append({"id": a.id, "runtime": a.runtime, "precision": a.precision,
                                         "path": str(sub / f"model{FORMATS[a.format][0]}")})
            (job_dir / "job.json").write_text(json.dumps(job))
            async with lock:  # one measurement at a time: concurrent jobs would time each other
                status, body = await _run_worker(job_dir, config.job_timeout_s)
        finally:
            config.pending -= 1
            await form.close()
            if not config.keep_jobs:
                shutil.rmtree(job_dir, ignore_errors=True)
        return _json_response(status, body)

    return Guard(api, config)


def _check(m: Manifest, form, config: AgentConfig) -> str | None:
    if m.protocol != PROTOCOL_VERSION:
        return f"protocol mismatch: agent {PROTOCOL_VERSION}, manifest {m.protocol}"
    if len({a.id for a in m.artifacts}) != len(m.artifacts):
        return "artifact ids must be unique"
    for a in m.artifacts:
        if a.format not in FORMATS:
            return f"artifact {a.id!r}: unknown format {a.format!r} (known: {', '.join(FORMATS)})"
        if a.runtime not in RUNTIMES:
            return f"artifact {a.id!r}: unknown runtime {a.runtime!r} (known: {', '.join(RUNTIMES)})"
        if len(a.files) != len(FORMATS[a.format]):
            return f"artifact {a.id!r}: format {a.format} needs {len(FORMATS[a.format])} file(s)"
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
    import uvicorn

    warning = exposure_warning(host)
    if warning:
        print(warning, file=sys.stderr)
    print(f"edgeopt agent (protocol {PROTOCOL_VERSION}) on http://{host}:{port}", file=sys.stderr, flush=True)
    uvicorn.run(create_app(config), host=host, port=port, log_level="warning", access_log=False)
