"""`edgeopt agent`: the measurement agent that runs on the device."""

from __future__ import annotations

from pathlib import Path

import typer

from edgeopt.cli.app import app


@app.command()
def agent(
    host: str = typer.Option("127.0.0.1", help="address to bind; loopback by default (warns otherwise)"),
    port: int = typer.Option(8765, help="TCP port"),
    token_file: Path = typer.Option(..., help="file whose first line is the shared token (>= 16 characters)"),
    max_upload_mb: float = typer.Option(512.0, help="largest upload accepted (413 above)"),
    job_timeout: float = typer.Option(300.0, help="seconds a measurement job may take before it is killed"),
    queue: int = typer.Option(8, help="jobs allowed to wait while one is measured (503 above)"),
    data_dir: Path = typer.Option(None, help="folder of NAME.npz files (arrays x, y) for accuracy on the device"),
    workdir: Path = typer.Option(None, help="folder in which the agent creates its private job folder "
                                           "(default: the temp dir); a relative path is resolved at start"),
    trust_engines: bool = typer.Option(False, "--trust-engines", help=(
        "accept uploaded engines (e.g. TensorRT .engine files), which the runtime deserializes as native code; "
        "without it the agent only takes ONNX for TensorRT and builds the engine itself")),
) -> None:
    """Serve latency measurements on this device for `optimize/benchmark --device http://HOST:PORT`.

    Each upload is stored under the agent's own folder with generated names, measured in its own process
    (one job at a time, per-job timeout, cancelled when its client disconnects) and deleted; a bad artifact
    fails its job, not the agent. TensorRT jobs upload ONNX: the engine is built here, for this GPU."""
    from edgeopt.errors import ConfigError
    from edgeopt.remote import read_token_file
    from edgeopt.remote.server import AgentConfig, serve

    if not 0 < port < 65536:
        raise ConfigError(f"--port must be 1..65535, got {port}")
    if max_upload_mb <= 0 or job_timeout <= 0 or queue < 1:
        raise ConfigError("--max-upload-mb and --job-timeout must be positive and --queue at least 1")
    if data_dir is not None and not data_dir.is_dir():
        raise ConfigError(f"--data-dir {data_dir} is not a folder")
    config = AgentConfig(token=read_token_file(token_file), max_upload_bytes=int(max_upload_mb * 2**20),
                         job_timeout_s=job_timeout, max_queue=queue, data_dir=data_dir,
                         workdir=workdir.resolve() if workdir else None, trust_engines=trust_engines)
    serve(config, host=host, port=port)
