"""Latency lookup table: measured per layer on the runtime, cached on disk, interpolated between widths."""

import pytest
import torch
from torch import nn

from edgeopt.measure.lut import LatencyTable, signature


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
    full, half = t.predict({}), t.predict({"3": (4, 8)})
    assert half == pytest.approx(full - g[(8, 16)] + g[(4, 8)])


def test_signature_separates_shapes_and_bad_runtime():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    assert signature(conv, (1, 4, 8, 8)) != signature(conv, (1, 4, 16, 16))
    with pytest.raises(ValueError, match="runtime"):
        LatencyTable(runtime="tflite")


def test_narrower_is_never_predicted_slower(tmp_path):
    t = LatencyTable(cache_dir=tmp_path, runs=3).build(_net(), torch.randn(1, 1, 8, 8), fractions=(1.0, 0.5))
    g = t.layers["3"]["grid"]
    assert g[(4, 8)] <= min(g[(8, 8)], g[(4, 16)]) and g[(8, 8)] <= g[(8, 16)]
