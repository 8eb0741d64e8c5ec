"""Pruning criteria keep what they measure in themselves: pruning leaves no attribute on any module (of the
user's model or of the pruned copy) and no gradient, whatever the criterion."""

import copy

import pytest
import torch

from edgeopt.techniques.pruning.importance import IMPORTANCE_NAMES, EnergyImportance, HRankImportance
from edgeopt.techniques.pruning.prune import prune


def _data(n=3):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 1, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(n)]


def _attributes(model):
    return {name: sorted(vars(m)) for name, m in model.named_modules()}


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("importance", [*IMPORTANCE_NAMES, "recon"])
def test_pruning_leaves_no_attribute_on_the_modules(tiny, example, importance, steps):
    original = copy.deepcopy(tiny)
    small, record = prune(tiny, example, ratio=0.4, importance=importance, data=_data(), iterative_steps=steps)
    assert record["layers_changed"] and record["importance"] == importance
    assert _attributes(tiny) == _attributes(original)
    assert _attributes(small) == {n: a for n, a in _attributes(original).items() if n in _attributes(small)}
    assert all(p.grad is None for p in [*tiny.parameters(), *small.parameters()])


@pytest.mark.parametrize("criterion", [HRankImportance, EnergyImportance])
def test_a_criterion_keeps_its_measurements_by_layer_name(tiny, criterion):
    original = copy.deepcopy(tiny).eval()
    tiny.eval()
    imp = criterion()
    record = imp.measure(tiny, [x for x, _ in _data()])
    assert next(iter(record.values()))["batches"] == 3
    assert "stem.0" in imp.scores and imp.scores["stem.0"].shape == (16,)
    assert imp.score(tiny.stem[0]) is imp.scores["stem.0"]
    assert _attributes(tiny) == _attributes(original)


def test_a_block_put_back_gets_back_the_scores_measured_on_it(tiny):
    from edgeopt.techniques.pruning.recon_scores import ReconImportance

    tiny.eval()
    imp = ReconImportance()
    imp.measure(tiny, [x for x, _ in _data()])
    saved = imp.saved("res")
    assert set(saved) == {"res.0", "res.3"}
    outside = imp.scores["down.0"]
    imp.scores["res.0"] = imp.scores["down.0"] = torch.zeros(1)  # measured again during a failed attempt
    tiny.res = copy.deepcopy(tiny.res)  # the block put back, as a copy
    imp.put_back("res", saved)
    assert imp.score(tiny.res[0]) is saved["res.0"]
    assert torch.equal(imp.score(tiny.down[0]), torch.zeros(1)) and not torch.equal(outside, torch.zeros(1))
