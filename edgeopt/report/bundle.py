"""A deployable bundle for a target that is not this machine: the chosen artifact plus the exact command
that builds and runs it on the device (e.g. the `trtexec` line for a Jetson), written to OUT/bundle/.

The latency in the report for such a target is a roofline estimate; the bundle is how to get the
measured number (run `commands.sh` on the device, or `edgeopt agent` there and `--device` here)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from edgeopt.errors import EdgeOptError, first_line
from edgeopt.report import Report, file_sha256, write_atomic
from edgeopt.targets import TargetProfile


def _onnx_input(path: Path) -> tuple[str, list[int]] | None:
    try:
        import onnx

        g = onnx.load(str(path), load_external_data=False).graph
        init = {i.name for i in g.initializer}
        inp = next(i for i in g.input if i.name not in init)
        return inp.name, [d.dim_value if d.dim_value > 0 else 1 for d in inp.type.tensor_type.shape.dim]
    except Exception:  # the bundle still works without the --shapes hint
        return None


def write_bundle(report: Report, out_dir: Path, target: TargetProfile, files_of: Callable[[Path], list[Path]],
                 commands_of: Callable[..., dict[str, list[str]]]) -> Path | None:
    """OUT/bundle/: the chosen model, commands.sh, DEPLOY.md and bundle.json. None when nothing was chosen.

    `files_of` (an artifact's files) and `commands_of` (its device commands) come from the formats table,
    passed in by the caller because reports sit below formats in the layers."""
    chosen = report.chosen_candidate
    if chosen is None or not chosen.artifact:
        return None
    out_dir = Path(out_dir)
    bundle = out_dir / "bundle"
    bundle.mkdir(parents=True, exist_ok=True)
    src = out_dir / chosen.artifact
    files = files_of(src)
    names = {f: "model" + f.name[len(src.stem):] for f in files}  # model.xml + model.bin, model.onnx ...
    for f in files:  # companion weights first, so model.xml never points at a missing .bin
        tmp = bundle / f".{names[f]}.tmp"
        shutil.copyfile(f, tmp)
        os.replace(tmp, bundle / names[f])
    model_file = names[files[-1]]  # the main file comes last
    precision = chosen.precision or "fp32"
    sparse = any(s.technique == "unstructured" and s.params.get("pattern") == "2:4" for s in chosen.steps)
    try:  # an ONNX file TensorRT builds on the device is checked against its parser first (formats' table)
        cmds = commands_of(target, model_file, precision, chosen.runtime,
                           _onnx_input(bundle / model_file) if model_file.endswith(".onnx") else None, sparse,
                           artifact=bundle / model_file)
    except EdgeOptError as e:  # never a bundle whose build line cannot work: the report says why instead
        shutil.rmtree(bundle, ignore_errors=True)
        report.model["bundle"] = None
        report.model["bundle_refused"] = f"{chosen.id}: {first_line(e)}"
        return None
    est = chosen.latency_ms.p50 if chosen.latency_ms else None
    agent = [f"edgeopt benchmark {model_file} --json > measured.json   # needs `pip install edgeopt` on the device",
             "# or, from the host: run `edgeopt agent --token-file TOKEN` on the device, then",
             f"#   edgeopt benchmark {model_file} --device http://DEVICE:8765 --token-file TOKEN"]
    script = ["#!/bin/sh", f"# {target.name}: {chosen.id} ({precision}); run this on the device.", "set -e",
              'cd "$(dirname "$0")"', *cmds["build"], *cmds["run"]]
    write_atomic(bundle / "commands.sh", "\n".join(script) + "\n")
    os.chmod(bundle / "commands.sh", 0o755)
    meta = {"target": target.name, "candidate": chosen.id, "precision": precision, "runtime": chosen.runtime,
            "files": {names[f]: file_sha256(bundle / names[f]) for f in files},
            "commands": cmds, "latency_ms_estimate": est, "latency_source": chosen.latency_source,
            "call_overhead_ms": target.call_overhead_ms,
            "call_overhead": "assumed, not measured" if target.call_overhead_estimated else "measured"}
    write_atomic(bundle / "bundle.json", json.dumps(meta, indent=2))
    est_text = f"{est:.3f} ms, **estimated** from the target's roofline, never measured" if est else "not known"
    if est and target.call_overhead_estimated:
        est_text += f" (its per-call overhead of {target.call_overhead_ms} ms is assumed, not measured, too)"
    md = [f"# Deploying {chosen.id} to {target.name}", "",
          f"Latency on {target.name}: {est_text}." if chosen.latency_source == "estimated" or est is None else
          f"Latency on {target.name}: {est:.3f} ms, measured on the device.", "",
          "## Build on the device", "", "```sh", *(cmds["build"] or ["# nothing to build"]), "```", ""]
    if "build_dla" in cmds:
        md += ["Or on a DLA core (fp16/int8, GPU fallback):", "", "```sh", *cmds["build_dla"], "```", ""]
    md += ["## Measure on the device", "", "```sh", *cmds["run"], *agent, "```", "",
           "`commands.sh` does both; `bundle.json` lists the files with their SHA-256."]
    if cmds.get("load"):  # the runtime's own loading call, at the precision the numbers were measured at
        note, *code = cmds["load"]
        md += ["", "## Load it in an application", "", note, "", "```python", *code, "```"]
    write_atomic(bundle / "DEPLOY.md", "\n".join(md) + "\n")
    report.model["bundle"] = "bundle"
    return bundle
