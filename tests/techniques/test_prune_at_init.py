import pytest
import smallnet
import torch

import edgeopt
from edgeopt.errors import ConfigError, DataError
from edgeopt.inputs.data import Batches
from edgeopt.techniques import TECHNIQUES
from edgeopt.techniques.sparsity import unstructured as U
from edgeopt.techniques.sparsity.prune_at_init import prune_at_init
from edgeopt.training import fit, top1


def _batch():
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g))]


@pytest.mark.parametrize("method", ["snip", "grasp", "synflow"])
@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_masks_have_the_asked_sparsity(method, sparsity):
    m = smallnet.make()
    record = edgeopt.prune_at_init(m, _batch(), method=method, ratio=sparsity).record
    assert record["sparsity"] == pytest.approx(sparsity, abs=1e-3)
    assert U.sparsity(m) == pytest.approx(sparsity, abs=1e-3)
    # every layer keeps some weights (SynFlow's point: no layer collapse) and the pruning is global
    per_layer = [1 - float(mod.weight_mask.mean()) for _, mod in U.prunable(m)]
    assert all(s < 1.0 for s in per_layer) and max(per_layer) - min(per_layer) > 0.01


def test_methods_choose_different_weights():
    masks = {}
    for method in ("snip", "grasp", "synflow"):
        m = smallnet.make()
        prune_at_init(m, _batch(), method, 0.8)
        masks[method] = torch.cat([mod.weight_mask.flatten() for _, mod in U.prunable(m)])
    assert not torch.equal(masks["snip"], masks["grasp"]) and not torch.equal(masks["snip"], masks["synflow"])


def test_snip_ticket_trains_from_scratch():
    _, train, val = smallnet.trained()
    m = smallnet.make(seed=3)
    prune_at_init(m, train, "snip", 0.8)
    fit(m, train.items[:8], epochs=4, lr=0.05)
    assert U.sparsity(m) == pytest.approx(0.8, abs=2e-3)
    assert top1(m, val) > 60.0  # chance is 10%


def test_registry_entry_trains_and_bakes_the_masks():
    _, train, _ = smallnet.trained()
    tech = TECHNIQUES.get("synflow")  # alias
    assert tech.needs_retraining and tech.needs_data
    config = tech.make_config({"method": "synflow", "sparsity": 0.7, "epochs": 1})
    model, record = tech.apply_fn()(smallnet.make(), None, config, data=Batches(train.items[:4]))
    assert record["method"] == "synflow" and U.sparsity(model) == pytest.approx(0.7, abs=2e-3)
    assert not any(k.endswith("weight_mask") for k in model.state_dict())


def test_bad_input():
    with pytest.raises(ConfigError, match="method"):
        prune_at_init(smallnet.make(), _batch(), "magic", 0.5)
    with pytest.raises(DataError, match="labelled"):
        prune_at_init(smallnet.make(), [torch.randn(4, 1, 8, 8)], "snip", 0.5)
    with pytest.raises(ConfigError, match="sparsity"):
        prune_at_init(smallnet.make(), _batch(), "snip", 1.0)
