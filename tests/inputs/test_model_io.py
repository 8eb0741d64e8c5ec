"""Input/output structure: normalization of example inputs, flattening and re-nesting of outputs."""

import pytest
import torch
from torch import nn

from edgeopt.errors import InputShapeError
from edgeopt.inputs.model_io import Inputs, flatten_outputs, nest, output_layout, parse_input_shapes


class TwoIn(nn.Module):
    def forward(self, image, mask):
        return image * mask


def test_inputs_forms():
    x = torch.randn(1, 3, 4, 4)
    m = torch.ones(1, 1, 4, 4)
    single = Inputs.of(x)
    assert single.single and single.names == ["input"] and single.example() is x
    assert Inputs.of((x,)).single
    pos = Inputs.of((x, m), TwoIn())
    assert pos.names == ["image", "mask"] and not pos.keyword
    assert torch.equal(pos.call(TwoIn()), x * m)
    kw = Inputs.of({"mask": m, "image": x})
    assert kw.keyword and kw.names == ["mask", "image"]
    assert torch.equal(kw.call(TwoIn()), x * m)
    assert kw.shapes == {"mask": (1, 1, 4, 4), "image": (1, 3, 4, 4)}
    fresh = kw.fresh(torch.Generator().manual_seed(0), batch=3)
    assert fresh.shapes["image"] == (3, 3, 4, 4) and fresh.keyword


def test_inputs_bad():
    with pytest.raises(InputShapeError, match="input 1 is str"):
        Inputs.of((torch.zeros(1), "x"))
    with pytest.raises(InputShapeError, match="'a' is NoneType"):
        Inputs.of({"a": None})


def test_outputs_flatten_and_nest():
    out = {"out": torch.zeros(1, 2), "aux": (torch.ones(1), [torch.zeros(2), torch.ones(3)])}
    flat = flatten_outputs(out)
    assert list(flat) == ["out", "aux.0", "aux.1.0", "aux.1.1"]
    back = nest(output_layout(out), flat)
    assert back["aux"][1][1] is flat["aux.1.1"]
    assert list(flatten_outputs(torch.zeros(1))) == ["output"]
    assert list(flatten_outputs((torch.zeros(1), torch.zeros(2)))) == ["0", "1"]


def test_outputs_non_tensor_leaf_named():
    with pytest.raises(InputShapeError, match="NoneType at output 'aux.1'"):
        flatten_outputs({"out": torch.zeros(1), "aux": [torch.zeros(1), None]})
    with pytest.raises(InputShapeError, match="str at output '0'"):
        flatten_outputs(("boxes",))


def test_parse_input_shapes():
    assert parse_input_shapes(["1,3,224,224"]) == (1, 3, 224, 224)
    assert parse_input_shapes(["image:1,3,8,8", "mask:1,1,8,8"]) == {"image": (1, 3, 8, 8), "mask": (1, 1, 8, 8)}
    with pytest.raises(InputShapeError, match="name each one"):
        parse_input_shapes(["1,3,8,8", "1,1,8,8"])
    with pytest.raises(InputShapeError, match="positive integers"):
        parse_input_shapes(["image:1,a"])
    assert parse_input_shapes(None) is None
