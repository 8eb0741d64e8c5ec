import numpy as np
import pytest
import smallnet

import edgeopt
from edgeopt.techniques import TECHNIQUES
from edgeopt.techniques.retraining import qat as Q
from edgeopt.training import fit, top1


def test_qat_recovers_what_ptq_loses():
    # ternary (2-bit) per-tensor weights: post-training quantization visibly hurts this small net; QAT trains it back
    model, train, val = smallnet.trained()
    float_acc = top1(model, val)
    xs = [x for x, _ in train.items]
    ptq_acc = top1(Q.ptq(model, xs, weight_bits=2, per_channel=False), val)
    qmodel = Q.qat(model, train, fit, epochs=2, lr=0.01, weight_bits=2, per_channel=False, teacher=model)
    qat_acc = top1(qmodel, val)
    assert ptq_acc < float_acc - 3.0, (float_acc, ptq_acc)
    assert qat_acc > ptq_acc + 2.0, (ptq_acc, qat_acc)


def test_int8_qat_exports_qdq_onnx_that_runs_at_the_trained_accuracy(tmp_path):
    import onnx
    import onnxruntime as ort

    model, train, val = smallnet.trained()
    qmodel = edgeopt.qat(model, train, epochs=1).model
    torch_acc = top1(qmodel, val)
    # the Q/DQ graph is already INT8: rounding differs from PyTorch's fake-quant by a few 1e-3 (relative),
    # so the fp32 verification tolerance does not apply; accuracy is measured on the runtime below
    path = edgeopt.export(qmodel, train.items[0][0][:1], format="onnx", out=tmp_path / "qat.onnx", verify=False)
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    correct = total = 0
    for x, y in val.items:
        for i in range(len(x)):
            out = sess.run(None, {name: x[i:i + 1].numpy()})[0]
            correct += int(np.argmax(out) == int(y[i]))
            total += 1
    ort_acc = 100.0 * correct / total
    assert ort_acc == pytest.approx(torch_acc, abs=2.0)
    assert ort_acc > top1(model, val) - 5.0


def test_registry_row():
    tech = TECHNIQUES.get("qat")
    assert tech.needs_retraining and tech.stage == "model"
    with pytest.raises(Exception, match="labelled"):
        tech.apply_fn()(smallnet.make(), None, tech.make_config({}), data=None)


def test_qat_model_really_runs_int8_convolutions(tmp_path):
    """The executed precision comes from the runtime's optimized/execution graph, counted per MAC: a QAT model
    whose BatchNorm stayed unfolded ran its convolutions in fp32 between Q/DQ pairs."""
    import torch

    from edgeopt.formats.onnx import load_onnxruntime

    model = smallnet.make().eval()
    calib = [torch.randn(8, 1, 16, 16) for _ in range(4)]
    unfolded = Q.freeze(Q.calibrate(Q.prepare(model, calib[0][:1]), calib))
    qmodel = Q.ptq(model, calib)
    x = torch.randn(16, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(qmodel(x), unfolded(x), atol=1e-5)  # folding changes nothing in PyTorch
    example = x[:1]
    fp32 = load_onnxruntime(edgeopt.export(model, example, format="onnx", out=tmp_path / "f.onnx"))
    assert fp32.precision_executed == "fp32" and fp32.info["int8_mac_fraction"] == 0.0
    path = edgeopt.export(qmodel, example, format="onnx", out=tmp_path / "q.onnx", verify=False)
    ort_q = load_onnxruntime(path)
    assert ort_q.info["int8_mac_fraction"] >= 0.99 and ort_q.precision_executed == "int8", ort_q.info
    macs = ort_q.info["executed_precision"]["macs_by_precision"]
    # every conv and the classifier counted once: 16x16x16x(1x3x3) + 32x8x8x(16x3x3) + 32x4x4x(32x3x3) + 32x10
    assert sum(macs.values()) == 36864 + 294912 + 147456 + 320
    pytest.importorskip("openvino")
    from edgeopt.formats.openvino import load_openvino

    ov_q = load_openvino(path)
    assert ov_q.info["int8_mac_fraction"] >= 0.99 and ov_q.precision_executed == "int8", ov_q.info

