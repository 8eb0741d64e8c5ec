"""What a user would pick instead of edgeopt, each built the way that user would build it: straight
from the libraries, default options, same thread count. edgeopt's own choice is loaded from its report."""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from benchmarks.tasks import Task


@dataclass
class Contender:
    name: str
    run: Callable[[np.ndarray], np.ndarray]  # a batch in (the example's batch size), logits out
    lean_call: Callable[[], object]  # one timed inference on a preset input
    precision: str
    size_bytes: int | None = None
    params: int | None = None
    macs: int | None = None
    info: dict = field(default_factory=dict)


def _threads() -> int:
    return os.cpu_count() or 1


def _onnx(model, x, path: Path) -> Path:
    with torch.no_grad():
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["output"])
    return path


def _ort_session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = _threads()
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _ort_contender(name, path: Path, x: np.ndarray, precision: str, model=None) -> Contender:
    sess = _ort_session(path)
    feed = {"input": x}
    return Contender(name, lambda a: sess.run(None, {"input": a})[0], lambda: sess.run(None, feed), precision,
                     size_bytes=path.stat().st_size, **_counts(model, x))


def _counts(model, x) -> dict:
    if model is None:
        return {}
    from edgeopt.inputs.analyze import count_macs, count_params

    return {"params": count_params(model), "macs": count_macs(model, torch.from_numpy(x))}


def _ov_contender(name, ov_model, x: np.ndarray, model=None) -> Contender:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(ov_model, "CPU", {"INFERENCE_NUM_THREADS": _threads()})
    from edgeopt.formats.openvino import precision_name

    executed = precision_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
    req = compiled.create_infer_request()
    lean = compiled.create_infer_request()
    lean.set_input_tensor(ov.Tensor(x))

    def run(a):
        req.infer({0: a})
        return req.get_output_tensor(0).data.copy()

    with tempfile.TemporaryDirectory() as d:
        ov.save_model(ov_model, f"{d}/m.xml", compress_to_fp16=False)
        size = sum(f.stat().st_size for f in Path(d).iterdir())
    return Contender(name, run, lean.infer, executed, size_bytes=size, **_counts(model, x))


def build_contenders(task: Task, workdir: Path, skip: set[str] = frozenset()) -> list[Contender]:
    import openvino as ov

    model, ex = task.model, task.example
    x = ex.numpy()
    out: list[Contender] = []
    torch.set_num_threads(_threads())

    def eager_run(a):
        with torch.no_grad():
            return model(torch.from_numpy(a)).numpy()

    def eager_call():
        with torch.no_grad():
            model(ex)

    out.append(Contender("pytorch-eager-fp32", eager_run, eager_call, "fp32", **_counts(model, x)))
    fp32 = _onnx(model, ex, workdir / "fp32.onnx")
    out.append(_ort_contender("ort-fp32", fp32, x, "fp32", model))
    ov_model = ov.convert_model(model, example_input=ex)
    out.append(_ov_contender("openvino-default", ov_model, x, model))
    if "nncf" not in skip:
        import nncf

        q = nncf.quantize(ov.convert_model(model, example_input=ex),
                          nncf.Dataset(task.calib, lambda b: b.numpy()), subset_size=len(task.calib) * 8)
        c = _ov_contender("openvino-nncf-int8", q, x, model)
        c.precision = f"int8+{c.precision}"
        out.append(c)
    if "ort-int8" not in skip:
        from onnxruntime.quantization import CalibrationDataReader, quantize_static

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = iter([{"input": b[i:i + 1].numpy()} for b in task.calib for i in range(len(b))])

            def get_next(self):
                return next(self.it, None)

        int8 = workdir / "int8.onnx"
        quantize_static(str(fp32), str(int8), Reader())  # the library's defaults: QDQ, per-tensor
        out.append(_ort_contender("ort-static-int8", int8, x, "int8", model))
    if "tp50" not in skip:
        import torch_pruning as tp

        small = copy.deepcopy(model)
        fc = [m for m in small.modules() if isinstance(m, torch.nn.Linear)][-1:]
        tp.pruner.MetaPruner(small, ex, importance=tp.importance.GroupMagnitudeImportance(p=2),
                             pruning_ratio=0.5, ignored_layers=fc).step()
        out.append(_ort_contender("torch-pruning-l2-50%-ort", _onnx(small.eval(), ex, workdir / "tp50.onnx"), x,
                                  "fp32", small))
    return out


def edgeopt_contender(name: str, task: Task, workdir: Path, retrain: bool, bench_time: float,
                      time_budget_s: float | None = None) -> Contender:
    """Run edgeopt's optimize and load the artifact it chose, on the runtime and precision it chose."""
    import edgeopt
    from edgeopt.formats import backend_for
    from edgeopt.measure.timing import BenchConfig

    kwargs = {"time_budget_s": time_budget_s} if time_budget_s else {}
    if retrain:
        kwargs["train_data"] = task.train
        if time_budget_s:
            kwargs["epochs"] = 1  # a short search fine-tunes for one epoch
    out_dir = workdir / name
    report = edgeopt.optimize(task.model, task.example, target="local", goal="latency", max_accuracy_drop=1.0,
                              retrain=retrain, eval_data=task.eval, calib_data=task.calib, out_dir=out_dir,
                              bench_config=BenchConfig(max_time_s=bench_time), **kwargs)
    chosen = report.chosen_candidate
    if chosen is None:
        raise RuntimeError(f"{name}: edgeopt chose nothing")
    session = backend_for(chosen.runtime).load(out_dir / chosen.artifact, precision=chosen.precision,
                                               threads=_threads())
    x = task.example.numpy()
    return Contender(name, session.run, session.lean_call(x), session.precision_executed,
                     size_bytes=chosen.size_bytes, params=chosen.params, macs=chosen.macs,
                     info={"chosen": chosen.id, "search_s": report.wall_time_s, "search_budget_s": time_budget_s,
                           "steps": [s.technique for s in chosen.steps]})
