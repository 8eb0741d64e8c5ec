"""Every listed torchvision architecture (random weights, small inputs): prune 30%, export to ONNX, and
match ONNX Runtime's output, or skip specific layers with a stated reason. Never a crash, never a hang."""

import numpy as np
import pytest
import torch

import edgeopt
from edgeopt.inputs.analyze import count_params

FAST = ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "regnet_y_400mf", "shufflenet_v2_x1_0", "googlenet"]
SLOW = ["densenet121", "convnext_tiny", "vit_b_16", "swin_t"]
KWARGS = {"vit_b_16": {"image_size": 64}, "googlenet": {"aux_logits": False, "init_weights": True}}


def _build(name):
    import torchvision

    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None, num_classes=10, **KWARGS.get(name, {})).eval()


def _check(name, tmp_path):
    import onnxruntime as ort

    model, x = _build(name), torch.randn(1, 3, 64, 64)
    res = edgeopt.prune(model, x, ratio=0.3, timeout_s=240)
    small, rec = res.model, res.record
    assert small(x).shape == (1, 10)  # the classifier keeps its size
    for reason in rec["skipped"]:
        assert ": " in reason and len(reason.split(": ", 1)[1]) > 5  # "layer: why"
    if rec["layers_changed"] == 0:
        assert rec["skipped"], "nothing pruned and no reason given"
    else:
        assert count_params(small) < count_params(model)
    path = edgeopt.export(small, x, format="onnx", out=tmp_path / f"{name}.onnx")
    got = ort.InferenceSession(str(path)).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, small(x).numpy(), atol=1e-3, rtol=1e-3)
    return rec


@pytest.mark.parametrize("name", FAST)
def test_architecture_prunes_exports_and_matches(tmp_path, name):
    rec = _check(name, tmp_path)
    if name == "shufflenet_v2_x1_0":  # channel shuffle: whole-graph tracing is avoided, blocks are pruned
        assert rec["mode"] == "blockwise" and rec["layers_changed"] > 0
        assert any("channel shuffle" in s for s in rec["skipped"])


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_heavy_architecture_prunes_exports_and_matches(tmp_path, name):
    rec = _check(name, tmp_path)
    if name == "swin_t":
        assert any("attention kept intact" in s for s in rec["skipped"]) and rec["layers_changed"] > 0
    if name == "vit_b_16":
        assert rec["layers_changed"] > 0 and any("heads kept" in n for n in rec["notes"])
