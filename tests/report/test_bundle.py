import hashlib
import json

import edgeopt
from edgeopt.formats import device_commands
from edgeopt.targets import load_target


def test_jetson_run_writes_bundle_with_trtexec_and_estimate(tmp_path, tiny_plain, example):
    report = edgeopt.optimize(tiny_plain, example, target="jetson", out_dir=tmp_path, techniques=["quantize"])
    chosen = report.chosen_candidate
    assert chosen is not None and chosen.latency_source == "estimated"
    b = tmp_path / "bundle"
    meta = json.loads((b / "bundle.json").read_text())
    assert meta["latency_source"] == "estimated" and meta["target"] == "jetson-orin-nano"
    assert meta["files"]["model.onnx"] == hashlib.sha256((b / "model.onnx").read_bytes()).hexdigest()
    script = (b / "commands.sh").read_text()
    assert "trtexec --onnx=model.onnx --saveEngine=model.engine" in script and "--loadEngine=model.engine" in script
    assert f"--shapes=input:{'x'.join(map(str, example.shape))}" in script or "--shapes=" in script
    assert "estimated" in (b / "DEPLOY.md").read_text()
    assert json.loads((tmp_path / "report.json").read_text())["model"]["bundle"] == "bundle"


def test_device_commands_follow_the_target():
    agx = device_commands(load_target("jetson-agx-orin"), "model.onnx", "fp16", "onnxruntime", ("x", [1, 3, 8, 8]))
    assert "--fp16" in agx["build"][0] and "--shapes=x:1x3x8x8" in agx["build"][0]
    assert "--useDLACore=0" in agx["build_dla"][0]  # the AGX Orin has two DLA cores
    assert "--sparsity=enable" not in agx["build"][0]
    sparse = device_commands(load_target("jetson-agx-orin"), "model.onnx", "fp16", "onnxruntime", None, True)
    assert "--sparsity=enable" in sparse["build"][0]
    # Xavier (Volta) has no sparse tensor cores: the flag would do nothing, so it is not written
    volta = device_commands(load_target("jetson-xavier-nx"), "model.onnx", "fp16", "onnxruntime", None, True)
    assert "--sparsity=enable" not in volta["build"][0]
    nano = device_commands(load_target("jetson"), "model.onnx", "int8", "onnxruntime")
    assert "--int8" in nano["build"][0] and "build_dla" not in nano  # no DLA on the Orin Nano
    ov = device_commands(load_target("x86-amx"), "model.xml", "bf16", "openvino")
    assert ov["build"] == [] and ov["run"][0].startswith("benchmark_app -m model.xml") and "bf16" in ov["run"][0]
    arm = device_commands(load_target("rpi5"), "model.onnx", "fp32", "onnxruntime")
    assert "onnxruntime_perf_test" in arm["run"][0]
