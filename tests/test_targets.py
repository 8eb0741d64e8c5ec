import pytest

from edgeopt.errors import TargetError, UnknownNameError
from edgeopt.targets import builtin_targets, detect_local, list_targets, load_target

REQUIRED = {"x86-avx2", "x86-avx512-vnni", "x86-amx", "arm64-cpu", "jetson-orin-nano", "jetson-agx-orin",
            "jetson-xavier-nx", "nvidia-gpu", "local"}


def test_builtin_profiles_load_and_validate():
    names = {p.name for p in list_targets()}
    assert REQUIRED <= names
    for p in list_targets():
        assert p.runtimes and "fp32" in p.precisions and p.channel_multiple >= 1


@pytest.mark.parametrize("name", sorted(REQUIRED - {"local"}))
def test_every_profile_has_a_roofline(name):
    p = load_target(name)
    assert p.peak_ops.get("fp32", 0) > 0 and p.memory_bandwidth_gbs > 0


def test_alias_resolves():
    assert load_target("jetson").name == "jetson-orin-nano"


def test_unknown_target_suggests():
    with pytest.raises(UnknownNameError, match="did you mean"):
        load_target("jetsonn")


def test_local_detection_reads_this_machine():
    local = detect_local()
    assert local.detected and local.kind in ("cpu", "gpu") and local.cores >= 1
    assert "fp32" in local.precisions


def test_custom_yaml_and_broken_field(tmp_path):
    good = tmp_path / "board.yaml"
    good.write_text("name: my-board\nkind: cpu\narch: aarch64\nruntimes: [onnxruntime]\nprecisions: [fp32]\n")
    assert load_target(str(good)).name == "my-board"
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: b\nkind: tpu\narch: x\nruntimes: [onnxruntime]\nprecisions: [fp32]\n")
    with pytest.raises(TargetError, match="field 'kind'"):
        load_target(str(bad))
    extra = tmp_path / "extra.yaml"
    extra.write_text("name: b\nkind: cpu\narch: x\nruntimes: [onnxruntime]\nprecisions: [fp32]\nspeed: 3\n")
    with pytest.raises(TargetError, match="field 'speed'"):
        load_target(str(extra))
    with pytest.raises(TargetError, match="does not exist"):
        load_target(str(tmp_path / "missing.yaml"))


def test_registry_is_cached_and_consistent():
    assert builtin_targets() is builtin_targets()
