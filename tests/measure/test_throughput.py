import pytest
import torch
from tinynet import make_plain

from edgeopt.errors import InputShapeError
from edgeopt.formats import backend_for
from edgeopt.measure.throughput import Load, ThroughputConfig, measure_throughput, served_shapes, server_for

QUICK = ThroughputConfig(warmup_s=0.1, window_s=0.1, min_windows=4, max_time_s=1.0)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A tiny model exported with a dynamic batch axis, verified at batch 1 and at batch 4 on both runtimes."""
    d = tmp_path_factory.mktemp("tp")
    model, x = make_plain(), torch.randn(1, 1, 16, 16)
    paths = {}
    for fmt, runtime in (("onnx", "onnxruntime"), ("openvino", "openvino")):
        pytest.importorskip(backend_for(fmt).module)
        path = backend_for(fmt).export(model, x, d / f"m.{fmt}", options={"dynamic_batch": True}).path
        session = backend_for(runtime).load(path, threads=1)
        for b in (1, 4):
            xb = torch.randn(b, 1, 16, 16)
            with torch.no_grad():
                want = model(xb).numpy()
            assert session.run(xb.numpy()).shape == want.shape
            assert abs(session.run(xb.numpy()) - want).max() < 1e-3
        paths[runtime] = path
    return paths


def _consistent(t):
    """images/s agrees with batch / per-request latency, within a generous factor: no more than `streams`
    requests in flight at once at the median latency, no fewer than a quarter of one at the p99 (a tiny
    model's call is shorter than the driving threads' own overhead between calls, and a shared test machine
    preempts them)."""
    one = t.batch / (t.p50_ms / 1e3)
    slow = t.batch / (t.p99_ms / 1e3)
    assert slow / 4 < t.images_s < one * t.streams * 2, (t.images_s, one, slow)


def test_openvino_async_queue_with_two_streams(artifacts):
    server = server_for(artifacts["openvino"], "openvino", "fp32", 2, Load(batch=4, streams=2))
    t = measure_throughput({"a": server}, QUICK)["a"]
    assert t.runtime_settings["performance_hint"] == "THROUGHPUT" and t.streams == 2 and t.batch == 4
    assert t.requests > 0 and t.p99_ms >= t.p50_ms > 0 and len(t.samples_images_s) >= 4
    _consistent(t)


def test_onnxruntime_two_concurrent_requests_interleaved_with_batch_one(artifacts):
    servers = {b: server_for(artifacts["onnxruntime"], "onnxruntime", "fp32", 2, Load(batch=b, streams=2))
               for b in (1, 4)}
    res = measure_throughput(servers, QUICK)
    for b, t in res.items():
        assert t.batch == b and t.streams == 2 and t.runtime_settings["threads_per_session"] == 1
        assert len(t.samples_images_s) == len(res[1].samples_images_s) >= 4  # interleaved: equal turns
        _consistent(t)


def test_static_batch_names_dynamic_batch_export():
    with pytest.raises(InputShapeError, match="--dynamic-batch"):
        served_shapes({"input": (1, 3, 8, 8)}, 8)
    assert served_shapes({"input": (-1, 3, 8, 8)}, 8) == {"input": (8, 3, 8, 8)}


def test_busy_seconds_does_not_bill_the_drain():
    from edgeopt.measure.throughput import busy_seconds

    # two streams in step: both finish at 1.0 s, nothing idles
    assert busy_seconds(0.0, [0.5, 0.5, 1.0, 1.0], 2) == pytest.approx(1.0)
    # out of step: one stream's last request ends at 0.8, the other's at 1.0; 0.2 stream-s idle over 2 streams
    assert busy_seconds(0.0, [0.3, 0.55, 0.8, 1.0], 2) == pytest.approx(0.9)
    assert busy_seconds(0.0, [0.4], 1) == pytest.approx(0.4) and busy_seconds(0.0, [], 2) == 0.0
