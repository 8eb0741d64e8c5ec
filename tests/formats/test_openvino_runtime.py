"""A published OpenVINO IR runs at the precision edgeopt measured when a user compiles it the plain way, and a
broken IR is refused with a one-line error that names the file."""

import shutil
import sys

import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("openvino")


def _core():
    from edgeopt.formats.openvino_core import openvino_core

    return openvino_core()


def _bf16_cpu(core) -> bool:
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _runtime_precisions(compiled) -> set[str]:
    """runtimePrecision of every layer the CPU plugin executes (the reorders it inserts included)."""
    out = set()
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        if "runtimePrecision" in rt and rt["layerType"].astype(str) not in ("Input", "Output", "Const"):
            out.add(rt["runtimePrecision"].astype(str).lower())
    return out


def _convnet():
    """Convolutions, batch norm, a residual add, a depthwise conv and pooling: layers the CPU plugin keeps as
    they are in the IR (a Linear becomes a FullyConnected it builds anew, see the next test)."""
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
            self.b = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(), nn.Conv2d(16, 16, 1))
            self.head = nn.Sequential(nn.Conv2d(16, 10, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())

        def forward(self, x):
            x = self.a(x)
            return self.head(torch.relu(x + self.b(x)))

    torch.manual_seed(0)
    return Net().eval()


@pytest.fixture(scope="module")
def fp32_ir(tmp_path_factory):
    import edgeopt

    out = tmp_path_factory.mktemp("ov") / "model.xml"
    return edgeopt.export(_convnet(), torch.randn(1, 3, 16, 16), format="openvino", precision="fp32", out=out)


def test_fp32_ir_runs_f32_when_compiled_plainly(fp32_ir):
    from edgeopt.formats.openvino_precision import executed_precision

    core = _core()
    if not _bf16_cpu(core):
        pytest.skip("this CPU has no bf16 support: OpenVINO's default is f32 anyway, nothing to prove")
    compiled = core.compile_model(str(fp32_ir), "CPU")  # what a user writes: no config at all
    reading = executed_precision(compiled)
    assert set(reading["macs_by_precision"]) == {"fp32"}, reading
    assert _runtime_precisions(compiled) <= {"f32", "i32", "i64", "u8", "boolean"}, _runtime_precisions(compiled)
    # the measured precision is recorded in the IR for every reader, and edgeopt's own session agrees
    assert core.read_model(str(fp32_ir)).get_rt_info(["runtime_options", "INFERENCE_PRECISION_HINT"]).astype(
        str) == "f32"
    from edgeopt.formats import backend_for

    assert backend_for("openvino").load(fp32_ir, precision="fp32").precision_executed == "fp32"


def test_fp32_ir_with_linear_and_attention(tmp_path):
    """Its convolutions keep f32 under a plain compile; the layers OpenVINO rebuilds (Linear -> FullyConnected,
    attention -> a fused subgraph) lose the mark, which is why the deploy instructions pass the hint."""
    import tinynet

    import edgeopt
    from edgeopt.formats.device_shell import openvino_load_config
    from edgeopt.formats.openvino_precision import executed_precision

    core = _core()
    if not _bf16_cpu(core):
        pytest.skip("this CPU has no bf16 support: OpenVINO's default is f32 anyway, nothing to prove")
    torch.manual_seed(0)
    path = edgeopt.export(tinynet.make().eval(), torch.randn(1, 1, 16, 16), format="openvino", out=tmp_path / "m.xml")
    plain = executed_precision(core.compile_model(str(path), "CPU"))["macs_by_precision"]
    assert plain.get("fp32", 0) > 0.9 * sum(plain.values()), plain  # every convolution
    assert openvino_load_config("fp32") == {"INFERENCE_PRECISION_HINT": "f32"}
    explicit = executed_precision(core.compile_model(str(path), "CPU", openvino_load_config("fp32")))
    assert set(explicit["macs_by_precision"]) == {"fp32"}, explicit


def test_bf16_request_on_an_fp32_ir_reports_what_ran(fp32_ir):
    """The fp32 IR keeps f32 even under an explicit bf16 hint: the session says fp32, not the hint."""
    from edgeopt.formats import backend_for

    if not _bf16_cpu(_core()):
        pytest.skip("this CPU has no bf16 support: a bf16 hint runs f32 anyway, nothing to prove")
    session = backend_for("openvino").load(fp32_ir, precision="bf16")
    assert session.precision_executed == "fp32", session.info


def test_bf16_ir_records_bf16_and_runs_it_plainly(tmp_path):
    import tinynet

    import edgeopt
    from edgeopt.formats.openvino_precision import executed_precision

    core = _core()
    path = edgeopt.export(tinynet.make().eval(), torch.randn(1, 1, 16, 16), format="openvino", precision="bf16",
                          out=tmp_path / "m.xml", verify=False)
    assert core.read_model(str(path)).get_rt_info(["runtime_options", "INFERENCE_PRECISION_HINT"]).astype(
        str) == "bf16"
    if _bf16_cpu(core):
        assert set(executed_precision(core.compile_model(str(path), "CPU"))["macs_by_precision"]) == {"bf16"}


def _benchmark(path):
    from edgeopt.cli import app

    return CliRunner().invoke(app, ["benchmark", str(path), "--max-time", "0.2"])


def _one_line_error(res, *fragments):
    """What `edgeopt` prints for it: an EdgeOptError (exit 2) whose message is one line naming the file."""
    from edgeopt.errors import EdgeOptError

    assert isinstance(res.exception, EdgeOptError), (res.exception, res.output)
    assert res.exception.exit_code == 2
    msg = str(res.exception)
    assert "\n" not in msg.strip() and "core.cpp" not in msg and "Exception from" not in msg, msg
    for f in fragments:
        assert f in msg, msg


def test_ir_without_its_bin_names_the_bin(fp32_ir, tmp_path):
    xml = tmp_path / "model.xml"
    shutil.copyfile(fp32_ir, xml)
    _one_line_error(_benchmark(xml), str(tmp_path / "model.bin"), "missing")


def test_ir_with_a_truncated_bin_names_the_bin(fp32_ir, tmp_path):
    xml = tmp_path / "model.xml"
    shutil.copyfile(fp32_ir, xml)
    (tmp_path / "model.bin").write_bytes(fp32_ir.with_suffix(".bin").read_bytes()[:64])
    _one_line_error(_benchmark(xml), str(tmp_path / "model.bin"))


def test_corrupt_xml_names_the_xml(fp32_ir, tmp_path):
    xml = tmp_path / "model.xml"
    xml.write_text(fp32_ir.read_text()[:300])  # cut mid-element
    shutil.copyfile(fp32_ir.with_suffix(".bin"), tmp_path / "model.bin")
    _one_line_error(_benchmark(xml), str(xml), "XML")


def test_xml_that_is_no_ir_names_the_xml(tmp_path):
    xml = tmp_path / "model.xml"
    xml.write_text('<?xml version="1.0"?>\n<svg></svg>\n')
    _one_line_error(_benchmark(xml), str(xml), "not an OpenVINO IR")


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_deploy_instructions_say_how_to_load_at_the_measured_precision(fp32_ir, tmp_path, precision):
    from edgeopt.formats import artifact_files, device_commands
    from edgeopt.report import Candidate, Report
    from edgeopt.report.bundle import write_bundle
    from edgeopt.targets import load_target

    shutil.copyfile(fp32_ir, tmp_path / "cand.xml")
    shutil.copyfile(fp32_ir.with_suffix(".bin"), tmp_path / "cand.bin")
    cand = Candidate(id="c", status="ok", artifact="cand.xml", runtime="openvino", precision=precision)
    report = Report(edgeopt_version="t", context={}, target={}, environment={}, candidates=[cand], chosen="c")
    deploy = (write_bundle(report, tmp_path, load_target("x86-amx"), artifact_files, device_commands)
              / "DEPLOY.md").read_text()
    assert "## Load it in an application" in deploy
    if precision == "fp32":
        assert "rt_info" in deploy and "compile_model('model.xml', 'CPU', {'INFERENCE_PRECISION_HINT': 'f32'})" \
            in deploy, deploy
    else:  # measured without a hint: the plain call is the one that runs what was measured
        assert "compile_model('model.xml', 'CPU')" in deploy and "INFERENCE_PRECISION_HINT'" not in deploy, deploy


@pytest.mark.parametrize("route", ["onnx", "torch"])
def test_our_verbose_flag_does_not_make_openvino_verbose(tmp_path, monkeypatch, capfd, route):
    # OpenVINO's converter reads sys.argv itself: `edgeopt optimize --verbose` used to dump its conversion
    # arguments on stdout (and start tracemalloc) for every structure converted
    from edgeopt.formats.openvino import export_openvino

    monkeypatch.setattr(sys, "argv", ["edgeopt", "optimize", "--verbose"])
    export_openvino(_convnet(), torch.randn(1, 3, 16, 16), tmp_path / "m.xml", options={"route": route})
    out = capfd.readouterr().out
    assert "Model Conversion arguments" not in out and "Total execution time" not in out
    assert sys.argv == ["edgeopt", "optimize", "--verbose"]  # put back as it was


def test_outputs_keep_their_names_when_compiling_merges_them_with_an_upstream_tensor(tmp_path):
    """Boxes split into coordinates and stacked again (torchvision's box clipping without clipping): the CPU
    plugin folds the split/stack away and the output tensor also takes the upstream tensor's name, which
    `get_any_name` prefers ('/Reshape_output_0' < 'boxes'). The IR's own output names are read."""
    import numpy as np
    from torch import nn

    import edgeopt
    from edgeopt.formats.openvino import load_openvino

    class Boxes(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 8, 3)

        def forward(self, x):
            b = self.c(x).flatten(1)[:, torch.arange(8)].reshape(-1, 4)
            return {"boxes": torch.stack(b.unbind(-1), -1), "scores": b.sum(1)}

    path = edgeopt.export(Boxes().eval(), torch.randn(1, 3, 8, 8), format="openvino", out=tmp_path / "b.xml")
    compiled = _core().compile_model(_core().read_model(str(path)), "CPU")
    assert len(compiled.outputs[0].get_names()) > 1  # the merge this test is about still happens
    session = load_openvino(path)
    assert session.output_names == ["boxes", "scores"]
    out = session.run_all({next(iter(session.input_shapes)):
                           np.zeros((1, 3, 8, 8), np.float32)})
    assert set(out) == {"boxes", "scores"} and out["boxes"].shape == (2, 4)
