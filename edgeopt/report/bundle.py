"""A deployable bundle for a target that is not this machine: the chosen artifact plus the exact command
that builds and runs it on the device (e.g. the `trtexec` line for a Jetson), written to OUT/bundle/.

The latency in the report for such a target is a roofline estimate; the bundle is how to get the
measured number (run `commands.sh` on the device, or `edgeopt agent` there and `--device` here)."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
from pathlib import Path

from edgeopt.report import Report, write_atomic
from edgeopt.targets import TargetProfile

TRT_FLAGS = {"fp16": ["--fp16"], "int8": ["--int8"], "bf16": ["--bf16"], "fp32": []}
OV_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _onnx_input(path: Path) -> tuple[str, list[int]] | None:
    try:
        import onnx

        g = onnx.load(str(path), load_external_data=False).graph
        init = {i.name for i in g.initializer}
        inp = next(i for i in g.input if i.name not in init)
        return inp.name, [d.dim_value if d.dim_value > 0 else 1 for d in inp.type.tensor_type.shape.dim]
    except Exception:  # the bundle still works without the --shapes hint
        return None


def device_commands(target: TargetProfile, model_file: str, precision: str, runtime: str,
                    onnx_input: tuple[str, list[int]] | None = None, sparse_2_4: bool = False
                    ) -> dict[str, list[str]]:
    """{"build": [...], "run": [...]} shell lines for the device, from the target's preferred runtime."""
    q = shlex.quote
    if model_file.endswith(".onnx") and target.runtimes[:1] == ["tensorrt"]:
        shapes = []
        if onnx_input:
            name, dims = onnx_input
            shapes = [f"--shapes={q(name)}:{'x'.join(map(str, dims))}"]
        flags = TRT_FLAGS.get(precision, [])
        if sparse_2_4 and "2:4" in target.sparse_support:  # weights carry the 2:4 pattern: sparse tensor cores
            flags = [*flags, "--sparsity=enable"]
        build = ["trtexec", f"--onnx={q(model_file)}", "--saveEngine=model.engine", *flags, *shapes]
        run = ["trtexec", "--loadEngine=model.engine", "--warmUp=500", "--duration=10", "--useSpinWait",
               "--percentile=50,90,99"]
        lines = {"build": [" ".join(build)], "run": [" ".join(run)]}
        if target.dla_cores:
            # DLA runs fp16/int8 only; layers it cannot run fall back to the GPU
            dla = [*build[:2], "--saveEngine=model.dla.engine", *(flags or ["--fp16"]), *shapes,
                   "--useDLACore=0", "--allowGPUFallback"]
            lines["build_dla"] = [" ".join(dla)]
        return lines
    if model_file.endswith(".xml") or runtime == "openvino":
        hint = OV_PRECISION.get(precision)
        run = ["benchmark_app", "-m", q(model_file), "-d", "CPU", "-hint", "latency", "-t", "10"]
        if hint:
            run += ["-infer_precision", hint]
        return {"build": [], "run": [" ".join(run)]}
    return {"build": [], "run": [f"onnxruntime_perf_test -I -t 10 -e cpu {q(model_file)}"]}


def write_bundle(report: Report, out_dir: Path, target: TargetProfile) -> Path | None:
    """OUT/bundle/: the chosen model, commands.sh, DEPLOY.md and bundle.json. None when nothing was chosen."""
    chosen = report.chosen_candidate
    if chosen is None or not chosen.artifact:
        return None
    out_dir = Path(out_dir)
    bundle = out_dir / "bundle"
    bundle.mkdir(parents=True, exist_ok=True)
    src = out_dir / chosen.artifact
    files = [src] + ([src.with_suffix(".bin")] if src.suffix == ".xml" else [])
    for f in files:  # companion weights first, so model.xml never points at a missing .bin
        tmp = bundle / f".model{f.suffix}.tmp"
        shutil.copyfile(f, tmp)
        os.replace(tmp, bundle / f"model{f.suffix}")
    model_file = f"model{src.suffix}"
    precision = chosen.precision or "fp32"
    sparse = any(s.technique == "unstructured" and s.params.get("pattern") == "2:4" for s in chosen.steps)
    cmds = device_commands(target, model_file, precision, chosen.runtime or "onnxruntime",
                           _onnx_input(bundle / model_file) if model_file.endswith(".onnx") else None, sparse)
    est = chosen.latency_ms.p50 if chosen.latency_ms else None
    agent = [f"edgeopt benchmark {model_file} --json > measured.json   # needs `pip install edgeopt` on the device",
             "# or, from the host: run `edgeopt agent --token-file TOKEN` on the device, then",
             f"#   edgeopt benchmark {model_file} --device http://DEVICE:8765 --token-file TOKEN"]
    script = ["#!/bin/sh", f"# {target.name}: {chosen.id} ({precision}); run this on the device.", "set -e",
              'cd "$(dirname "$0")"', *cmds["build"], *cmds["run"]]
    write_atomic(bundle / "commands.sh", "\n".join(script) + "\n")
    os.chmod(bundle / "commands.sh", 0o755)
    meta = {"target": target.name, "candidate": chosen.id, "precision": precision, "runtime": chosen.runtime,
            "files": {f"model{f.suffix}": _sha256(bundle / f"model{f.suffix}") for f in files},
            "commands": cmds, "latency_ms_estimate": est, "latency_source": chosen.latency_source}
    write_atomic(bundle / "bundle.json", json.dumps(meta, indent=2))
    est_text = f"{est:.3f} ms, **estimated** from the target's roofline, never measured" if est else "not known"
    md = [f"# Deploying {chosen.id} to {target.name}", "",
          f"Latency on {target.name}: {est_text}." if chosen.latency_source == "estimated" else
          f"Latency on {target.name}: {est:.3f} ms, measured on the device.", "",
          "## Build on the device", "", "```sh", *(cmds["build"] or ["# nothing to build"]), "```", ""]
    if "build_dla" in cmds:
        md += ["Or on a DLA core (fp16/int8, GPU fallback):", "", "```sh", *cmds["build_dla"], "```", ""]
    md += ["## Measure on the device", "", "```sh", *cmds["run"], *agent, "```", "",
           "`commands.sh` does both; `bundle.json` lists the files with their SHA-256."]
    write_atomic(bundle / "DEPLOY.md", "\n".join(md) + "\n")
    report.model["bundle"] = "bundle"
    return bundle
