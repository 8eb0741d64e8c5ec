import pytest
import torch

import edgeopt
from edgeopt.analyze import analyze, count_macs, count_params
from edgeopt.errors import PruningError, UnknownNameError
from edgeopt.techniques.prune import IMPORTANCE_NAMES


@pytest.mark.parametrize("importance", [i for i in IMPORTANCE_NAMES if i != "taylor"])
def test_prune_physically_shrinks(tiny, example, importance):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    small = edgeopt.prune(tiny, example, ratio=0.4, importance=importance)
    assert count_params(small) < count_params(tiny)
    assert count_macs(small, example) < count_macs(tiny, example)
    assert small(example).shape == tiny(example).shape
    assert small.edgeopt_record["layers_changed"] > 0
    # the caller's model is never modified
    for k, v in tiny.state_dict().items():
        assert torch.equal(v, before[k])


def test_taylor_needs_labels(tiny, example):
    with pytest.raises(PruningError, match="labelled batches"):
        edgeopt.prune(tiny, example, ratio=0.3, importance="taylor")
    data = [(torch.randn(8, 1, 16, 16), torch.randint(0, 10, (8,)))]
    small = edgeopt.prune(tiny, example, ratio=0.3, importance="taylor", data=data)
    assert count_params(small) < count_params(tiny)


def test_round_to_gives_multiples(tiny_plain, example):
    small = edgeopt.prune(tiny_plain, example, ratio=0.5, round_to=8)
    convs = [m for m in small.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == 1]
    assert all(m.out_channels % 8 == 0 for m in convs)


def test_unknown_importance(tiny, example):
    with pytest.raises(UnknownNameError, match="did you mean 'fpgm'"):
        edgeopt.prune(tiny, example, ratio=0.3, importance="fpg")


def test_bad_ratio(tiny, example):
    with pytest.raises(PruningError):
        edgeopt.prune(tiny, example, ratio=1.2)


def test_pruned_model_exports_and_matches(tmp_path, tiny, example):
    small = edgeopt.prune(tiny, example, ratio=0.3)
    path = edgeopt.export(small, example, format="onnx", out=tmp_path / "s.onnx")
    import onnxruntime as ort

    out = ort.InferenceSession(str(path)).run(None, {"input": example.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(out), small(example).detach(), atol=1e-4, rtol=1e-3)


def test_analyze_counts(tiny, example):
    s = analyze(tiny, tuple(example.shape))
    assert s.params == count_params(tiny) and s.macs > 0 and s.num_outputs == 10
    assert s.layers["depthwise_conv"] == 1 and s.layers["attention"] >= 1 and s.prunable_groups > 0


def test_bn_recalibration_restores_statistics(tiny_plain, example):
    from edgeopt.techniques.bn_recal import recalibrate_bn

    bn = tiny_plain.stem[1]
    bn.running_mean.fill_(100.0)
    n = recalibrate_bn(tiny_plain, [torch.randn(16, 1, 16, 16) for _ in range(3)])
    assert n > 0 and bn.running_mean.abs().max() < 10 and not tiny_plain.training
