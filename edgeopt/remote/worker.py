"""One measurement job, run in its own process by the agent (`python -m edgeopt.remote.worker JOBDIR`).

A separate process per job is what keeps the agent serving: a malicious or corrupt artifact that crashes
the runtime (even a segfault), hangs it (killed at the per-job timeout) or leaks memory takes only this
process down. It imports the runtimes directly, not torch: devices often have no PyTorch."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from edgeopt.errors import first_line


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def device_environment() -> dict:
    from edgeopt import __version__
    from edgeopt.targets import INTERESTING_FLAGS, cpu_flags, cpu_model

    model = None
    for p in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):  # Jetson / Raspberry Pi
        try:
            model = Path(p).read_text().strip("\x00\n ")
            break
        except OSError:
            continue
    from edgeopt.formats import rows

    versions = {d: _version(d) for d in [*(d for b in rows() for d in b.dists), "numpy"]}
    return {"edgeopt_version": __version__, "python": platform.python_version(), "platform": platform.platform(),
            "machine": platform.machine(), "device_model": model, "cpu": cpu_model(),
            "cpu_flags": [f for f in INTERESTING_FLAGS if f in cpu_flags()], "cpu_count": os.cpu_count(),
            **{k: v for k, v in versions.items() if v}}


def gpu_name() -> str | None:
    """The first NVIDIA GPU's name (nvidia-smi), or None: what tells two GPU devices of one CPU apart."""
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return next((line.strip() for line in out.splitlines() if line.strip()), None)


def row_of(artifact: dict):
    """The format row the agent validated this artifact against, as it wrote it into the job (so the worker
    runs exactly that row, including rows registered in the agent's process)."""
    from edgeopt.formats import Backend, backend_for

    row = artifact.get("row")
    if not row:
        return backend_for(artifact["runtime"])
    return Backend(**{k: tuple(v) if isinstance(v, list) else v for k, v in row.items()})


def load_session(artifact: dict, threads: int | None):
    """The device's runtime for an artifact, from its format row: the row's own format through its loader,
    another format it accepts through its device loader (TensorRT builds the engine here from the ONNX)."""
    return row_of(artifact).load_on_device(Path(artifact["path"]), artifact.get("format") or "onnx",
                                           precision=artifact["precision"], threads=threads)


def top1(session, data_file: Path, batch: int) -> float:
    """Top-1 accuracy (%) on an .npz the user placed on the device (arrays `x` float32, `y` int labels)."""
    with np.load(data_file, allow_pickle=False) as d:
        xs, ys = d["x"].astype(np.float32), d["y"].astype(np.int64)
    from edgeopt.measure.top1 import percent_correct

    def pairs():
        for i in range(0, len(xs), batch):
            chunk = xs[i:i + batch]
            n = len(chunk)
            if n < batch:
                chunk = np.concatenate([chunk, np.zeros((batch - n, *chunk.shape[1:]), np.float32)])
            yield np.asarray(session.run(chunk)).reshape(batch, -1)[:n], ys[i:i + n]

    return percent_correct(pairs())


def run_job(job: dict) -> dict:
    from edgeopt.measure.timing import BenchConfig, measure

    t0 = time.perf_counter()
    sessions, inputs = {}, {}
    for a in job["artifacts"]:
        s = load_session(a, job.get("threads") or os.cpu_count())
        own = s.input_shapes or {"input": tuple(s.input_shape)}
        shapes = {n: tuple(d if d > 0 else 1 for d in v) for n, v in own.items()}
        if job.get("input_shapes"):  # every named input is fed
            shapes.update({n: tuple(v) for n, v in job["input_shapes"].items()})
        elif job.get("input_shape"):
            shapes[next(iter(shapes))] = tuple(job["input_shape"])
        rng = np.random.default_rng(0)
        feed = {n: rng.standard_normal(v).astype(np.float32) for n, v in shapes.items()}
        s.run_named(feed)  # shape check and first-run cost, outside the timed loop
        sessions[a["id"]], inputs[a["id"]] = s, feed
    stats = measure({k: s.timed_call(inputs[k]) for k, s in sessions.items()},
                    BenchConfig(max_time_s=float(job.get("max_time_s", 10.0))))
    results = {}
    for a in job["artifacts"]:
        s = sessions[a["id"]]
        r = {"runtime": s.runtime, "runtime_version": s.runtime_version, "precision": a["precision"],
             "route": s.info.get("route"),
             "precision_executed": s.precision_executed, "device": s.device, "threads": s.threads,
             "input_shape": list(next(iter(inputs[a["id"]].values())).shape),
             "inputs": {n: list(v.shape) for n, v in inputs[a["id"]].items()}, "latency": stats[a["id"]].model_dump()}
        if job.get("data_file"):
            r["accuracy"] = top1(s, Path(job["data_file"]), r["input_shape"][0])
            r["metric"] = "top1"
        results[a["id"]] = r
    return {"status": "ok", "results": results, "environment": device_environment(),
            "job_s": round(time.perf_counter() - t0, 4)}


def main(job_dir: str) -> int:
    job_dir = Path(job_dir)
    try:
        out = run_job(json.loads((job_dir / "job.json").read_text()))
        code = 0
    except Exception as e:  # reported to the client as this job's failure; the agent keeps serving
        msg = first_line(e, 300).replace(str(job_dir.resolve()) + os.sep, "")  # the agent's paths stay on it
        out = {"status": "failed", "error": msg,
               "detail": traceback.format_exc(limit=3)[-2000:] if os.environ.get("EDGEOPT_DEBUG") else None}
        code = 1
    tmp = job_dir / "result.json.tmp"
    tmp.write_text(json.dumps(out))
    os.replace(tmp, job_dir / "result.json")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
