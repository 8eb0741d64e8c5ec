"""Latency lookup table: measured per layer on the runtime, cached on disk, interpolated between widths."""

import pytest
import torch
from torch import nn

from edgeopt.measure.latency_table import LatencyTable, signature


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                         nn.Conv2d(8, 16, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 4)).eval()


def test_second_build_measures_nothing_and_reuses_the_cache(tmp_path):
    model, x = _net(), torch.randn(1, 1, 8, 8)
    first = LatencyTable(cache_dir=tmp_path, runs=3).build(model, x, fractions=(1.0, 0.5))
    assert first.measured > 0 and set(first.layers) == {"0", "2", "3", "7"}
    assert first.layers["2"]["sig"]["kind"] == "dwconv"
    second = LatencyTable(cache_dir=tmp_path, runs=3).build(model, x, fractions=(1.0, 0.5))
    assert second.measured == 0 and second.hits == first.measured + first.hits
    assert second.layers["3"]["grid"] == first.layers["3"]["grid"]
    # another runtime (or precision, or machine) is another key: nothing is shared with it
    other = LatencyTable(cache_dir=tmp_path, runs=3, runtime="openvino")
    assert other._path(first.layers["3"]["sig"]) != first._path(first.layers["3"]["sig"])


def test_prediction_interpolates_and_uses_the_widths_given(tmp_path):
    model, x = _net(), torch.randn(1, 1, 8, 8)
    t = LatencyTable(cache_dir=tmp_path, runs=3).build(model, x, fractions=(1.0, 0.5))
    g = t.layers["3"]["grid"]
    assert set(g) == {(8, 16), (8, 8), (4, 16), (4, 8)}
    mid = t.layer_ms("3", 6, 12)
    assert min(g.values()) - 1e-9 <= mid <= max(g.values()) + 1e-9
    assert t.layer_ms("3", 8, 16) == pytest.approx(g[(8, 16)])
    # the whole model's measured latency is scaled by the layers' sum, each less the call cost
    assert t.whole_ms > 0 and t.call_ms > 0
    assert t.predict({}) == pytest.approx(t.whole_ms)
    s_full = t.predict_layers({})
    s_half = t.predict_layers({"3": (4, 8)})
    assert s_half == pytest.approx(s_full - max(0, g[(8, 16)] - t.call_ms) + max(0, g[(4, 8)] - t.call_ms))
    half = t.predict({"3": (4, 8)})
    assert half == pytest.approx(t.call_ms + (t.whole_ms - t.call_ms) * s_half / s_full)
    assert half <= t.predict({})
    # without a whole-model measurement: the call cost plus the layers' sum
    t.whole_ms = None
    assert t.predict({"3": (4, 8)}) == pytest.approx(t.call_ms + s_half)


def test_signature_separates_shapes_and_bad_runtime():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    assert signature(conv, (1, 4, 8, 8)) != signature(conv, (1, 4, 16, 16))
    with pytest.raises(ValueError, match="runtime"):
        LatencyTable(runtime="tflite")
    with pytest.raises(ValueError, match="precision"):
        LatencyTable(precision="int4")


def test_int8_table_is_fp32_grid_times_measured_ratio_and_cached_apart(tmp_path):
    model, x = _net(), torch.randn(1, 1, 8, 8)
    fp = LatencyTable(cache_dir=tmp_path, runs=3).build(model, x, fractions=(1.0, 0.5), whole=False)
    q = LatencyTable(cache_dir=tmp_path, runs=3, precision="int8").build(model, x, fractions=(1.0, 0.5),
                                                                        whole=False)
    # the fp32 entries come from the cache; only the INT8 diagonal points are new measurements
    sig = q.layers["3"]["sig"]
    assert q._path(sig, "int8") != q._path(sig, "fp32") == fp._path(sig)
    assert q.measured > 0 and q.hits >= fp.measured
    ratios = q.layers["3"]["ratio"]
    assert [f for f, _ in ratios] == pytest.approx([0.5, 1.0]) and all(r > 0 for _, r in ratios)
    assert q.layers["3"]["grid"][(8, 16)] <= fp.layers["3"]["grid"][(8, 16)] * ratios[-1][1] + 1e-9
    again = LatencyTable(cache_dir=tmp_path, runs=3, precision="int8").build(model, x, fractions=(1.0, 0.5),
                                                                            whole=False)
    assert again.measured == 0 and again.layers["3"]["ratio"] == ratios


def test_narrower_is_never_predicted_slower(tmp_path):
    t = LatencyTable(cache_dir=tmp_path, runs=3).build(_net(), torch.randn(1, 1, 8, 8), fractions=(1.0, 0.5))
    g = t.layers["3"]["grid"]
    assert g[(4, 8)] <= min(g[(8, 8)], g[(4, 16)]) and g[(8, 8)] <= g[(8, 16)]


def test_calibration_fits_an_offset_on_whole_models_and_exact_widths_are_measured(tmp_path):
    model, x = _net(), torch.randn(1, 1, 8, 8)
    t = LatencyTable(cache_dir=tmp_path, runs=3).build(model, x, fractions=(1.0, 0.5), whole=False)
    half = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, groups=4),
                         nn.Conv2d(4, 8, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    t.calibrate([model, half], x, seconds=0.3)
    assert [s for s, _ in t.points] == pytest.approx([
        t.predict_layers({}), t.predict_layers({"0": (1, 4), "2": (4, 4), "3": (4, 8), "7": (8, 4)})])
    assert t.whole_ms == t.points[0][1] > 0
    if t.fit is not None:  # a least-squares line through two points passes through both
        a, b = t.fit
        assert a >= 0 and b > 0
        if a > 0:
            for s, ms in t.points:
                assert a + b * s == pytest.approx(ms)
    # a width off the grid: measured on demand, cached, and then used as is (not interpolated)
    before = t.measured
    t.layer_ms("3", 6, 12)  # interpolated and remembered first: measuring it must replace what was remembered
    t.measure_widths({"3": (6, 12)})
    assert t.measured == before + 1 and t.layer_ms("3", 6, 12) == t.layers["3"]["exact"][(6, 12)]
    t.measure_widths({"3": (6, 12)})
    assert t.measured == before + 1


def test_calibration_is_kept_on_disk_and_not_measured_again(tmp_path, monkeypatch):
    """Calibrating converts whole models (at INT8 an NNCF quantization each: 30 s of a profiled SSDlite build):
    a second table for the same models on this machine reads their times from disk; other models (another
    architecture, another input shape) are measured."""
    from edgeopt.measure import latency_table

    model, x = _net(), torch.randn(1, 1, 8, 8)
    half = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, groups=4),
                         nn.Conv2d(4, 8, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    first = LatencyTable(cache_dir=tmp_path, runs=3).build(model, x, fractions=(1.0, 0.5), whole=False)
    first.calibrate([model, half], x, seconds=0.3)
    converted = []
    real = latency_table.runner
    monkeypatch.setattr(latency_table, "runner", lambda m, *a, **k: converted.append(m) or real(m, *a, **k))
    again = LatencyTable(cache_dir=tmp_path, runs=3).build(model, x, fractions=(1.0, 0.5), whole=False)
    again.calibrate([model, half], x, seconds=0.3)
    assert converted == [] and again.points == first.points and again.fit == first.fit
    assert again.measured == 0
    alone = LatencyTable(cache_dir=tmp_path, runs=3).build(model, x, fractions=(1.0, 0.5), whole=False)
    alone.calibrate([model], x, seconds=0.3)  # other models: measured
    assert converted == [model] and alone.measured == 1
    for path in tmp_path.glob("whole-*.json"):
        path.write_text("{not json")  # an unreadable file: measured again, not an error
    LatencyTable(cache_dir=tmp_path, runs=3).build(model, x, fractions=(1.0, 0.5), whole=False).calibrate(
        [model, half], x, seconds=0.3)
    assert converted == [model, model, half]


def test_batch_column_times_every_layer_at_the_served_batch_and_keys_it_apart(tmp_path):
    """A table at batch 8 times each layer on an 8-image input (its rows say so), caches apart from batch 1,
    and a layer's time at batch 8 is more than at batch 1 (it does 8x the multiply-adds)."""
    model, x = _net(), torch.randn(1, 1, 64, 64)
    one = LatencyTable(cache_dir=tmp_path, runs=5).build(model, x, fractions=(1.0,), whole=False)
    eight = LatencyTable(cache_dir=tmp_path, runs=5, batch=8).build(model, x, fractions=(1.0,), whole=False)
    assert eight.measured > 0  # nothing of the batch-1 table is reused
    assert eight.layers["0"]["sig"]["n"] == 8 and one.layers["0"]["sig"]["n"] == 1
    assert eight.layers["7"]["sig"]["rows"] == 8
    rows = {r["layer"]: r for r in eight.rows()}
    assert set(rows) == {"0", "2", "3", "7"} and {r["batch"] for r in rows.values()} == {8}
    assert {r["batch"] for r in one.rows()} == {1}
    assert rows["0"]["ms"] > one.layer_ms("0", 1, 8)
    assert LatencyTable(batch=16, runs=20).runs_per_entry == 5 and one.runs_per_entry == one.runs
    with pytest.raises(ValueError, match="batch"):
        LatencyTable(batch=0)


def test_at_batch_repeats_the_first_item_of_every_input():
    from edgeopt.measure.latency_table import at_batch

    x = torch.randn(1, 3, 4, 4)
    assert at_batch(x, 4).shape == (4, 3, 4, 4) and torch.equal(at_batch(x, 4)[3], x[0])
    assert at_batch(x, 1) is x
    pair = at_batch({"a": x, "b": (torch.randn(1, 2),)}, 3)
    assert pair["a"].shape[0] == 3 and pair["b"][0].shape == (3, 2)


def test_a_table_stops_at_the_deadline_and_keeps_what_it_measured(tmp_path):
    """SSDlite's table took 175 s in a 300-s search whose other builds took 7-19 s: the search could not
    forecast it and overran its budget by 54 s. Under a deadline, entries not cached yet are not measured past
    it; those measured before stay on disk, so the next run starts from them."""
    import time

    from edgeopt.errors import TimeBudgetError
    from edgeopt.timeout import run_until

    model, x = _net(), torch.randn(1, 1, 8, 8)
    with run_until(time.perf_counter() + 3600):  # far away: the table is built as without one
        LatencyTable(cache_dir=tmp_path, runs=3).build(model, x, fractions=(1.0,), whole=False)
    with run_until(time.perf_counter() - 1):  # past: only what the cache holds is answered
        again = LatencyTable(cache_dir=tmp_path, runs=3).build(model, x, fractions=(1.0,), whole=False)
        assert again.measured == 0 and again.hits > 0
        with pytest.raises(TimeBudgetError, match="entries measured, kept on disk"):
            LatencyTable(cache_dir=tmp_path, runs=3).build(model, x, fractions=(1.0, 0.5), whole=False)
    LatencyTable(cache_dir=tmp_path, runs=3).build(model, x, fractions=(1.0, 0.5), whole=False)  # no limit now
