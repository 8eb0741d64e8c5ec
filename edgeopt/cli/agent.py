"""`edgeopt agent`: the measurement agent that runs on the device; `edgeopt agents`: a fleet's health."""

from __future__ import annotations

from pathlib import Path

import typer

from edgeopt.cli.app import app
from edgeopt.cli.common import out


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
    target: str = typer.Option(None, help="what this device is, as a fleet of agents groups devices (e.g. the "
                               "target profile: jetson); default: its board model, else its GPU, else its CPU"),
    threads: int = typer.Option(None, help="runtime threads a job may use at most (e.g. 1 for each of several "
                                "agents sharing one machine); default: what the client asks"),
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
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    if target is not None and not target.strip():
        raise ConfigError("--target must not be empty")
    if data_dir is not None and not data_dir.is_dir():
        raise ConfigError(f"--data-dir {data_dir} is not a folder")
    config = AgentConfig(token=read_token_file(token_file), max_upload_bytes=int(max_upload_mb * 2**20),
                         job_timeout_s=job_timeout, max_queue=queue, data_dir=data_dir,
                         workdir=workdir.resolve() if workdir else None, trust_engines=trust_engines,
                         target=target, max_threads=threads)
    serve(config, host=host, port=port)


@app.command()
def agents(
    urls: list[str] = typer.Argument(None, help="agent URLs, e.g. http://jetson1:8765 http://jetson2:8765"),
    token_file: Path = typer.Option(None, help="the agents' token file (default: the one of --config)"),
    config: Path = typer.Option(None, "--config", help="a run config (e.g. OUT/run.yaml): its measure.device "
                                "URLs and token file"),
    timeout: float = typer.Option(5.0, help="seconds to wait for each agent's answer"),
    as_json: bool = typer.Option(False, "--json", help="print the health of each agent as JSON"),
) -> None:
    """List measurement agents with their health: reachable, kind (how a fleet groups them), target, version,
    busy. Exit 0 when every agent answers, 1 when one does not. Example: edgeopt agents http://127.0.0.1:8765
    --token-file token"""
    import json

    from edgeopt.errors import ConfigError
    from edgeopt.remote import read_token_file
    from edgeopt.remote.fleet import checked_urls, health_all

    listed = list(urls or [])
    if config is not None:
        from edgeopt.config import load_config

        measure = load_config(config).measure
        listed += [u for u in measure.device or [] if u not in listed]
        token_file = token_file or (Path(measure.token_file) if measure.token_file else None)
    if not listed:
        raise ConfigError("give agent URLs (edgeopt agents http://HOST:8765 ...) or --config with measure.device")
    if token_file is None:
        raise ConfigError("--token-file is needed to ask the agents")
    if not (timeout > 0):
        raise ConfigError(f"--timeout must be positive, got {timeout}")
    rows = health_all(checked_urls(listed), read_token_file(token_file), timeout)
    if as_json:
        out.print_json(json.dumps(rows))
    else:
        from rich.table import Table

        table = Table(title="edgeopt agents")
        for h in ("agent", "reachable", "kind", "target", "version", "busy", "error"):
            table.add_column(h, overflow="fold")
        for r in rows:
            busy = "—" if r["busy"] is None else (f"yes ({r['running']} running, {r['waiting']} waiting)"
                                                    if r["busy"] else "no")
            table.add_row(r["url"], "yes" if r["reachable"] else "no", r["kind"] or "—", r["target"] or "—",
                          r["version"] or "—", busy, r["error"] or "", style=None if r["ok"] else "red")
        out.print(table)
    if not all(r["ok"] for r in rows):
        raise typer.Exit(1)
