import pytest

from edgeopt.config import ModelSummary, make_context
from edgeopt.errors import ConfigError, UnknownNameError
from edgeopt.planner import plan
from edgeopt.targets import detect_local, load_target

SUMMARY = ModelSummary(params=1_000_000, macs=100_000_000, input_shape=[1, 3, 64, 64], num_outputs=10,
                       prunable_groups=12, min_channels=64)


def _plan(target="x86-amx", installed=("onnxruntime", "openvino"), **ctx):
    local = load_target("x86-amx").model_copy(update={"detected": False})
    return plan(make_context(target=target, **ctx), load_target(target), SUMMARY, local, list(installed),
                has_calib_data=True)


def test_cpu_plan_has_pruning_runtimes_and_reasons():
    p = _plan()
    assert p.measure_locally
    assert p.candidates[0].id == p.baseline_id and p.candidates[0].steps == []
    assert {c.format for c in p.candidates} == {"onnx", "openvino"}
    assert any(c.precision == "bf16" for c in p.candidates)  # AMX accelerates bf16
    assert any(s.technique == "prune" for c in p.candidates for s in c.steps)
    assert all(c.reason for c in p.candidates)
    by = {d.technique: d for d in p.decisions}
    assert by["unstructured_pruning"].decision == "rejected" and "dense" in by["unstructured_pruning"].reason
    assert by["channel_rounding"].decision == "applied"


def test_avx2_target_gets_no_bf16():
    p = _plan(target="x86-avx2")
    assert not any(c.precision == "bf16" for c in p.candidates)
    assert any(d.technique.startswith("quantize:bf16") and d.decision == "skipped" for d in p.decisions)


def test_remote_gpu_target_is_estimated():
    p = _plan(target="jetson")
    assert not p.measure_locally and any("estimate" in n for n in p.notes)


def test_missing_runtime_is_skipped_with_reason():
    p = _plan(installed=("onnxruntime",))
    assert {c.format for c in p.candidates} == {"onnx"}
    assert any(d.technique == "runtime:openvino" and d.decision == "skipped" for d in p.decisions)


def test_techniques_filter_and_unknown_name():
    p = _plan(techniques=["quantize"])
    assert not any(s.technique == "prune" for c in p.candidates for s in c.steps)
    with pytest.raises(UnknownNameError, match="did you mean 'prune'"):
        _plan(techniques=["prun"])


def test_narrow_model_reduces_rounding():
    local = detect_local()
    narrow = SUMMARY.model_copy(update={"min_channels": 16})
    p = plan(make_context(), load_target("x86-amx"), narrow, local, ["onnxruntime"])
    rounding = next(d for d in p.decisions if d.technique == "channel_rounding")
    assert "narrowest layer" in rounding.reason


def test_unprunable_model_skips_pruning_with_reason():
    s = SUMMARY.model_copy(update={"prunable_groups": 0, "unprunable": ["model: graph failed"]})
    p = plan(make_context(), load_target("x86-amx"), s, detect_local(), ["onnxruntime"])
    assert all(not c.steps for c in p.candidates)
    assert any(d.technique == "prune" and "graph failed" in d.reason for d in p.decisions)


@pytest.mark.parametrize("kwargs,msg", [({"goal": "speed"}, "goal"), ({"max_accuracy_drop": -1}, "max_accuracy_drop"),
                                        ({"colour": "red"}, "colour")])
def test_bad_context(kwargs, msg):
    with pytest.raises(ConfigError, match=msg):
        make_context(**kwargs)
