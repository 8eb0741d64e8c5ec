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
from paths import ROOT

from edgeopt.remote import PROTOCOL_HEADER, PROTOCOL_VERSION
from edgeopt.remote.client import AgentClient, AgentError, measure_remote

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
    assert len(r.latency.samples_ms) == min(r.latency.n, 500)  # raw samples kept, capped (BenchConfig.keep_samples)
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


# --- TensorRT on the agent: engines are built on the device from ONNX ------------------------------------------

def test_tensorrt_job_builds_the_engine_from_onnx_and_never_deserializes_the_upload(model_and_data, monkeypatch,
                                                                                   tmp_path):
    # the GPU parts (CUDA device, TensorRT builder and runtime) cannot run here: stand-ins record the route
    import shutil

    from edgeopt.formats import backend_for
    from edgeopt.formats import tensorrt as trt_mod

    calls = []
    monkeypatch.setattr(trt_mod, "require_gpu", lambda: "Fake GPU")

    def build(onnx_path, out, precision, *a, **k):
        calls.append(("build", Path(onnx_path).name, precision))
        Path(out).write_bytes(b"engine built here")
        return {"gpu": "Fake GPU"}

    def load(path, precision="fp32", threads=None, device="GPU"):
        calls.append(("load", Path(path).name, Path(path).read_bytes()))
        from edgeopt.formats.base import Session

        return Session(runtime="tensorrt", runtime_version="x", precision_executed=precision, input_shape=(1,),
                       run=lambda x: x, lean_call=lambda x: (lambda: None), device="Fake GPU")

    monkeypatch.setattr(trt_mod, "build_engine", build)
    monkeypatch.setattr(trt_mod, "load_tensorrt", load)
    upload = tmp_path / "model.onnx"
    shutil.copyfile(model_and_data[2], upload)
    s = backend_for("tensorrt").load_on_device(upload, "onnx", precision="fp16")
    assert calls == [("build", "model.onnx", "fp16"), ("load", "model.built.engine", b"engine built here")]
    assert "built on the device" in s.info["route"]


def test_tensorrt_job_falls_back_to_onnxruntime_tensorrt_provider(model_and_data, monkeypatch, recwarn):
    import onnxruntime as ort

    from edgeopt.errors import BackendMissingError
    from edgeopt.formats import backend_for

    trt = backend_for("tensorrt")
    if trt.installed():
        pytest.skip("this machine runs TensorRT itself: the fallback is for devices without it")
    with pytest.raises(BackendMissingError, match="no TensorRT execution provider"):
        trt.load_on_device(model_and_data[2], "onnx")
    # onnxruntime-gpu / JetPack builds list the provider; this CPU build does not, so it is listed here and
    # ONNX Runtime itself falls back to its CPU provider when creating the session
    real = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", *real])
    s = trt.load_on_device(model_and_data[2], "onnx")
    assert "TensorRT execution provider" in s.info["route"] and s.runtime == "onnxruntime"
    assert s.run(np.zeros((1, 1, 16, 16), np.float32)).shape[0] == 1


@pytest.mark.skipif(not __import__("edgeopt.formats", fromlist=["x"]).backend_for("tensorrt").installed(),
                    reason="needs an NVIDIA GPU with CUDA and the tensorrt package (none here)")
def test_tensorrt_job_measures_on_a_real_gpu(agent, model_and_data):
    res = measure_remote({"m": model_and_data[2]}, agent[1], TOKEN, runtime="tensorrt", max_time_s=0.5)["m"]
    assert res.runtime == "tensorrt" and res.latency.n >= 10


def test_uploaded_engine_needs_trust_engines(tmp_path):
    from agenthelp import agent_in_process

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not really an engine")
    engine.with_suffix(".engine.json").write_text("{}")
    with agent_in_process(tmp_path / "w1") as (url, _):
        with pytest.raises(AgentError, match="--trust-engines"):
            measure_remote({"e": engine}, url, TOKEN, runtime="tensorrt", max_time_s=0.2)
    with agent_in_process(tmp_path / "w2", trust_engines=True) as (url, _):
        with pytest.raises(AgentError, match="job failed") as e:  # accepted; no GPU here to load it
            measure_remote({"e": engine}, url, TOKEN, runtime="tensorrt", max_time_s=0.2)
        assert "--trust-engines" not in str(e.value)


# --- work dir, paths, token, queue, disconnects, input size --------------------------------------------------

def test_relative_workdir_is_resolved_at_start(tmp_path, monkeypatch, model_and_data):
    from agenthelp import agent_in_process

    monkeypatch.chdir(tmp_path)
    with agent_in_process(Path("rel-work")) as (url, _):
        res = measure_remote({"m": model_and_data[2]}, url, TOKEN, max_time_s=0.2, threads=1)
    assert res["m"].latency.n >= 10 and (tmp_path / "rel-work").is_dir()


def test_workdir_mode_is_left_alone_and_jobs_go_to_a_private_subfolder(tmp_path):
    from edgeopt.remote.server import AgentConfig, create_app

    work = tmp_path / "shared"
    work.mkdir(mode=0o755)
    work.chmod(0o755)
    app = create_app(AgentConfig(token=TOKEN, workdir=work))
    assert work.stat().st_mode & 0o777 == 0o755
    private = app.app.state.workdir
    assert private.parent == work and private.stat().st_mode & 0o777 == 0o700


def test_failed_job_error_names_no_agent_path(tmp_path):
    from agenthelp import agent_in_process

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07not a protobuf" * 50)
    with agent_in_process(tmp_path / "work") as (url, cfg):
        with pytest.raises(AgentError, match="cannot load") as e:
            measure_remote({"bad": bad}, url, TOKEN, max_time_s=0.2)
    assert str(tmp_path / "work") not in str(e.value) and "job-" not in str(e.value)
    assert "a0/model.onnx" in str(e.value)


def test_token_file_readable_by_others_warns(tmp_path, capsys):
    from edgeopt.remote import read_token_file

    tok = tmp_path / "token"
    tok.write_text(TOKEN + "\n")
    tok.chmod(0o600)
    assert read_token_file(tok) == TOKEN and "warning" not in capsys.readouterr().err
    tok.chmod(0o644)
    assert read_token_file(tok) == TOKEN
    assert "readable by others" in capsys.readouterr().err


def test_requested_input_shape_is_bounded(agent, model_and_data):
    from pydantic import ValidationError

    from edgeopt.remote import Manifest

    with pytest.raises(ValidationError, match="at most"):
        Manifest(protocol=PROTOCOL_VERSION, artifacts=[{"id": "a", "format": "onnx", "runtime": "onnxruntime",
                                                        "files": ["f"]}], input_shape=[1, 3, 100000, 100000])
    with pytest.raises(AgentError, match="400.*at most"):
        measure_remote({"a": model_and_data[2]}, agent[1], TOKEN, input_shape=(64, 3, 4096, 4096), max_time_s=0.2)


def _slow_onnx(path: Path) -> Path:
    """Two 2048x2048 matrix products per run: seconds per job on one thread, from a 200-byte file."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2048, 2048])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [2048, 2048])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "x"], ["y"]),
                               helper.make_node("MatMul", ["y", "x"], ["z"])], "slow", [x], [z])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _wait_load(url: str, running: int, waiting: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        load = AgentClient(url, TOKEN).info()["load"]
        if load == {"running": running, "waiting": waiting}:
            return True
        time.sleep(0.1)
    return False


def _post_in_thread(url: str, path: Path, timeout_s: float, out: list):
    import threading

    def go():
        try:
            out.append(AgentClient(url, TOKEN, timeout_s=timeout_s).measure(
                {"s": path}, {"s": "onnxruntime"}, {"s": "fp32"}, threads=1, max_time_s=60))
        except AgentError as e:
            out.append(e)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def test_queue_counts_waiting_jobs_and_a_gone_client_is_cancelled(tmp_path):
    from agenthelp import agent_in_process

    slow = _slow_onnx(tmp_path / "slow.onnx")
    with agent_in_process(tmp_path / "work", max_queue=1) as (url, _):
        first, second = [], []
        t1 = _post_in_thread(url, slow, 4.0, first)  # its client gives up after 4 s
        assert _wait_load(url, 1, 0, 30), "the first job never started"
        t2 = _post_in_thread(url, slow, 2.0, second)
        assert _wait_load(url, 1, 1, 10), "--queue 1 must let one job wait while one runs"
        with pytest.raises(AgentError, match="503.*1 job measuring and 1 waiting"):
            measure_remote({"x": slow}, url, TOKEN, max_time_s=0.2)
        t1.join(10)
        t2.join(10)
        assert isinstance(first[0], AgentError) and isinstance(second[0], AgentError)  # client-side timeouts
        # both clients are gone: the waiting job is dropped and the running one killed, long before its 60 s
        assert _wait_load(url, 0, 0, 8), "jobs of disconnected clients kept the agent busy"


def test_client_disconnect_mid_upload_is_not_a_server_error(tmp_path, caplog):
    from agenthelp import agent_in_process

    with agent_in_process(tmp_path / "work") as (url, _):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall((f"POST /v1/measure HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                       f"{PROTOCOL_HEADER}: {PROTOCOL_VERSION}\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                       "Content-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"f0\"; "
                       "filename=\"a.onnx\"\r\n\r\n").encode() + b"x" * 1000)
            time.sleep(0.5)
        time.sleep(1.0)  # the server notices the disconnect
        assert AgentClient(url, TOKEN).info()["load"] == {"running": 0, "waiting": 0}
    errors = [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert not errors, [r.getMessage() for r in errors]
