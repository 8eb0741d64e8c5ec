"""Supermasks: masks on frozen random weights (edge-popup) and the mask criteria of Zhou et al."""

import pytest
import torch

import edgeopt
from edgeopt.errors import ConfigError, DataError
from edgeopt.techniques import TECHNIQUES


@pytest.fixture(scope="module")
def digits():
    from smallnet import digits16

    return digits16(size=8)


def _conv_linear(model):
    return [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]


def test_edge_popup_finds_a_mask_on_frozen_random_weights(digits):
    from smallnet import make

    train, val = digits
    model = make(width=16, seed=0)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    res = edgeopt.supermask(model, train, ratio=0.5, epochs=2, eval_data=val)
    masked, rec = res.model, res.record
    for k, v in model.state_dict().items():  # the caller's model is untouched
        assert torch.equal(v, init[k])
    for m0, m1 in zip(_conv_linear(model), _conv_linear(masked), strict=True):
        w0, w1 = m0.weight.detach(), m1.weight.detach()
        kept = w1 != 0
        assert torch.equal(w1[kept], w0[kept])  # the weights were never trained: zeros or the random init
        assert abs(kept.float().mean().item() - 0.5) < 0.01  # the same fraction kept in every layer
    assert rec["method"] == "edge_popup" and abs(rec["measured_sparsity"] - 0.5) < 0.01
    assert rec["top1"] > rec["init_top1"] + 20  # far above the unmasked random network


@pytest.mark.parametrize("method", ["large_final", "magnitude_increase"])
def test_zhou_criteria_mask_the_initial_weights(digits, method):
    from smallnet import make

    train, val = digits
    model = make(seed=1)
    res = edgeopt.supermask(model, train, ratio=0.6, epochs=2, method=method, eval_data=val)
    masked, rec = res.model, res.record
    for m0, m1 in zip(_conv_linear(model), _conv_linear(masked), strict=True):
        kept = m1.weight != 0
        assert torch.equal(m1.weight[kept], m0.weight.detach()[kept])
    assert abs(rec["measured_sparsity"] - 0.6) < 0.01
    assert rec["trained_dense_top1"] > 80.0 and rec["top1"] is not None


def test_supermask_returns_the_masked_model_by_default(digits):
    from smallnet import make

    res = edgeopt.supermask(make(), digits[0], ratio=0.7, epochs=1)
    masked = res.model
    zeros = sum(int((m.weight == 0).sum()) for m in _conv_linear(masked))
    total = sum(m.weight.numel() for m in _conv_linear(masked))
    assert abs(zeros / total - 0.7) < 0.01 and res.record["method"] == "edge_popup"


def test_bad_input(digits):
    from smallnet import make

    unlabelled = [x for x, _ in digits[0].items[:2]]
    with pytest.raises(DataError, match="labelled"):
        edgeopt.supermask(make(), unlabelled)
    with pytest.raises(ConfigError, match="sparsity"):
        edgeopt.supermask(make(), digits[0], ratio=1.0)
    with pytest.raises(ConfigError, match="method"):
        edgeopt.supermask(make(), digits[0], method="large_initial")
    with pytest.raises(ConfigError, match="no Conv2d or Linear"):
        edgeopt.supermask(torch.nn.Sequential(torch.nn.ReLU()), digits[0])
    with pytest.raises(ConfigError, match="sparsity"):
        TECHNIQUES.get("supermask").make_config({"sparsity": 1.5})
