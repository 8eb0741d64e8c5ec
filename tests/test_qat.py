import numpy as np
import pytest
import smallnet

import edgeopt
from edgeopt.techniques import TECHNIQUES
from edgeopt.techniques import qat as Q
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
    qmodel = edgeopt.qat(model, train, epochs=1)
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
