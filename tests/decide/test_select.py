"""decide/select.py's rule for the precisions a target cannot win with, on the original's measured p50."""

from edgeopt.decide import policy
from edgeopt.decide.select import cannot_win


def test_a_pair_clearly_slower_than_a_more_exact_one_cannot_win():
    out = cannot_win([("onnx", "fp32", 1.0), ("onnx", "int8", 1.5), ("openvino", "fp32", 0.9),
                      ("openvino", "int8", 0.4), ("openvino", "bf16", 0.95)])
    # ORT INT8 is slower than fp32 (more exact); ORT fp32 is within the noise factor of OpenVINO fp32
    assert set(out) == {("onnx", "int8")}
    assert "3.8x openvino int8 (0.400 ms)" in out[("onnx", "int8")]  # named after the fastest that beats it


def test_a_faster_less_exact_pair_never_rules_out_a_more_exact_one():
    assert cannot_win([("openvino", "fp32", 10.0), ("openvino", "int8", 1.0)]) == {}


def test_the_factor_is_the_policy_one(monkeypatch):
    rows = [("onnx", "fp32", 1.0), ("openvino", "fp32", 1.1)]
    assert cannot_win(rows) == {}
    monkeypatch.setattr(policy, "CANNOT_WIN_FACTOR", 1.05)
    assert set(cannot_win(rows)) == {("openvino", "fp32")}


def test_a_pair_whose_original_broke_the_budget_rules_nothing_out():
    """YOLOv8n: OpenVINO INT8 ran 1.3x faster than ONNX Runtime INT8 but lost 2.9 pp on the original, ORT none."""
    rows = [("onnx", "int8", 1.43), ("openvino", "int8", 1.11), ("onnx", "fp32", 1.6)]
    assert set(cannot_win(rows)) == {("onnx", "int8")}
    assert cannot_win(rows, broke={("openvino", "int8")}) == {}
