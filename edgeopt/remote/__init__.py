"""Remote measurement agent: `edgeopt agent` runs on the device (Jetson, Raspberry Pi, a CI runner);
the host uploads exported artifacts and gets back latency stats, the precision actually executed and
the device's environment.

Wire protocol (version PROTOCOL_VERSION), all requests carry `Authorization: Bearer TOKEN` and
`X-Edgeopt-Protocol: N`:

- `GET  /v1/info`     -> {"protocol", "edgeopt_version", "runtimes", "environment", "limits"}
- `POST /v1/measure`  multipart: `manifest` (JSON, see `Manifest`) and files `f0`, `f1`, ... ->
  {"status": "ok", "results": {id: {...}}, "environment": {...}, "job_s": ...} or
  {"status": "failed" | "timeout", "error": "..."} with HTTP 422 / 504.

401 wrong or missing token, 409 protocol mismatch, 413 upload too large, 503 queue full.
The server lives in `edgeopt.remote.server` (FastAPI + uvicorn), the client in `edgeopt.remote.client`
(httpx); both are imported on use so `edgeopt --help` stays fast."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

PROTOCOL_VERSION = 1
PROTOCOL_HEADER = "X-Edgeopt-Protocol"
DEFAULT_PORT = 8765
DEFAULT_MAX_UPLOAD_MB = 512.0
# runtime -> artifact formats it accepts; file suffixes are chosen by the agent, never by the client
FORMATS = {"onnx": (".onnx",), "openvino": (".xml", ".bin")}
RUNTIMES = ("onnxruntime", "openvino", "tensorrt")


class ArtifactSpec(BaseModel):
    """One model to measure. `id` is echoed back as a key only; it never becomes a path."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=200)
    format: str  # onnx | openvino
    runtime: str  # onnxruntime | openvino | tensorrt
    precision: str = "fp32"
    files: list[str]  # multipart field names, in FORMATS[format] order


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    protocol: int
    artifacts: list[ArtifactSpec] = Field(min_length=1, max_length=32)
    threads: int | None = Field(None, ge=1, le=1024)
    input_shape: list[int] | None = None
    input_shapes: dict[str, list[int]] | None = None  # several named inputs (each one fed)
    max_time_s: float = Field(10.0, gt=0, le=600)
    dataset: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,64}$")  # <data-dir>/<dataset>.npz on the agent


def read_token_file(path) -> str:
    """The shared secret: the first line of a file (so it never shows in `ps` or shell history)."""
    from pathlib import Path

    from edgeopt.errors import ConfigError

    p = Path(path)
    try:
        token = p.read_text().strip().splitlines()[0].strip() if p.read_text().strip() else ""
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read token file {p}: {e.strerror if isinstance(e, OSError) else e}") from None
    if len(token) < 16:
        raise ConfigError(f"token file {p} must hold a token of at least 16 characters "
                          "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))' > FILE`)")
    return token
