"""Sessions the latency table times: one small graph (a layer, a whole model, or an empty call) exported to
ONNX and run on ONNX Runtime or OpenVINO at fp32 or INT8.

INT8 is produced the way a deployed INT8 candidate is: NNCF post-training quantization for OpenVINO, ONNX
Runtime's static quantization for ONNX Runtime. The calibration input is random: a latency does not depend
on the scales, only on which kernels run."""

from __future__ import annotations

import statistics
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from edgeopt.inputs.feeding import run_model
from edgeopt.inputs.hooks import forward_hooks
from edgeopt.inputs.model_io import Inputs

PRECISIONS = ("fp32", "int8")


def time_ms(fn, runs: int = 20, warmup: int = 3) -> float:
    """Median of `runs` calls after `warmup` (ms)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    return statistics.median(samples)


def _export(model: nn.Module, x: Inputs, path: Path) -> None:
    with warnings.catch_warnings():  # the legacy exporter: a small graph needs none of dynamo's cost
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), x.export_args(), str(path), dynamo=False, input_names=x.names)


def _quiet_nncf():
    import logging

    import nncf

    logging.getLogger("nncf").setLevel(logging.ERROR)
    return nncf


def runner(model: nn.Module, x, runtime: str, threads: int, tmp: Path, precision: str = "fp32"):
    """A zero-argument callable running `model` on `x` (a tensor, or a model's inputs in any form) in
    `runtime` at `precision`."""
    if precision not in PRECISIONS:
        raise ValueError(f"latency table precision must be one of {PRECISIONS}, got {precision!r}")
    x = Inputs.of(x, model)
    path = tmp / "layer.onnx"
    _export(model, x, path)
    feed = x.numpy()
    from edgeopt.formats import format_of_runtime

    if format_of_runtime().get(runtime) == "onnx":  # ONNX Runtime; any other runtime here is OpenVINO's
        import onnxruntime as ort

        if precision == "int8":
            from edgeopt.formats.onnx_quant import pick_mode, quantize_int8

            qpath = tmp / "layer_int8.onnx"
            quantize_int8(path, qpath, pick_mode(path, "auto"), [feed])
            path = qpath
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.add_session_config_entry("session.force_spinning_stop", "1")  # not spinning into the next layer's turn
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return lambda: sess.run(None, feed)
    from edgeopt.formats.openvino_core import nncf_on_shared_core, openvino_core

    core = openvino_core()
    ov_model = core.read_model(str(path))
    if precision == "int8":
        from edgeopt.formats.openvino import for_nncf

        nncf = _quiet_nncf()
        ov_model, settings = for_nncf(ov_model)  # quantized as the export quantizes
        with nncf_on_shared_core():
            ov_model = nncf.quantize(ov_model, nncf.Dataset([feed]), subset_size=1, **settings)
    compiled = core.compile_model(ov_model, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
    req = compiled.create_infer_request()
    return lambda: req.infer(feed)


class _Null(nn.Module):
    """The cheapest graph a runtime runs: what one call costs apart from any layer's work."""

    def forward(self, x):
        return torch.relu(x)


def call_overhead_ms(runtime: str, threads: int, runs: int, tmp: Path) -> float:
    """Fixed cost of one inference call (binding, dispatch) on a 1x8 input, fp32: every layer timed alone
    pays it once, a whole model pays it once in all."""
    fn = runner(_Null(), torch.randn(1, 8), runtime, threads, tmp)
    return min(time_ms(fn, runs=runs) for _ in range(3))


def make_layer(sig: dict, cin: int, cout: int) -> tuple[nn.Module, torch.Tensor]:
    """The layer of signature `sig` at (cin, cout), with ReLU (fused by the runtimes), and its input."""
    if sig["kind"] == "linear":
        return nn.Sequential(nn.Linear(cin, cout), nn.ReLU()), torch.randn(sig["rows"], cin)
    groups = cin if sig["kind"] == "dwconv" else 1
    cout = cin if sig["kind"] == "dwconv" else cout
    conv = nn.Conv2d(cin, cout, tuple(sig["k"]), tuple(sig["s"]), tuple(sig["p"]), tuple(sig["d"]), groups=groups)
    return nn.Sequential(conv, nn.ReLU()), torch.randn(sig["n"], cin, *sig["hw"])


def layer_inputs(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    """Each conv/linear (first call) with the shape of its input on `example`."""
    names = {m: n for n, m in model.named_modules()}
    found: dict[str, tuple[nn.Module, tuple[int, ...]]] = {}

    def hook(mod, args):
        if names[mod] not in found and args and isinstance(args[0], torch.Tensor):
            found[names[mod]] = (mod, tuple(args[0].shape))

    layers = (m for m in model.modules()
              if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and isinstance(m.padding, tuple)
                                              and (m.groups == 1 or m.groups == m.in_channels)))
    with forward_hooks(((m, hook) for m in layers), pre=True), torch.no_grad():
        run_model(model.eval(), Inputs.of(example, model))
    return found
