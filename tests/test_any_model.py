"""Any vision model: several inputs (tuple, dict), several outputs (tuple, nested dict), through prune,
factorize, export (ONNX, OpenVINO), runtime sessions, verification and benchmark."""

import numpy as np
import pytest
import torch
from torch import nn

from edgeopt import benchmark, export, factorize, prune
from edgeopt.errors import InputShapeError
from edgeopt.formats import export_verified
from edgeopt.inputs.structure import Inputs, flatten_outputs


def cbr(i, o, s=1):
    return nn.Sequential(nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU())


class Detector(nn.Module):
    """Shared trunk, an FPN-like neck (upsample + concat of two levels), a box head and a class head."""

    def __init__(self, classes: int = 3, anchors: int = 2, as_dict: bool = False):
        super().__init__()
        self.c1, self.c2, self.c3 = cbr(3, 16, 2), cbr(16, 32, 2), cbr(32, 32, 2)
        self.lat = nn.Conv2d(32, 16, 1)
        self.neck = cbr(32 + 16, 32)
        self.box = nn.Conv2d(32, anchors * 4, 1)
        self.cls = nn.Conv2d(32, anchors * classes, 1)
        self.as_dict = as_dict

    def forward(self, x):
        p2 = self.c2(self.c1(x))
        p3 = self.c3(p2)
        up = nn.functional.interpolate(self.lat(p3), scale_factor=2.0, mode="nearest")
        f = self.neck(torch.cat([p2, up], 1))
        boxes, logits = self.box(f), self.cls(f)
        return {"boxes": boxes, "scores": {"logits": logits}} if self.as_dict else (boxes, logits)


class Segmenter(nn.Module):
    """torchvision-style dict output: 'out' and 'aux' dense logits at the input resolution."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.body = nn.Sequential(cbr(3, 16, 2), cbr(16, 32, 2), cbr(32, 32))
        self.head = nn.Sequential(cbr(32, 32), nn.Conv2d(32, classes, 1))
        self.aux = nn.Conv2d(32, classes, 1)

    def forward(self, x):
        f = self.body(x)
        size = x.shape[-2:]
        up = nn.functional.interpolate
        return {"out": up(self.head(f), size=size, mode="bilinear"), "aux": up(self.aux(f), size=size,
                                                                               mode="bilinear")}


class TwoInputs(nn.Module):
    """An image and a mask in, two outputs out."""

    def __init__(self):
        super().__init__()
        self.img, self.msk = cbr(3, 16), cbr(1, 16)
        self.body = nn.Sequential(cbr(16, 32), cbr(32, 32))
        self.head = nn.Conv2d(32, 2, 1)
        self.fc = nn.Linear(32, 5)

    def forward(self, image, mask):
        f = self.body(self.img(image) * self.msk(mask))
        return self.head(f), self.fc(f.mean((2, 3)))


def detector():
    return Detector().eval()


def segmenter():
    return Segmenter().eval()


X = torch.randn(1, 3, 32, 32)
PAIR = (torch.randn(1, 3, 16, 16), torch.rand(1, 1, 16, 16))


def cases():
    return [("tuple-out", Detector(), X), ("nested-dict-out", Detector(as_dict=True), X),
            ("dict-out", Segmenter(), X), ("tuple-in", TwoInputs(), PAIR),
            ("dict-in", TwoInputs(), {"image": PAIR[0], "mask": PAIR[1]})]


def shapes(model, example):
    with torch.no_grad():
        return {k: tuple(v.shape) for k, v in flatten_outputs(Inputs.of(example, model).call(model.eval())).items()}


@pytest.mark.parametrize("name,model,example", cases(), ids=[c[0] for c in cases()])
def test_prune_keeps_every_output(name, model, example):
    torch.manual_seed(0)
    small = prune(model.eval(), example, ratio=0.5)
    rec = small.edgeopt_record
    assert shapes(small, example) == shapes(model, example)
    assert rec["layers_changed"] > 0, rec["skipped"]
    if isinstance(model, Detector):  # the heads' outputs are what the user reads: never cut
        assert small.box.out_channels == model.box.out_channels and small.cls.out_channels == model.cls.out_channels
        assert small.neck[0].out_channels < model.neck[0].out_channels  # the shared trunk/neck is pruned
        assert small.c2[0].out_channels < model.c2[0].out_channels  # coupled through the concat


@pytest.mark.parametrize("name,model,example", cases()[::2], ids=[c[0] for c in cases()[::2]])
def test_factorize_keeps_every_output(name, model, example):
    small = factorize(model.eval(), example, method="tucker", energy=0.5)
    rec = small.edgeopt_record
    assert rec["layers_changed"] > 0
    assert shapes(small, example) == shapes(model, example)


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
@pytest.mark.parametrize("name,model,example", cases(), ids=[c[0] for c in cases()])
def test_export_names_and_verifies_every_output(tmp_path, fmt, name, model, example):
    model.eval()
    result, session = export_verified(model, example, fmt, tmp_path / "m", precision="fp32")
    inputs = Inputs.of(example, model)
    want = flatten_outputs(inputs.call(model))
    assert list(session.input_shapes) == inputs.names
    assert session.output_names == list(want)
    got = session.run_named(inputs.numpy())
    for k, v in want.items():
        np.testing.assert_allclose(got[k], v.detach().numpy(), rtol=1e-3, atol=1e-4)
    if len(want) > 1:
        assert set(result.info["verification"]["outputs"]) == set(want)


def test_onnx_dynamic_batch(tmp_path):
    model = Detector(as_dict=True).eval()
    result, session = export_verified(model, X, "onnx", tmp_path / "m", options={"dynamic_batch": True})
    assert session.input_shapes["input"][0] == -1
    x3 = torch.randn(3, 3, 32, 32)
    got = session.run_named({"input": x3.numpy()})
    with torch.no_grad():
        ref = flatten_outputs(model(x3))
    assert got["boxes"].shape[0] == 3
    np.testing.assert_allclose(got["scores.logits"], ref["scores.logits"].numpy(), rtol=1e-3, atol=1e-4)
    static = export(model, X, "onnx", out=tmp_path / "s.onnx")
    from edgeopt.formats import backend_for

    with pytest.raises(InputShapeError, match="does not match"):
        backend_for("onnx").load(static).run_named({"input": x3.numpy()})


def test_benchmark_feeds_every_input(tmp_path):
    from edgeopt.measure.timing import BenchConfig

    model = TwoInputs().eval()
    path = export(model, {"image": PAIR[0], "mask": PAIR[1]}, "onnx", out=tmp_path / "m.onnx")
    cfg = BenchConfig(warmup_runs=1, warmup_s=0, min_runs=5, max_runs=5, max_time_s=0.5)
    b = benchmark(path, config=cfg)
    assert b.inputs == {"image": [1, 3, 16, 16], "mask": [1, 1, 16, 16]} and b.outputs == ["0", "1"]
    assert b.latency.n >= 5
    with pytest.raises(InputShapeError, match="give each shape by name"):
        benchmark(path, input_shape=(1, 3, 16, 16), config=cfg)


def test_non_tensor_output_named():
    class Bad(nn.Module):
        def forward(self, x):
            return {"out": x, "extra": [x, None]}

    with pytest.raises(InputShapeError, match="'extra.1'"):
        prune(Bad(), X, ratio=0.3)
