"""Device commands per format: the shell lines a deployment bundle runs on the device to build and measure
the artifact there (the formats table points each row at one of these)."""

from __future__ import annotations

import shlex

TRT_FLAGS = {"fp16": ["--fp16"], "int8": ["--int8"], "bf16": ["--bf16"], "fp32": []}
OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


def tensorrt(target, model_file: str, precision: str, onnx_input=None, sparse_2_4: bool = False) -> dict:
    """trtexec builds the engine on the device (engines only run on the GPU and TensorRT that built them)."""
    q = shlex.quote
    shapes = []
    if onnx_input:
        name, dims = onnx_input
        shapes = [f"--shapes={q(name)}:{'x'.join(map(str, dims))}"]
    flags = TRT_FLAGS.get(precision, [])
    if sparse_2_4 and "2:4" in target.sparse_support:  # weights carry the 2:4 pattern: sparse tensor cores
        flags = [*flags, "--sparsity=enable"]
    source = "--onnx" if model_file.endswith(".onnx") else "--loadEngine"
    build = ["trtexec", f"{source}={q(model_file)}", "--saveEngine=model.engine", *flags, *shapes]
    run = ["trtexec", "--loadEngine=model.engine", "--warmUp=500", "--duration=10", "--useSpinWait",
           "--percentile=50,90,99"]
    lines = {"build": [" ".join(build)] if source == "--onnx" else [], "run": [" ".join(run)]}
    if target.dla_cores and source == "--onnx":
        # DLA runs fp16/int8 only; layers it cannot run fall back to the GPU
        dla = [*build[:2], "--saveEngine=model.dla.engine", *(flags or ["--fp16"]), *shapes,
               "--useDLACore=0", "--allowGPUFallback"]
        lines["build_dla"] = [" ".join(dla)]
    return lines


def openvino_load_config(precision: str) -> dict[str, str]:
    """The compile_model config that runs an edgeopt OpenVINO artifact as it was measured: the inference-precision
    hint for fp32/bf16/fp16; nothing for int8/int8w, measured without a hint, as a plain compile runs them."""
    hint = OV_PRECISION.get(precision)
    return {"INFERENCE_PRECISION_HINT": hint} if hint else {}


def load_note(runtime: str | None, model_file: str, precision: str | None) -> list[str] | None:
    """How an application must load a published artifact to run it as measured, where a plain load may not
    (OpenVINO's CPU default precision); None where the plain load is what was measured."""
    return openvino_load_note(model_file, precision or "fp32") if runtime == "openvino" else None


def openvino_load_note(model_file: str, precision: str) -> list[str]:
    """How an application loads the artifact at the measured precision (DEPLOY.md): a sentence, then code."""
    config = openvino_load_config(precision)
    if not config:
        note = ("It was measured without a precision hint, as a plain `compile_model` runs it: its float layers "
                "run the CPU's default precision (bf16 on AMX/AVX-512-BF16 CPUs, else f32).")
        call = f"compiled = ov.Core().compile_model({model_file!r}, 'CPU')"
    else:
        hint = config["INFERENCE_PRECISION_HINT"]
        note = (f"It was measured at {hint}, which the IR records in its rt_info (runtime_options/"
                f"INFERENCE_PRECISION_HINT = {hint}); OpenVINO does not apply that entry itself")
        if hint == "f32":
            note += (". Its layers also carry OpenVINO's \"precise\" mark, so a plain `compile_model` keeps the "
                     "convolutions in f32 where OpenVINO's default is bf16 (AMX/AVX-512-BF16 CPUs), but the "
                     "layers OpenVINO rebuilds (Linear, attention) drop the mark")
        note += ". To run exactly what was measured, pass the hint:"
        call = f"compiled = ov.Core().compile_model({model_file!r}, 'CPU', {config!r})"
    return [note, "import openvino as ov", call]


def openvino(target, model_file: str, precision: str, onnx_input=None, sparse_2_4: bool = False) -> dict:
    hint = OV_PRECISION.get(precision)
    run = ["benchmark_app", "-m", shlex.quote(model_file), "-d", "CPU", "-hint", "latency", "-t", "10"]
    if hint:
        run += ["-infer_precision", hint]
    return {"build": [], "run": [" ".join(run)], "load": openvino_load_note(model_file, precision)}


def onnxruntime(target, model_file: str, precision: str, onnx_input=None, sparse_2_4: bool = False) -> dict:
    return {"build": [], "run": [f"onnxruntime_perf_test -I -t 10 -e cpu {shlex.quote(model_file)}"]}


def generic(target, model_file: str, precision: str, onnx_input=None, sparse_2_4: bool = False) -> dict:
    """A format without a native benchmark tool: edgeopt's own benchmark, on the device."""
    return {"build": [], "run": [f"edgeopt benchmark {shlex.quote(model_file)} --precision {precision}"]}
