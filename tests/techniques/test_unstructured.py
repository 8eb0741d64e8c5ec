import pytest
import smallnet
import torch

import edgeopt
from edgeopt.errors import ConfigError
from edgeopt.techniques.sparsity import lottery
from edgeopt.techniques.sparsity import unstructured as U
from edgeopt.training import fit, top1


def test_global_masks_hit_the_sparsity_exactly_and_differ_per_layer():
    m = smallnet.make()
    masks = U.global_magnitude_masks(m, 0.7)
    kept = sum(int(k.sum()) for k in masks.values())
    total = sum(k.numel() for k in masks.values())
    assert abs(1 - kept / total - 0.7) < 1e-3
    per_layer = [1 - float(k.mean()) for k in masks.values()]
    assert max(per_layer) - min(per_layer) > 0.05  # global: layers are pruned by different amounts
    with pytest.raises(ConfigError):
        U.global_magnitude_masks(m, 1.0)


def test_masks_survive_training_and_become_permanent():
    m = smallnet.make()
    U.apply_masks(m, U.global_magnitude_masks(m, 0.6))
    g = torch.Generator().manual_seed(0)
    fit(m, [(torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g))], epochs=2)
    assert U.sparsity(m) == pytest.approx(0.6, abs=2e-3)
    U.make_permanent(m)
    assert not any(k.endswith("weight_mask") for k in m.state_dict())
    assert U.sparsity(m) == pytest.approx(0.6, abs=2e-3)


def test_two_four_pattern_is_marked_and_compresses():
    m = smallnet.make(width=16)
    res = edgeopt.sparsify(m, pattern="2:4")
    sparse, record = res.model, res.record
    assert sparse.edgeopt_sparsity == "2:4"
    assert record["skipped"] and "stem.0" in record["skipped"][0]  # 1 input channel: no groups of 4
    checked = [U.is_2_4(mod.weight) for name, mod in U.prunable(sparse) if name != "stem.0"]
    assert checked and all(checked) and not U.is_2_4(smallnet.make(width=16).layer1[0].weight)
    dense = U.compressed_size(m)
    assert record["deflate_bytes"] < 0.8 * dense["deflate_bytes"]
    assert record["bitmask_sparse_bytes"] < 0.7 * dense["bitmask_sparse_bytes"]


@pytest.mark.parametrize("rewind", ["init", "epoch", "lr"])
def test_imp_with_rewinding_reaches_sparsity_with_bounded_accuracy_loss(rewind):
    trained, train, val = smallnet.trained()
    sub = train.items[:8]  # 512 samples keep the test short
    dense_acc = top1(trained, val)
    start = smallnet.make() if rewind != "lr" else trained  # tickets train from init; LR rewinding prunes trained
    epochs = 3 if rewind == "epoch" else 2  # weight rewinding to epoch 1 retrains epochs - 1 per round
    result = edgeopt.imp(start, sub, ratio=0.75, rounds=2, epochs=epochs, rewind=rewind, rewind_epoch=1,
                         eval_data=val, lr=0.05)
    pruned, rec = result.model, result.record
    assert rec["final_sparsity"] == pytest.approx(0.75, abs=0.01)
    rounds = rec["rounds"]
    assert len(rounds) == (3 if rewind != "lr" else 2)
    reference = rounds[0]["top1"] if rewind != "lr" else dense_acc  # the dense model it started from
    assert rounds[-1]["top1"] >= reference - 10.0 and rounds[-1]["top1"] > 60.0, rounds
    assert U.sparsity(pruned) == pytest.approx(0.75, abs=0.01)


def test_imp_rejects_bad_rewinding():
    with pytest.raises(ConfigError, match="rewind"):
        edgeopt.imp(smallnet.make(), [], rewind="later")
    with pytest.raises(ConfigError, match="rewind_epoch"):
        edgeopt.imp(smallnet.make(), [], rewind="epoch", rewind_epoch=5, epochs=3)


def test_linear_mode_connectivity_reports_a_barrier():
    trained, train, val = smallnet.trained()
    res = lottery.linear_mode_connectivity(trained, train.items[:6], fit, lambda m: top1(m, val), epochs=1, points=3,
                                           lr=0.01)
    assert len(res.errors) == 3 and res.barrier == pytest.approx(max(res.errors) - (res.errors[0] +
                                                                                    res.errors[2]) / 2)
    assert res.errors[0] < 30 and res.errors[-1] < 30  # both endpoints are trained models
    assert res.stable == (res.barrier < 2.0)
