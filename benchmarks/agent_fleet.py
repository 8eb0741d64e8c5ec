"""A fleet of measurement agents: the wall time of measuring 8 candidates on two agents on this machine vs on
one of them (goal: <= 0.6x). Both agents are real `edgeopt agent` processes on loopback, each capped with
`--threads` (default 1, so that two agents on a 2-core machine do not time each other's threads); the one-agent
and two-agent runs alternate, so the machine's load falls on both alike. The ratio is bounded by the cores: two
agents can only halve the time when each has a core of its own.

    flock /tmp/edgeopt-bench.lock python benchmarks/agent_fleet.py [--rounds 3] [--bench-time 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_agent(tmp: Path, token_file: Path, threads: int) -> tuple[subprocess.Popen, str]:
    from edgeopt.remote.client import AgentClient, AgentError

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edgeopt", "agent", "--port", str(port), "--token-file",
                             str(token_file), "--workdir", str(tmp), "--threads", str(threads)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            AgentClient(url, token_file.read_text().strip(), timeout_s=5).info()
            return proc, url
        except AgentError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("agent did not start")


def export_candidates(folder: Path, n: int, size: int) -> None:
    """n ONNX candidates: a small CNN at n widths, so the jobs are not all the same."""
    import torch
    from torch import nn

    from edgeopt import export

    for i in range(n):
        w = 8 + 4 * i
        torch.manual_seed(i)
        net = nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w, 10)).eval()
        export(net, torch.randn(1, 3, size, size), format="onnx", out=folder / f"c{i}.onnx")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bench-time", type=float, default=1.0, help="max seconds of measurement per job")
    ap.add_argument("--agent-threads", type=int, default=1)
    ap.add_argument("--size", type=int, default=64, help="input H=W")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    from edgeopt.remote.client import measure_candidates

    token = secrets.token_urlsafe(32)
    result: dict = {"cpu_count": os.cpu_count(), "load_1min_before": os.getloadavg()[0], "candidates":
                    args.candidates, "bench_time_s": args.bench_time, "agent_threads": args.agent_threads,
                    "one_agent_s": [], "two_agents_s": [], "split": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        token_file = tmp / "token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        models = tmp / "models"
        models.mkdir()
        export_candidates(models, args.candidates, args.size)
        agents = [start_agent(tmp, token_file, args.agent_threads) for _ in range(2)]
        urls = [u for _, u in agents]
        try:
            for r in range(args.rounds):
                for fleet in ([urls[0]], urls) if r % 2 == 0 else (urls, [urls[0]]):
                    cands = candidates_only(models, args.candidates)
                    t0 = time.perf_counter()
                    env = measure_candidates(cands, models, ["onnxruntime"], fleet, token,
                                             (1, 3, args.size, args.size), threads=None, max_time_s=args.bench_time)
                    wall = round(time.perf_counter() - t0, 2)
                    assert all(c.latency_source == "measured" for c in cands), [c.reason for c in cands]
                    key = "two_agents_s" if len(fleet) == 2 else "one_agent_s"
                    result[key].append(wall)
                    if len(fleet) == 2:
                        result["split"].append([d["measured"] for d in env["fleet"]])
                    print(f"round {r}: {len(fleet)} agent(s) {wall:.1f} s", flush=True)
        finally:
            for proc, _ in agents:
                proc.terminate()
                proc.wait(20)
    one, two = statistics.median(result["one_agent_s"]), statistics.median(result["two_agents_s"])
    result["ratio_two_over_one"] = round(two / one, 3)
    result["load_1min_after"] = os.getloadavg()[0]
    print(json.dumps(result), flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


def candidates_only(folder: Path, n: int):
    """Fresh Candidate records for the artifacts already exported (a measurement fills them in)."""
    from edgeopt.report import Candidate

    return [Candidate(id=f"c{i}", status="ok", artifact=f"c{i}.onnx", runtime="onnxruntime", precision="fp32")
            for i in range(n)]


if __name__ == "__main__":
    sys.exit(main())
