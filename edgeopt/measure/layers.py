"""Per-layer latency (`edgeopt benchmark --per-layer`): ONNX Runtime's node profiler or OpenVINO's
performance counters, aggregated per layer over several runs and sorted by time. Latency-aware pruning
uses the same table to know which layers are worth shrinking.

Profiling adds overhead per node, so these times are for ranking layers, not for the model's latency
(which `edgeopt.measure.timing.measure` reports without profiling)."""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgeopt.errors import ArtifactError, first_line


@dataclass
class LayerTime:
    name: str
    op: str
    ms: float  # median time per run (robust to the preemption spikes of a shared machine)
    share: float  # fraction of the summed layer time
    exec_type: str = ""  # the kernel/precision the runtime picked, when it says (OpenVINO: e.g. jit_avx512_amx_I8)
    batch: int = 1  # the batch the run was at: which layers dominate changes with it (compute-bound at large batch)

    def as_dict(self) -> dict:
        return asdict(self)


def _table(acc: dict[str, list], batch: int = 1) -> list[LayerTime]:
    med = {k: float(np.median(v[1])) for k, v in acc.items() if v[1]}
    total = sum(med.values()) or 1.0
    rows = [LayerTime(name=k, op=acc[k][0], ms=m, share=m / total, exec_type=acc[k][2], batch=batch)
            for k, m in med.items()]
    return sorted(rows, key=lambda r: -r.ms)


def profile_openvino(path: Path, x: np.ndarray, runs: int, threads: int | None, precision: str) -> list[LayerTime]:
    from edgeopt.formats.openvino_core import openvino_core, read_ir
    from edgeopt.formats.openvino_precision import PRECISION_HINTS

    config = {"PERF_COUNT": True, "PERFORMANCE_HINT": "LATENCY"}
    if PRECISION_HINTS.get(precision):
        config["INFERENCE_PRECISION_HINT"] = PRECISION_HINTS[precision]
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    core = openvino_core()  # installed: checked by the formats table before it calls a profiler
    ov_model = read_ir(path, core)
    try:
        compiled = core.compile_model(ov_model, "CPU", config)
    except Exception as e:
        raise ArtifactError(f"OpenVINO cannot load {path}: {first_line(e, with_type=False)}") from None
    request = compiled.create_infer_request()
    request.infer({0: x})  # warm-up run, not counted
    acc: dict[str, list] = defaultdict(lambda: ["", [], ""])
    for _ in range(runs):
        request.infer({0: x})
        for p in request.get_profiling_info():
            if str(p.status).endswith("NOT_RUN"):
                continue  # fused into a neighbour: its time is already in that layer
            row = acc[p.node_name]
            row[0], row[2] = p.node_type, p.exec_type
            row[1].append(p.real_time.total_seconds() * 1000.0)
    return _table(acc, int(x.shape[0]) if x.ndim else 1)


def profile_layers(path: Path, runtime: str, x: np.ndarray, runs: int = 20, threads: int | None = None,
                   precision: str = "fp32") -> list[LayerTime]:
    """Per-layer times of one artifact on `runtime`, slowest first, by the profiler its format row names."""
    from edgeopt.formats import backend_for

    return backend_for(runtime).profile(Path(path), x, runs, threads, precision)


def profile_onnxruntime(path: Path, x: np.ndarray, runs: int, threads: int | None,
                        precision: str = "fp32") -> list[LayerTime]:
    import onnxruntime as ort  # installed: checked by the formats table before it calls a profiler
    with tempfile.TemporaryDirectory(prefix="edgeopt-prof.") as tmp:
        so = ort.SessionOptions()
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "p")
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = threads
        try:
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ArtifactError(f"ONNX Runtime cannot load {path}: {first_line(e, with_type=False)}") from None
        feed = {sess.get_inputs()[0].name: x}
        sess.run(None, feed)  # first run allocates: its events are skipped below
        for _ in range(runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    start_us = None
    runs_seen = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    if len(runs_seen) >= 2:
        start_us = runs_seen[1]["ts"]  # from the second run on
    acc: dict[str, list] = defaultdict(lambda: ["", [], ""])
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        if start_us is not None and e["ts"] < start_us:
            continue
        args = e.get("args", {})
        row = acc[e["name"][: -len("_kernel_time")]]
        row[0], row[2] = args.get("op_name", row[0]), args.get("provider", "")
        row[1].append(e["dur"] / 1000.0)
    return _table(acc, int(x.shape[0]) if x.ndim else 1)
