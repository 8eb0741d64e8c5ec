"""The NVIDIA path checked on CPU: TensorRT-bound INT8 ONNX is explicit Q/DQ, and every artifact bound for
TensorRT passes the static check of TensorRT's ONNX parser table (formats/tensorrt_parser_ops.py) or is refused
with the op's name, in optimize, export, bundles and the agent client."""

import json
from collections import Counter
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper

import edgeopt
from edgeopt.errors import ExportError
from edgeopt.formats import device_commands, export_verified
from edgeopt.formats.tensorrt_parser_ops import TABLES, check, problems, table_for
from edgeopt.targets import load_target

QDQ_ONLY = {"QuantizeLinear", "DequantizeLinear"}
QOPERATOR = {"QLinearConv", "QLinearAdd", "QGemm", "QLinearGlobalAveragePool", "QLinearMatMul"}


def _ops(path: Path) -> Counter:
    return Counter((n.domain or "ai.onnx", n.op_type) for n in onnx.load(str(path)).graph.node)


@pytest.fixture(scope="module")
def resnet18_int8(tmp_path_factory):
    """A random-weight torchvision resnet18 at 32x32, INT8 as ONNX Runtime's default (QOperator) and as the
    TensorRT flavour (qdq-tensorrt), calibrated on the same inputs."""
    import torchvision

    from edgeopt.formats.onnx import export_onnx

    d = tmp_path_factory.mktemp("r18")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    calib = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    out = {}
    for mode in ("qoperator-u8", "qdq-s8", "qdq-tensorrt"):
        out[mode] = export_onnx(model, x, d / f"{mode}.onnx", precision="int8", calib=calib,
                                options={"quant_mode": mode}).path
    return out


def test_check_rejects_qoperator_and_accepts_the_qdq_resnet18(resnet18_int8):
    qop = check(resnet18_int8["qoperator-u8"], "10.3")
    assert qop.startswith("TensorRT 10.3's ONNX parser does not support QLinearConv")
    found = problems(onnx.load(str(resnet18_int8["qoperator-u8"])), "10.3")
    assert any("com.microsoft::QLinearAdd" in p for p in found) and any("com.microsoft::QGemm" in p for p in found)
    # ONNX Runtime's QDQ keeps int32 biases behind a DequantizeLinear: TensorRT dequantizes int8/fp8/int4 only
    assert "INT32 in DequantizeLinear" in check(resnet18_int8["qdq-s8"], "10.3")
    qdq = resnet18_int8["qdq-tensorrt"]
    assert check(qdq, "10.3") is None and check(qdq, "8.5") is None
    ops = _ops(qdq)
    assert all(domain == "ai.onnx" for domain, _ in ops) and not {op for _, op in ops} & QOPERATOR
    assert ops[("ai.onnx", "Conv")] == 20 and {op for _, op in ops} >= QDQ_ONLY
    assert [o.domain for o in onnx.load(str(qdq)).opset_import] == [""]  # no unused com.microsoft import


def test_qdq_tensorrt_is_symmetric_per_channel_int8(resnet18_int8):
    from onnx import numpy_helper

    m = onnx.load(str(resnet18_int8["qdq-tensorrt"]))
    consts = {t.name: t for t in m.graph.initializer}
    qdq = [n for n in m.graph.node if n.op_type in QDQ_ONLY]
    zps = [consts[n.input[2]] for n in qdq if len(n.input) > 2]
    assert zps and all(z.data_type == TensorProto.INT8 and not numpy_helper.to_array(z).any() for z in zps)
    weight_dq = [n for n in qdq if n.op_type == "DequantizeLinear" and n.input[0] in consts]
    assert len(weight_dq) == 21  # 20 conv weights + the fc weight, stored int8
    assert all(consts[n.input[0]].data_type == TensorProto.INT8 for n in weight_dq)
    assert all(len(consts[n.input[1]].dims) == 1 and consts[n.input[1]].dims[0] > 1 for n in weight_dq)


def _graph(node, opset=17, extra_inits=()):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    g = helper.make_graph([node], "g", [x], [y], initializer=list(extra_inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset),
                                               helper.make_opsetid("com.microsoft", 1)])


def test_microsoft_domain_opset_and_zero_point_restrictions():
    ms = _graph(helper.make_node("FusedGemm", ["x"], ["y"], domain="com.microsoft", name="fg"))
    assert problems(ms, "10.3") == ["TensorRT 10.3's ONNX parser does not support com.microsoft::FusedGemm (node fg)"]
    relu18 = _graph(helper.make_node("Relu", ["x"], ["y"]), opset=18)
    assert problems(relu18, "10.3") == []
    assert "reads opsets 1..17; the graph is opset 18" in problems(relu18, "8.5")[0]
    s = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    zp = helper.make_tensor("zp", TensorProto.UINT8, [], [128])
    q = _graph(helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["y"], name="q"), extra_inits=(s, zp))
    found = problems(q, "10.3")
    assert any("zero zero-point on QuantizeLinear" in p for p in found)
    assert any("does not take UINT8" in p for p in found)


def test_parser_tables_by_tensorrt_release():
    assert table_for("10.3.0.30").tensorrt == "10.0" and table_for("8.5.2").tensorrt == "8.5"
    assert table_for("11.4").tensorrt == "10.0" and table_for("7.1").tensorrt == "8.5"
    assert table_for(None).tensorrt == "10.0"
    assert all("QLinearConv" not in t.ops and "LayerNormalization" in TABLES[1].ops for t in TABLES)
    assert "LayerNormalization" not in table_for("8.5").ops  # TensorRT 8.5 had no importer for it


def test_every_nvidia_profile_names_its_tensorrt_and_marks_its_overhead():
    for name in ("jetson-orin-nano", "jetson-agx-orin", "jetson-xavier-nx", "nvidia-gpu"):
        p = load_target(name)
        assert p.tensorrt and table_for(p.tensorrt) and p.call_overhead_estimated and p.devices
    assert load_target("xavier-nx").tensorrt.startswith("8.5") and load_target("jetson").tensorrt.startswith("10")


def test_export_for_tensorrt_is_qdq_and_an_unparseable_artifact_is_refused(tmp_path, tiny_plain, example):
    calib = [torch.randn(4, *example.shape[1:]) for _ in range(2)]
    result, _ = export_verified(tiny_plain, example, "onnx", tmp_path / "a.onnx", precision="int8", calib=calib,
                                options={"tensorrt": "10.3"}, verify=False)
    assert result.info["quant_mode"] == "qdq-tensorrt" and "passed" in result.info["tensorrt_parser_check"]
    assert check(result.path, "10.3") is None
    with pytest.raises(ExportError, match="does not support QLinearConv"):
        export_verified(tiny_plain, example, "onnx", tmp_path / "b.onnx", precision="int8", calib=calib,
                        options={"tensorrt": "10.3", "quant_mode": "qoperator-u8"}, verify=False)
    assert not (tmp_path / "b.onnx").exists()  # never left behind as if it were deployable


def test_jetson_plan_int8_artifact_is_qdq_and_passes_the_check(tmp_path, tiny_plain, example):
    torch.manual_seed(0)
    xs = [torch.randn(8, *example.shape[1:]) for _ in range(4)]
    report = edgeopt.optimize(tiny_plain, example, target="jetson", out_dir=tmp_path, techniques=["quantize"],
                              calib_data=xs[:2], eval_data=xs[2:])
    int8 = [c for c in report.candidates if c.precision == "int8" and c.artifact]
    assert int8, [(c.id, c.status, c.reason) for c in report.candidates]
    for c in int8:
        assert c.status == "ok", c.reason
        ops = {op for _, op in _ops(tmp_path / c.artifact)}
        assert QDQ_ONLY <= ops and not ops & QOPERATOR
        assert check(tmp_path / c.artifact, "10.3") is None
    assert check(tmp_path / "bundle" / "model.onnx", "10.3") is None
    plan_notes = " ".join(report.model["plan_notes"] or [])
    assert "overhead of 0.05 ms is assumed" in plan_notes


def test_bundle_refuses_an_artifact_tensorrt_cannot_parse(tmp_path, resnet18_int8):
    import shutil

    from edgeopt.formats import artifact_files
    from edgeopt.report import Candidate, LatencyStats, Report
    from edgeopt.report.bundle import write_bundle

    shutil.copyfile(resnet18_int8["qoperator-u8"], tmp_path / "cand.onnx")
    cand = Candidate(id="c@onnx-int8", status="ok", artifact="cand.onnx", runtime="onnxruntime", precision="int8",
                     latency_ms=LatencyStats(p50=1, p90=1, p99=1, mean=1, std=0, n=0), latency_source="estimated")
    report = Report(edgeopt_version="t", context={}, target={}, environment={}, candidates=[cand],
                    chosen="c@onnx-int8")
    assert write_bundle(report, tmp_path, load_target("jetson"), artifact_files, device_commands) is None
    assert not (tmp_path / "bundle").exists() and "QLinearConv" in report.model["bundle_refused"]
    # the Q/DQ flavour of the same model passes, and the bundle is written
    shutil.copyfile(resnet18_int8["qdq-tensorrt"], tmp_path / "cand.onnx")
    bundle = write_bundle(report, tmp_path, load_target("jetson"), artifact_files, device_commands)
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["call_overhead"] == "assumed, not measured" and "--int8" in meta["commands"]["build"][0]
    assert "assumed, not measured" in (bundle / "DEPLOY.md").read_text()


def test_export_tensorrt_builds_from_checked_qdq(monkeypatch, tmp_path, tiny_plain, example):
    """The exporter's CPU half (ONNX, Q/DQ, parser check) with the GPU half (TensorRT's builder) stood in for."""
    import sys
    import types

    from edgeopt.formats import tensorrt as trt_mod

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0.30"))
    monkeypatch.setattr(trt_mod, "require_gpu", lambda: "Fake GPU")
    seen = {}

    def build(onnx_path, out, precision, options=None, info=None, calibrator=None):
        seen.update(ops=_ops(onnx_path), problem=check(onnx_path, "10.3"), info=info)
        Path(out).write_bytes(b"engine")
        return {"precision": precision, **(info or {})}

    monkeypatch.setattr(trt_mod, "build_engine", build)
    calib = [torch.randn(4, *example.shape[1:]) for _ in range(2)]
    r = trt_mod.export_tensorrt(tiny_plain, example, tmp_path / "m.engine", precision="int8", calib=calib)
    assert r.path.read_bytes() == b"engine" and seen["problem"] is None
    assert {op for _, op in seen["ops"]} >= QDQ_ONLY and "qdq-tensorrt" in seen["info"]["int8"]


def test_sparse_weights_flag_follows_the_onnx_weights(tmp_path, tiny_plain, example):
    from edgeopt.formats.onnx import export_onnx
    from edgeopt.formats.tensorrt import is_2_4_sparse
    from edgeopt.techniques.sparsity.unstructured import semi_structured_masks

    dense = export_onnx(tiny_plain, example, tmp_path / "dense.onnx").path
    assert not is_2_4_sparse(dense)
    with torch.no_grad():
        masks, _ = semi_structured_masks(tiny_plain)
        for name, m in tiny_plain.named_modules():
            if name in masks:
                m.weight.mul_(masks[name])
    sparse = export_onnx(tiny_plain, example, tmp_path / "sparse.onnx").path
    assert is_2_4_sparse(sparse)


def test_roofline_counts_an_int8_artifact_once():
    from edgeopt.measure.roofline import estimate_stats
    from edgeopt.targets import TargetProfile

    p = TargetProfile(name="t", kind="gpu", arch="x", runtimes=["onnxruntime"], precisions=["fp32", "int8"],
                      peak_ops={"fp32": 1e15, "int8": 4e15}, memory_bandwidth_gbs=100.0)
    # a 100 MB INT8 file moves 100 MB (1 ms at 100 GB/s), not a quarter of it a second time
    assert estimate_stats(p, 1, 100 * 10**6, "int8").p50 == pytest.approx(1.0)
    assert estimate_stats(p, 1, 100 * 10**6, "fp32").p50 == pytest.approx(1.0)


def test_agent_client_checks_tensorrt_artifacts_before_sending(resnet18_int8):
    from edgeopt.formats import device_problem

    assert "QLinearConv" in device_problem(resnet18_int8["qoperator-u8"], "tensorrt", "10.3")
    assert device_problem(resnet18_int8["qoperator-u8"], "onnxruntime") is None
    assert device_problem(resnet18_int8["qdq-tensorrt"], "tensorrt", "10.3") is None
