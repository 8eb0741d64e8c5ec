"""Forward hooks are removed however the block ends, and capture keeps what each named layer saw."""

import pytest
import torch
from torch import nn

from edgeopt.inputs.hooks import capture, forward_hooks


def _net():
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def test_capture_collects_outputs_and_inputs_per_call_and_removes_its_hooks():
    net = _net()
    x = torch.randn(5, 4)
    with capture(net, ["0", "2"]) as outs, capture(net, ["2"], what="input") as ins:
        net(x)
        net(x)
    assert len(outs["0"]) == 2 and outs["0"][0].shape == (5, 3) and outs["2"][1].shape == (5, 2)
    assert torch.equal(ins["2"][0], torch.relu(outs["0"][0]))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())


def test_hooks_are_removed_when_the_block_raises():
    net = _net()
    with pytest.raises(RuntimeError), forward_hooks([(net[0], lambda m, i, o: None)]):
        raise RuntimeError("boom")
    assert not net[0]._forward_hooks


def test_capture_names_an_unknown_layer():
    with pytest.raises(KeyError, match="nope"), capture(_net(), ["nope"]):
        pass


def test_forward_hooks_pass_keyword_arguments_with_kwargs():
    net = _net()
    seen = []
    with forward_hooks([(net[0], lambda m, args, kwargs: seen.append((args, sorted(kwargs))))], pre=True,
                       with_kwargs=True):
        net[0](input=torch.randn(2, 4))
    assert seen == [((), ["input"])] and not net[0]._forward_pre_hooks
