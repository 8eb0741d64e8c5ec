"""A fake export format for tests: an MLP (Flatten/Linear/ReLU) saved as numpy arrays (`.npz`) plus its
input shape (`.shape.json`), run with numpy. It lives outside edgeopt on purpose: registering its row must
be all it takes for plan, export, benchmark, per-layer profiling, bundles and the agent to use it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from edgeopt.formats import Backend
from edgeopt.formats.base import ExportResult, Session

ROW = Backend(format="npz", runtime="npzrt", suffix=".npz", companions=(".shape.json",),
              export_ref="npzformat:export_npz", load_ref="npzformat:load_npz", precisions=("fp32",),
              extra="dev", module="numpy", executed_ref="npzformat:executed", profile_ref="npzformat:profile")


def export_npz(model, example, out: Path, precision="fp32", calib=None, options=None) -> ExportResult:
    from torch import nn

    arrays, ops = {}, []
    for i, m in enumerate(model.modules() if not isinstance(model, nn.Sequential) else model):
        if isinstance(m, nn.Linear):
            arrays[f"w{i}"], arrays[f"b{i}"] = m.weight.detach().numpy(), m.bias.detach().numpy()
            ops.append(f"linear:{i}")
        elif isinstance(m, (nn.ReLU, nn.Flatten)):
            ops.append(type(m).__name__.lower())
    out = Path(out).with_suffix(".npz")
    out.with_suffix(".shape.json").write_text(json.dumps(list(example.shape)))
    np.savez(out, ops=np.array(ops), **arrays)
    return ExportResult(path=out, format="npz", precision=precision, exporter="numpy.savez",
                        files=[out.with_suffix(".shape.json"), out])


def _layers(path: Path):
    with np.load(path, allow_pickle=False) as d:
        arrays = {k: d[k] for k in d.files}
    return [str(op) for op in arrays.pop("ops")], arrays


def _apply(op: str, arrays: dict, x: np.ndarray) -> np.ndarray:
    if op.startswith("linear:"):
        i = op.split(":")[1]
        return x @ arrays[f"w{i}"].T + arrays[f"b{i}"]
    return np.maximum(x, 0) if op == "relu" else x.reshape(len(x), -1)


def load_npz(path: Path, precision="fp32", threads=None, device="CPU") -> Session:
    ops, arrays = _layers(path)
    shape = tuple(json.loads(Path(path).with_suffix(".shape.json").read_text()))

    def run(x: np.ndarray) -> np.ndarray:
        for op in ops:
            x = _apply(op, arrays, x)
        return x

    return Session(runtime="npzrt", runtime_version=np.__version__, precision_executed="", input_shape=shape,
                   run=run, lean_call=lambda x: (lambda: run(x)), device="CPU", threads=threads)


def executed(session: Session, path: Path) -> str:
    return "fp32 (numpy)"


def profile(path: Path, x: np.ndarray, runs: int, threads, precision: str) -> list:
    from edgeopt.measure.layers import LayerTime

    ops, arrays = _layers(path)
    rows = []
    for op in ops:
        t0 = time.perf_counter()
        for _ in range(runs):
            y = _apply(op, arrays, x)
        rows.append(LayerTime(name=op, op=op.split(":")[0], ms=(time.perf_counter() - t0) * 1000 / runs, share=0))
        x = y
    total = sum(r.ms for r in rows) or 1.0
    for r in rows:
        r.share = r.ms / total
    return rows
