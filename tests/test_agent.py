"""The measurement agent as a real process on loopback (127.0.0.1, a free port), talked to over HTTP."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from edgeopt.remote import PROTOCOL_HEADER, PROTOCOL_VERSION
from edgeopt.remote.client import AgentClient, AgentError, measure_remote

ROOT = Path(__file__).parent.parent
TOKEN = "test-token-0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_agent(tmp: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    tok = tmp / "token"
    tok.write_text(TOKEN + "\n")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edgeopt", "agent", "--port", str(port), "--token-file",
                             str(tok), "--workdir", str(tmp / "work"), *extra], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"agent exited: {proc.stderr.read()}")
        try:
            AgentClient(url, TOKEN, timeout_s=5).info()
            return proc, url
        except AgentError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("agent did not start within 60 s")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory):
    import tinynet

    from edgeopt import export

    d = tmp_path_factory.mktemp("agent-model")
    torch.manual_seed(0)
    net = tinynet.make().eval()
    x = torch.randn(1, 1, 16, 16)
    onnx_path = export(net, x, format="onnx", out=d / "tiny.onnx")
    data_dir = d / "data"
    data_dir.mkdir()
    xs = torch.randn(40, 1, 16, 16)
    with torch.no_grad():
        ys = net(xs).argmax(1)  # labels = the model's own predictions: the exported model must score ~100%
    np.savez(data_dir / "mine.npz", x=xs.numpy(), y=ys.numpy())
    return net, x, onnx_path, data_dir


@pytest.fixture(scope="module")
def agent(tmp_path_factory, model_and_data):
    tmp = tmp_path_factory.mktemp("agent")
    proc, url = _start_agent(tmp, "--max-upload-mb", "1", "--job-timeout", "120", "--data-dir",
                             str(model_and_data[3]))
    yield proc, url, tmp
    _stop(proc)


def _headers(token=TOKEN, proto=PROTOCOL_VERSION):
    return {"Authorization": f"Bearer {token}", PROTOCOL_HEADER: str(proto)}


def test_round_trip_measures_on_the_agent(agent, model_and_data):
    proc, url, _ = agent
    onnx_path = model_and_data[2]
    t0 = time.perf_counter()
    res = measure_remote({"tiny": onnx_path}, url, TOKEN, max_time_s=0.5, threads=1, dataset="mine")
    wall = time.perf_counter() - t0
    r = res["tiny"]
    assert r.latency_source == "measured" and r.latency.n >= 10 and 0 < r.latency.p50 < 1000
    assert len(r.latency.samples_ms) == r.latency.n
    assert r.runtime == "onnxruntime" and r.precision_executed == "fp32" and r.threads == 1
    assert r.environment["onnxruntime"] and r.environment["cpu_count"] >= 1
    assert r.metric == "top1" and r.accuracy >= 97.5
    assert r.round_trip_s <= wall and r.job_s < r.round_trip_s


def test_openvino_and_onnx_interleaved_in_one_job(agent, model_and_data, tmp_path):
    pytest.importorskip("openvino")
    from edgeopt import export

    net, x, onnx_path, _ = model_and_data
    xml = export(net, x, format="openvino", out=tmp_path / "tiny.xml")
    res = measure_remote({"ort": onnx_path, "ov": xml}, agent[1], TOKEN, max_time_s=0.5)
    assert res["ov"].runtime == "openvino" and res["ort"].runtime == "onnxruntime"
    assert res["ov"].latency.n == res["ort"].latency.n  # measured round-robin, same number of turns


def test_wrong_or_missing_token_is_401(agent, model_and_data):
    url = agent[1]
    assert httpx.get(url + "/v1/info", headers=_headers(token="x" * 30)).status_code == 401
    assert httpx.get(url + "/v1/info", headers={PROTOCOL_HEADER: "1"}).status_code == 401
    with pytest.raises(AgentError, match="401"):
        measure_remote({"a": model_and_data[2]}, url, "wrong-token-wrong-token", max_time_s=0.2)


def test_oversized_upload_is_413(agent, tmp_path):
    url = agent[1]
    big = tmp_path / "big.onnx"
    big.write_bytes(os.urandom(2 * 2**20))  # limit is 1 MB
    with pytest.raises(AgentError, match="413"):
        measure_remote({"big": big}, url, TOKEN, max_time_s=0.2)

    def chunks():  # no Content-Length: the agent must count the streamed body
        yield b'--b\r\nContent-Disposition: form-data; name="f0"; filename="a.onnx"\r\n\r\n'
        for _ in range(32):
            yield b"x" * 65536

    r = httpx.post(url + "/v1/measure", headers={**_headers(), "Content-Type": "multipart/form-data; boundary=b"},
                   content=chunks())
    assert r.status_code == 413


def test_protocol_mismatch_refuses_cleanly(agent, monkeypatch):
    url = agent[1]
    r = httpx.get(url + "/v1/info", headers=_headers(proto=PROTOCOL_VERSION + 1))
    assert r.status_code == 409 and "protocol" in r.json()["error"]
    import edgeopt.remote.client as client

    monkeypatch.setattr(client, "PROTOCOL_VERSION", PROTOCOL_VERSION + 1)
    with pytest.raises(AgentError, match="protocol mismatch"):
        AgentClient(url, TOKEN).info()


def test_corrupt_artifact_fails_the_job_and_the_agent_keeps_serving(agent, model_and_data, tmp_path):
    proc, url, _ = agent
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07this is not a protobuf" * 50)
    with pytest.raises(AgentError, match="job failed.*cannot load"):
        measure_remote({"bad": bad}, url, TOKEN, max_time_s=0.2)
    assert proc.poll() is None
    ok = measure_remote({"good": model_and_data[2]}, url, TOKEN, max_time_s=0.2)
    assert ok["good"].latency.n >= 10


def test_client_names_never_become_paths(agent, model_and_data):
    proc, url, tmp = agent
    manifest = {"protocol": PROTOCOL_VERSION, "max_time_s": 0.2,
                "artifacts": [{"id": "../../escape", "format": "onnx", "runtime": "onnxruntime", "files": ["f"]}]}
    with open(model_and_data[2], "rb") as f:
        r = httpx.post(url + "/v1/measure", headers=_headers(), data={"manifest": json.dumps(manifest)},
                       files={"f": ("../../../evil.onnx", f)}, timeout=120)
    assert r.status_code == 200 and list(r.json()["results"]) == ["../../escape"]
    assert not list(tmp.parent.rglob("evil.onnx")) and not list(tmp.parent.rglob("escape*"))
    assert not [p for p in (tmp / "work").rglob("*") if p.is_file()]  # job folders are removed after each job
    bad = {**manifest, "artifacts": [{**manifest["artifacts"][0], "runtime": "rm -rf"}]}
    r = httpx.post(url + "/v1/measure", headers=_headers(), data={"manifest": json.dumps(bad)},
                   files={"f": ("x.onnx", b"x")})
    assert r.status_code == 400 and "unknown runtime" in r.json()["error"]


def test_per_job_timeout(tmp_path, model_and_data):
    # 50 ms is less than the isolated worker process needs just to start, so the job always times out,
    # however fast this machine measures
    proc, url = _start_agent(tmp_path, "--job-timeout", "0.05")
    try:
        with pytest.raises(AgentError, match="timeout"):
            measure_remote({"a": model_and_data[2]}, url, TOKEN, max_time_s=30)
        assert proc.poll() is None and AgentClient(url, TOKEN).info()["protocol"] == PROTOCOL_VERSION
    finally:
        _stop(proc)


def test_optimize_measures_on_the_device(agent, tinynet_spec, tmp_path, fast_bench):
    from edgeopt.engine.pipeline import optimize

    url = agent[1]
    report = optimize(tinynet_spec, input_shape=(1, 1, 16, 16), target="local", out_dir=tmp_path,
                      runtimes=["onnxruntime"], techniques=["quantize"], bench_config=fast_bench,
                      device=url, device_token=TOKEN)
    base = report.baseline
    assert base.latency_source == "measured" and base.latency_ms.n >= 10
    assert base.measured_on["agent"] == url and report.environment["device"]["agent"] == url


def test_exposed_address_warns_and_loopback_does_not():
    from edgeopt.remote.server import exposure_warning

    assert exposure_warning("127.0.0.1") is None and exposure_warning("::1") is None
    assert exposure_warning("localhost") is None
    assert "reachable from the network" in exposure_warning("0.0.0.0")
    assert "reachable from the network" in exposure_warning("jetson.local")


def test_short_or_missing_token_file_is_a_clear_error(tmp_path):
    from edgeopt.errors import ConfigError
    from edgeopt.remote import read_token_file

    (tmp_path / "t").write_text("short\n")
    with pytest.raises(ConfigError, match="at least 16"):
        read_token_file(tmp_path / "t")
    with pytest.raises(ConfigError, match="cannot read token file"):
        read_token_file(tmp_path / "missing")
