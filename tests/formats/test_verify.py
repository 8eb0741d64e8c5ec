"""formats/verify.py: per-image box sets are judged as sets (order and near-threshold boxes do not count),
while a runtime that finds other boxes is still refused."""

import numpy as np
import pytest
import torch

from edgeopt.errors import VerificationError
from edgeopt.formats.verify import verify_session
from edgeopt.inputs.model_io import flatten_outputs


class Detector(torch.nn.Module):
    """torchvision's output contract: one dict of boxes, labels and scores per image, from the input."""

    def forward(self, x):
        out = []
        for img in x:
            s = img.mean((1, 2)).sigmoid()  # one score per channel: three boxes
            boxes = torch.stack([torch.tensor([10.0 * k, 5.0, 10.0 * k + 8, 20.0]) for k in range(3)])
            out.append({"boxes": boxes, "labels": torch.tensor([1, 2, 1]), "scores": s})
        return out


class Stub:
    """A runtime session returning PyTorch's detections after `change` (a function of one image's fields)."""

    runtime, precision, precision_executed = "stub", "fp32", "fp32"

    def __init__(self, model, change):
        self.model, self.change = model, change

    def run_named(self, feed):
        x = torch.from_numpy(next(iter(feed.values())))
        outs = flatten_outputs(self.model(x))
        per = {}
        for name, v in outs.items():
            i, field = name.split(".")
            per.setdefault(int(i), {})[field] = v.numpy()
        got = {}
        for i, d in per.items():
            for field, v in self.change(d).items():
                got[f"{i}.{field}"] = v
        return got


def _reverse(d):
    return {k: v[::-1].copy() for k, v in d.items()}


def test_reordered_boxes_verify_and_report_their_agreement():
    model, x = Detector().eval(), torch.rand(2, 3, 8, 8)
    res = verify_session(Stub(model, _reverse), model, x, "fp32")
    assert res["box_agreement"] == pytest.approx(1.0)


def test_other_boxes_are_refused():
    def shifted(d):
        return {**d, "boxes": d["boxes"] + np.array([0, 30.0, 0, 30.0], np.float32)}

    model, x = Detector().eval(), torch.rand(2, 3, 8, 8)
    with pytest.raises(VerificationError, match="box agreement 0%"):
        verify_session(Stub(model, shifted), model, x, "fp32")
