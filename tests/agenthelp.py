"""An agent served in this test process (uvicorn in a thread): the format rows registered by a test are the
agent's rows, and its log records reach pytest's caplog. Jobs still run in their own worker process."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

TOKEN = "test-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def agent_in_process(workdir: Path, **config):
    import uvicorn

    from edgeopt.remote.server import AgentConfig, create_app

    cfg = AgentConfig(token=TOKEN, workdir=workdir, **config)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(cfg), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("in-process agent did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", cfg
    finally:
        server.should_exit = True
        thread.join(15)
