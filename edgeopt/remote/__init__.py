"""Remote measurement agent: `edgeopt agent` runs on the device (Jetson, Raspberry Pi, a CI runner);
the host uploads exported artifacts and gets back latency stats, the precision actually executed and
the device's environment.

Wire protocol (version PROTOCOL_VERSION), all requests carry `Authorization: Bearer TOKEN` and
`X-Edgeopt-Protocol: N`:

- `GET  /v1/info`     -> {"protocol", "edgeopt_version", "kind", "target", "runtimes", "environment", "limits",
  "load"}
- `POST /v1/measure`  multipart: `manifest` (JSON, see `Manifest`) and files `f0`, `f1`, ... ->
  {"status": "ok", "results": {id: {...}}, "environment": {...}, "job_s": ...} or
  {"status": "failed" | "timeout", "error": "..."} with HTTP 422 / 504.

401 wrong or missing token, 409 protocol mismatch, 413 upload too large, 503 queue full.
The server lives in `edgeopt.remote.server` (FastAPI + uvicorn), the client in `edgeopt.remote.client`
(httpx); both are imported on use so `edgeopt --help` stays fast."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

PROTOCOL_VERSION = 1
PROTOCOL_HEADER = "X-Edgeopt-Protocol"
DEFAULT_PORT = 8765
DEFAULT_MAX_UPLOAD_MB = 512.0
# the largest input a job may ask for: the agent allocates it (float32) for every artifact of the job
MAX_INPUT_ELEMENTS = 2**26  # 256 MB of float32
# Formats, runtimes and each artifact's files come from the formats table (edgeopt.formats): file suffixes
# are chosen by the agent from its rows, never by the client.


class ArtifactSpec(BaseModel):
    """One model to measure. `id` is echoed back as a key only; it never becomes a path."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=200)
    format: str  # a format row's name
    runtime: str  # a format row's runtime
    precision: str = "fp32"
    files: list[str]  # multipart field names, in the order of the format row's files


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    protocol: int
    artifacts: list[ArtifactSpec] = Field(min_length=1, max_length=32)
    threads: int | None = Field(None, ge=1, le=1024)
    input_shape: list[int] | None = Field(None, min_length=1, max_length=8)
    # several named inputs (each one fed)
    input_shapes: dict[str, list[int]] | None = Field(None, max_length=16)
    max_time_s: float = Field(10.0, gt=0, le=600)
    dataset: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,64}$")  # <data-dir>/<dataset>.npz on the agent

    @field_validator("input_shape")
    @classmethod
    def _bounded(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            if any(d < 1 for d in v):
                raise ValueError("input_shape dimensions must be positive")
            if math.prod(v) > MAX_INPUT_ELEMENTS:
                raise ValueError(f"input_shape {v} has {math.prod(v)} elements; this agent allows at most "
                                 f"{MAX_INPUT_ELEMENTS}")
        return v

    @field_validator("input_shapes")
    @classmethod
    def _each_bounded(cls, v: dict[str, list[int]] | None) -> dict[str, list[int]] | None:
        for shape in (v or {}).values():
            cls._bounded(shape)
        if v and sum(math.prod(s) for s in v.values()) > MAX_INPUT_ELEMENTS:
            raise ValueError(f"input_shapes hold more than {MAX_INPUT_ELEMENTS} elements in all")
        return v


def read_token_file(path) -> str:
    """The shared secret: the first line of a file (so it never shows in `ps` or shell history). A file that
    others can read is accepted with a warning, as ssh does for keys."""
    from edgeopt.errors import ConfigError

    p = Path(path)
    try:
        text = p.read_text().strip()
        mode = os.stat(p).st_mode & 0o777
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read token file {p}: {e.strerror if isinstance(e, OSError) else e}") from None
    token = text.splitlines()[0].strip() if text else ""
    if len(token) < 16:
        raise ConfigError(f"token file {p} must hold a token of at least 16 characters "
                          "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))' > FILE`)")
    if mode & 0o077 and os.name == "posix":
        print(f"warning: token file {p} is readable by others (mode {mode:04o}); run `chmod 600 {p}`",
              file=sys.stderr)
    return token
