#!/usr/bin/env bash
# The NVIDIA path on a real GPU, in one run of under 6 minutes: for a machine with an NVIDIA GPU, CUDA-enabled
# torch and the `tensorrt` Python package (trtexec is used too when it is on PATH). Run from the repository root:
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        # default OUT_DIR: benchmarks/results/gpu_check-<date>
#
# Steps, each under its own time limit, each reported as ok / failed / skipped with the reason:
#  1. device query: this GPU, whether the nvidia-gpu / Jetson profiles count it as local
#  2. a random-weight resnet18 (64x64) exported here: fp32 ONNX, INT8 QDQ ONNX (qdq-tensorrt), 2:4-sparse ONNX;
#     each checked against TensorRT's ONNX parser table, with its op list
#  3. TensorRT engines built from them (fp16 from fp32, int8 from QDQ, fp16 sparse) and timed (p50)
#  4. served load: the fp16 engine at 1, 2 and 4 requests in flight (an execution context and stream each)
#  5. one agent job: `edgeopt agent` on loopback, the QDQ ONNX sent with runtime tensorrt (engine built there)
#  6. trtexec, when present: the bundle's own build line on the QDQ ONNX
# Everything goes to OUT_DIR/gpu_check.json and OUT_DIR/gpu_check.log; paste the summary into the closing note.
set -u
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/gpu_check-$(date +%Y-%m-%d)}
mkdir -p "$OUT"
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
LOG="$OUT/gpu_check.log"
: > "$LOG"
echo "gpu_check: python $PY, output $OUT" | tee -a "$LOG"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null \
  || echo "nvidia-smi: not available"; } | tee -a "$LOG"

timeout 330 "$PY" - "$OUT" <<'EOF' 2>&1 | tee -a "$LOG"
import json, os, signal, subprocess, sys, time, traceback
from pathlib import Path

out = Path(sys.argv[1])
res = {"steps": {}}
t_start = time.time()


def step(name, limit_s):
    def wrap(fn):
        def handler(*_):
            raise TimeoutError(f"step over its {limit_s} s limit")
        signal.signal(signal.SIGALRM, handler)
        signal.alarm(limit_s)
        t0 = time.time()
        try:
            res["steps"][name] = {"status": "ok", **(fn() or {})}
        except Exception as e:
            skip = isinstance(e, ModuleNotFoundError) or "needs an NVIDIA GPU" in str(e)
            res["steps"][name] = {"status": "skipped" if skip else "failed",
                                  "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}",
                                  **({} if skip else {"trace": traceback.format_exc(limit=4)[-1500:]})}
        finally:
            signal.alarm(0)
        res["steps"][name]["seconds"] = round(time.time() - t0, 1)
        print(f"[{name}] {res['steps'][name]['status']} ({res['steps'][name]['seconds']} s)"
              + (f": {res['steps'][name].get('error')}" if res["steps"][name].get("error") else ""), flush=True)
        return fn
    return wrap


import torch  # noqa: E402

from edgeopt.decide.plan import runs_here  # noqa: E402
from edgeopt.formats.tensorrt_parser_ops import check  # noqa: E402
from edgeopt.targets import detect_local, load_target  # noqa: E402
from edgeopt.targets.host import gpu_device  # noqa: E402


@step("device_query", 30)
def _():
    local = detect_local()
    return {"gpu_device": gpu_device(), "cuda": torch.cuda.is_available(), "local_kind": local.kind,
            "local_for": {t: runs_here(load_target(t), local) for t in
                          ("nvidia-gpu", "jetson-orin-nano", "jetson-agx-orin", "jetson-xavier-nx")}}


paths = {}


@step("export_and_parser_check", 90)
def _():
    import onnx
    import torchvision

    from edgeopt.formats.onnx import export_onnx
    from edgeopt.techniques.sparsity.unstructured import semi_structured_masks

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=100).eval()
    x = torch.randn(1, 3, 64, 64)
    calib = [torch.randn(8, 3, 64, 64) for _ in range(4)]
    paths["fp32"] = export_onnx(model, x, out / "r18_fp32.onnx").path
    paths["int8"] = export_onnx(model, x, out / "r18_qdq.onnx", precision="int8", calib=calib,
                                options={"quant_mode": "qdq-tensorrt"}).path
    with torch.no_grad():
        masks, _ = semi_structured_masks(model)
        for n, m in model.named_modules():
            if n in masks:
                m.weight.mul_(masks[n])
    paths["sparse"] = export_onnx(model, x, out / "r18_sparse24.onnx").path
    info = {}
    for k, p in paths.items():
        ops = sorted({(n.domain or "ai.onnx") + "::" + n.op_type for n in onnx.load(str(p)).graph.node})
        info[k] = {"ops": ops, "parser_check_10": check(p, "10.3") or "passed", "parser_check_8.5":
                   check(p, "8.5") or "passed"}
    return info


@step("engines", 120)
def _():
    import tensorrt as trt

    from edgeopt.formats.tensorrt import build_engine, is_2_4_sparse, load_tensorrt
    from edgeopt.measure.timing import BenchConfig, measure

    built = {}
    for name, src, prec in (("fp16", "fp32", "fp16"), ("int8", "int8", "int8"), ("fp16_sparse", "sparse", "fp16")):
        eng = out / f"r18_{name}.engine"
        t0 = time.time()
        meta = build_engine(paths[src], eng, prec)
        built[name] = {"build_s": round(time.time() - t0, 1), "sparse_weights": meta.get("sparse_weights", False),
                       "onnx_is_2_4": is_2_4_sparse(paths[src]), "gpu": meta.get("gpu")}
    sessions = {n: load_tensorrt(out / f"r18_{n}.engine", precision="int8" if n == "int8" else "fp16")
                for n in built}
    x = {"input": torch.randn(1, 3, 64, 64).numpy()}
    stats = measure({n: s.timed_call(x) for n, s in sessions.items()}, BenchConfig(max_time_s=5.0))
    for n in built:
        built[n]["p50_ms"] = round(stats[n].p50, 4)
        built[n]["precision_executed"] = sessions[n].precision_executed
    return {"tensorrt": trt.__version__, "engines": built}


@step("throughput_contexts", 45)
def _():
    """The served-load path on TensorRT: one execution context and CUDA stream per request in flight."""
    from edgeopt.measure.throughput import Load, ThroughputConfig, measure_throughput, server_for

    eng = out / "r18_fp16.engine"
    servers = {f"streams{n}": server_for(eng, "tensorrt", "fp16", None, Load(batch=1, streams=n)) for n in (1, 2, 4)}
    got = measure_throughput(servers, ThroughputConfig(max_time_s=6.0))
    return {k: {"images_s": v.images_s, "p99_ms": v.p99_ms, "settings": v.runtime_settings} for k, v in got.items()}


@step("agent_job", 90)
def _():
    import secrets

    from edgeopt.remote.client import AgentClient, AgentError, measure_remote

    token = secrets.token_hex(16)
    (out / "token").write_text(token + "\n")
    os.chmod(out / "token", 0o600)
    port = 8799
    proc = subprocess.Popen([sys.executable, "-m", "edgeopt", "agent", "--port", str(port), "--token-file",
                             str(out / "token"), "--workdir", str(out / "agent")], stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                AgentClient(url, token, timeout_s=5).info()
                break
            except AgentError:
                time.sleep(0.3)
        r = measure_remote({"qdq": paths["int8"]}, url, token, precision="int8", runtime="tensorrt",
                           max_time_s=3.0)["qdq"]
        return {"runtime": r.runtime, "precision_executed": r.precision_executed, "p50_ms": round(r.latency.p50, 4),
                "device": r.device}
    finally:
        proc.terminate()
        proc.wait(10)
        (out / "token").unlink(missing_ok=True)


@step("trtexec_bundle_line", 60)
def _():
    import shutil

    if not shutil.which("trtexec"):
        raise ModuleNotFoundError("trtexec not on PATH")
    cmd = ["trtexec", f"--onnx={paths['int8']}", f"--saveEngine={out / 'trtexec_int8.engine'}", "--int8",
           "--duration=3"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=55)
    tail = [ln for ln in p.stdout.splitlines() if "median" in ln or "PASSED" in ln or "FAILED" in ln][-4:]
    if p.returncode:
        raise RuntimeError(" | ".join(tail) or p.stderr[-300:])
    return {"lines": tail}


res["seconds"] = round(time.time() - t_start, 1)
(out / "gpu_check.json").write_text(json.dumps(res, indent=1, default=str))
print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "trace"} for k, v in res["steps"].items()},
                 indent=1, default=str))
EOF
echo "gpu_check: wrote $OUT/gpu_check.json" | tee -a "$LOG"
