"""The one-entry memo a search's builds share: reused for the same weights and batch objects only."""

import copy

import torch
from torch import nn

from edgeopt.techniques.pruning.memo import LastMeasurement


def test_the_last_measurement_is_reused_only_for_the_same_weights_and_batches():
    torch.manual_seed(0)
    model, batches = nn.Linear(4, 2), [torch.randn(3, 4), torch.randn(3, 4)]
    memo = LastMeasurement()
    first = memo.of(model, batches, ("a",))
    assert first == {}
    first["x"] = 1
    assert memo.of(copy.deepcopy(model), list(batches), ("a",)) == {"x": 1}  # a copy of the same weights
    assert memo.of(model, [b.clone() for b in batches], ("a",)) == {}  # equal values, other batch objects
    memo.of(model, batches, ("a",))["x"] = 1
    assert memo.of(model, batches, ("b",)) == {}  # other settings
    memo.of(model, batches, ("a",))["x"] = 1
    with torch.no_grad():
        model.weight.add_(1.0)
    assert memo.of(model, batches, ("a",)) == {}  # the weights changed
    memo.clear()
    assert memo.of(model, batches, ("a",)) == {}
