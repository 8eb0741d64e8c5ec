import pytest

from edgeopt.errors import TargetError, UnknownNameError
from edgeopt.targets import PROFILE_DIR, builtin_targets, detect_local, list_targets, load_target

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


@pytest.mark.parametrize("field,value,message", [
    ("runtimes", "[onnxruntime, tflite]", "unknown runtime 'tflite'"),
    ("precisions", "[int8]", "fp32 must be listed"),
    ("peak_ops", "{int8: 1.0e12}", "needs an fp32 entry"),
    ("peak_ops", "{fp32: -1}", "must be positive"),
    ("memory_bandwidth_gbs", "0", "greater than 0"),
    ("channel_multiple", "0", "greater than or equal to 1"),
])
def test_broken_profile_names_the_field(tmp_path, field, value, message):
    base = {"name": "b", "kind": "cpu", "arch": "x", "runtimes": "[onnxruntime]", "precisions": "[fp32]",
            field: value}
    f = tmp_path / "b.yaml"
    f.write_text("".join(f"{k}: {v}\n" for k, v in base.items()))
    with pytest.raises(TargetError, match=f"field '{field}'.*{message}"):
        load_target(str(f))


def test_not_a_mapping_and_bad_yaml(tmp_path):
    f = tmp_path / "list.yaml"
    f.write_text("- a\n- b\n")
    with pytest.raises(TargetError, match="expected a mapping"):
        load_target(str(f))
    f.write_text("name: [unclosed\n")
    with pytest.raises(TargetError, match="not valid YAML"):
        load_target(str(f))


@pytest.mark.parametrize("path", sorted(PROFILE_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_figure_has_its_source_in_a_comment(path):
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        key = line.split(":")[0].strip()
        if key in ("memory_bandwidth_gbs", "call_overhead_ms", "channel_multiple") and line[0] != " ":
            assert "#" in line, f"{path.name}: {key} has no source comment"
        if key == "peak_ops":
            block = []
            for nxt in lines[i + 1:]:
                if not nxt.startswith(" "):
                    break
                block.append(nxt)
            assert any(b.strip().startswith("#") or "#" in b for b in block), f"{path.name}: peak_ops unsourced"


def test_jetson_profiles_describe_their_accelerators():
    agx, nx, nano = load_target("jetson-agx-orin"), load_target("xavier-nx"), load_target("jetson")
    assert agx.dla_cores == 2 and nx.dla_cores == 2 and nano.dla_cores == 0
    assert "2:4" in agx.sparse_support and not nx.sparse_support  # sparse tensor cores arrived with Ampere
    for p in (agx, nx, nano):
        assert p.runtimes[0] == "tensorrt" and {"fp16", "int8"} <= set(p.precisions)
        assert p.peak_ops["int8"] > p.peak_ops["fp16"] > p.peak_ops["fp32"]


def test_targets_command_lists_names_aliases_runtimes_precisions():
    from typer.testing import CliRunner

    from edgeopt.cli import app

    r = CliRunner().invoke(app, ["targets"], env={"COLUMNS": "200"})
    assert r.exit_code == 0
    for text in ("jetson-orin-nano", "jetson", "tensorrt", "x86-amx", "bf16", "local"):
        assert text in r.output
