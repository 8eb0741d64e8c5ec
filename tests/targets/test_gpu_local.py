"""A GPU target on a host that has that GPU is measured there (the device query faked: no GPU here), and the agent
measures a run's candidates one job each, so one failure is one rejected candidate."""

import shutil
from pathlib import Path

import pytest
import torch

from edgeopt.config import ModelSummary, make_context
from edgeopt.decide.plan import plan, runs_here
from edgeopt.targets import detect_local, load_target
from edgeopt.targets import host as host_mod


def _local_with(monkeypatch, device):
    monkeypatch.setattr(host_mod, "gpu_device", lambda: device)
    return detect_local()


def test_a_gpu_target_is_local_on_a_host_with_that_gpu(monkeypatch):
    orin_nano = _local_with(monkeypatch, "NVIDIA Jetson Orin Nano Developer Kit")
    assert orin_nano.kind == "gpu" and orin_nano.runtimes[0] == "tensorrt"
    assert runs_here(load_target("jetson-orin-nano"), orin_nano)
    assert not runs_here(load_target("jetson-agx-orin"), orin_nano)
    assert not runs_here(load_target("nvidia-gpu"), orin_nano)  # a Jetson module is not a discrete card
    assert not runs_here(load_target("x86-avx2"), orin_nano)
    h200 = _local_with(monkeypatch, "NVIDIA H200")
    assert runs_here(load_target("nvidia-gpu"), h200) and not runs_here(load_target("jetson"), h200)


def test_no_gpu_no_local_gpu_target(monkeypatch):
    cpu = _local_with(monkeypatch, None)
    assert cpu.kind == "cpu" and not runs_here(load_target("jetson"), cpu)


def test_plan_measures_a_gpu_target_on_its_own_gpu(monkeypatch):
    local = _local_with(monkeypatch, "NVIDIA Jetson AGX Orin Developer Kit")
    summary = ModelSummary(params=1_000_000, macs=100_000_000, input_shape=[1, 3, 64, 64], num_outputs=10,
                           prunable_groups=12, min_channels=64, layers={"conv": 10, "linear": 1})
    ctx = make_context(target="jetson-agx-orin")
    target = load_target("jetson-agx-orin")
    here = plan(ctx, target, summary, local, ["tensorrt", "onnxruntime"], has_calib_data=True)
    assert here.measure_locally and {c.format for c in here.candidates} >= {"tensorrt"}
    elsewhere = plan(ctx, target, summary, _local_with(monkeypatch, None), ["onnxruntime"], has_calib_data=True)
    assert not elsewhere.measure_locally and {c.format for c in elsewhere.candidates} == {"onnx"}


def test_a_local_gpu_without_tensorrt_is_estimated_not_timed_on_the_cpu(monkeypatch):
    """ONNX Runtime without TensorRT runs on the CPU: its latency must not stand in for the GPU's."""
    local = _local_with(monkeypatch, "NVIDIA Jetson AGX Orin Developer Kit")
    summary = ModelSummary(params=1_000_000, macs=100_000_000, input_shape=[1, 3, 64, 64], num_outputs=10,
                           prunable_groups=12, min_channels=64, layers={"conv": 10, "linear": 1})
    ctx = make_context(target="jetson-agx-orin")
    planned = plan(ctx, load_target("jetson-agx-orin"), summary, local, ["onnxruntime", "openvino"],
                   has_calib_data=True)
    assert not planned.measure_locally
    assert any("TensorRT is not installed" in n and "estimated" in n for n in planned.notes)


def test_real_device_query_needs_cuda():
    if torch.cuda.is_available():
        assert host_mod.gpu_device()
    else:
        assert host_mod.gpu_device() is None


@pytest.fixture
def onnx_pair(tmp_path):
    import tinynet

    from edgeopt import export

    torch.manual_seed(0)
    good = export(tinynet.make().eval(), torch.randn(1, 1, 16, 16), format="onnx", out=tmp_path / "good.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    return Path(good), bad


def test_agent_measures_each_candidate_as_its_own_job(tmp_path, onnx_pair):
    from agenthelp import TOKEN, agent_in_process

    from edgeopt.remote.client import measure_candidates
    from edgeopt.report import Candidate

    good, bad = onnx_pair
    out = tmp_path / "out"
    out.mkdir()
    for p in (good, bad):
        shutil.copyfile(p, out / p.name)
    cands = [Candidate(id="good", status="ok", artifact="good.onnx", runtime="onnxruntime", precision="fp32"),
             Candidate(id="bad", status="ok", artifact="bad.onnx", runtime="onnxruntime", precision="fp32")]
    with agent_in_process(tmp_path / "work") as (url, _):
        env = measure_candidates(cands, out, ["onnxruntime"], url, TOKEN, (1, 1, 16, 16), 1, 0.3)
    assert cands[0].status == "ok" and cands[0].latency_source == "measured" and cands[0].latency_ms.n >= 10
    assert cands[1].status == "rejected" and cands[1].reason.startswith("on the device:")
    assert env["agent"] == url


def test_agent_client_rejects_a_tensorrt_candidate_before_sending(tmp_path, monkeypatch):
    from edgeopt.remote import client
    from edgeopt.report import Candidate

    sent = []
    monkeypatch.setattr(client, "measure_remote", lambda arts, *a, **k: sent.append(arts) or {})
    import edgeopt.formats.tensorrt_parser_ops as ops

    monkeypatch.setattr(ops, "check", lambda path, trt=None: f"TensorRT {trt}'s ONNX parser does not support "
                        "QLinearConv (node c)")
    (tmp_path / "q.onnx").write_bytes(b"x")
    cand = Candidate(id="q", status="ok", artifact="q.onnx", runtime="onnxruntime", precision="int8")
    client.measure_candidates([cand], tmp_path, ["tensorrt", "onnxruntime"], "http://127.0.0.1:1", "t" * 20,
                              (1, 1, 16, 16), 1, 0.2, tensorrt="10.3")
    assert sent == [] and cand.status == "rejected" and "TensorRT 10.3" in cand.reason and "QLinearConv" in cand.reason
