"""The public verb: `edgeopt.apply(model, example_inputs, config, data) -> Applied(model, record)`, the named
techniques as wrappers that all return Applied with one vocabulary (ratio, method, data / train_data), and the
old keywords and return shapes still served for one release with a DeprecationWarning."""

import warnings

import pytest
import torch

import edgeopt
from edgeopt.errors import ConfigError, UnknownNameError
from edgeopt.inputs.analyze import count_params
from edgeopt.techniques import PruneConfig


def _labelled(n=2, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 1, size, size, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(n)]


@pytest.fixture
def small():
    import smallnet

    return smallnet.make()


def _no_deprecation(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        return fn(*args, **kwargs)


def test_apply_with_a_dict_or_a_config_object_returns_applied(tiny, example):
    by_dict = edgeopt.apply(tiny, example, {"technique": "prune", "ratio": 0.3})
    by_object = edgeopt.apply(tiny, example, PruneConfig(ratio=0.3))
    by_alias = edgeopt.apply(tiny, example, {"technique": "structured_pruning", "ratio": 0.3})
    for result in (by_dict, by_object, by_alias):
        assert isinstance(result, edgeopt.Applied)
        assert count_params(result.model) < count_params(tiny) and result.record["layers_changed"] > 0
    assert by_dict.record["layers"] == by_object.record["layers"] == by_alias.record["layers"]
    assert result.model(example).shape == tiny(example).shape


def test_apply_passes_calibration_and_training_data(small):
    x = torch.randn(1, 1, 16, 16)
    recal = edgeopt.apply(small, x, {"technique": "bn_recalibrate", "batches": 2}, data=_labelled(3))
    assert recal.record["batches"] == 2
    tuned = edgeopt.apply(small, x, {"technique": "fine_tune", "epochs": 1}, train_data=_labelled())
    assert isinstance(tuned, edgeopt.Applied) and tuned.model is not small


def test_apply_refuses_bad_steps_in_one_line(tiny, example):
    with pytest.raises(UnknownNameError, match="did you mean 'prune'"):
        edgeopt.apply(tiny, example, {"technique": "prnue", "ratio": 0.3})
    with pytest.raises(ConfigError, match="ratio"):
        edgeopt.apply(tiny, example, {"technique": "prune", "ratio": 1.5})
    with pytest.raises(ConfigError, match="did you mean 'ratio'"):
        edgeopt.apply(tiny, example, {"technique": "prune", "ratoi": 0.3})
    with pytest.raises(ConfigError, match="realised at export"):
        edgeopt.apply(tiny, example, {"technique": "quantize"})


def test_every_named_technique_returns_applied(tiny, example):
    import smallnet

    small = smallnet.make()  # prune_at_init masks it in place: given last
    x = torch.randn(1, 1, 16, 16)
    train = _labelled()
    results = {
        "prune": _no_deprecation(edgeopt.prune, tiny, example, ratio=0.3, method="l1"),
        "factorize": _no_deprecation(edgeopt.factorize, tiny, example, energy=0.8),
        "sparsify": _no_deprecation(edgeopt.sparsify, small, ratio=0.5),
        "slim": _no_deprecation(edgeopt.slim, small, x, train, ratio=0.2, epochs=1),
        "depth_prune": _no_deprecation(edgeopt.depth_prune, tiny, example, [torch.randn(4, 1, 16, 16)]),
        "qat": _no_deprecation(edgeopt.qat, small, train, epochs=1),
        "imp": _no_deprecation(edgeopt.imp, small, train, ratio=0.5, rounds=1, epochs=1),
        "supermask": _no_deprecation(edgeopt.supermask, small, train, ratio=0.5, epochs=1),
        "distill": _no_deprecation(edgeopt.distill, smallnet.make(seed=1), small, train, epochs=1),
        "prune_at_init": _no_deprecation(edgeopt.prune_at_init, small, train, method="snip", ratio=0.5),
    }
    for name, result in results.items():
        assert isinstance(result, edgeopt.Applied), name
        assert isinstance(result.model, torch.nn.Module) and isinstance(result.record, dict), name
    assert results["imp"].record["final_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert results["prune_at_init"].model is small  # in place, as documented


def test_old_keywords_still_work_with_a_warning(tiny, example, small):
    with pytest.warns(DeprecationWarning, match="use method="):
        old = edgeopt.prune(tiny, example, ratio=0.3, importance="l1")
    assert old.record["importance"] == "l1"
    with pytest.warns(DeprecationWarning, match="use ratio="):
        edgeopt.sparsify(small, sparsity=0.5)
    with pytest.warns(DeprecationWarning, match="use train_data="):
        edgeopt.supermask(small, data=_labelled(), ratio=0.5, epochs=1)
    with pytest.raises(ConfigError, match="give method= only"):
        edgeopt.prune(tiny, example, importance="l1", method="l2")


def test_old_keywords_of_the_weight_level_and_sensitivity_helpers_still_work_with_a_warning(tiny_plain, example):
    import smallnet

    with pytest.warns(DeprecationWarning, match=r"imp\(sparsity=\.\.\.\): use ratio="):
        old = edgeopt.imp(smallnet.make(), _labelled(), sparsity=0.5, rounds=1, epochs=1)
    assert old.record["final_sparsity"] == pytest.approx(0.5, abs=0.01)
    with pytest.warns(DeprecationWarning, match=r"supermask\(sparsity=\.\.\.\): use ratio="):
        old = edgeopt.supermask(smallnet.make(), _labelled(), sparsity=0.6, epochs=1)
    assert old.record["measured_sparsity"] == pytest.approx(0.6, abs=0.01)
    with pytest.warns(DeprecationWarning, match=r"prune_at_init\(sparsity=\.\.\.\): use ratio="):
        old = edgeopt.prune_at_init(smallnet.make(), _labelled(), sparsity=0.5)
    assert old.record["sparsity"] == pytest.approx(0.5, abs=1e-3)
    acc = iter(range(100, 0, -1))
    with pytest.warns(DeprecationWarning, match=r"prune_sensitivity\(importance=\.\.\.\): use method="):
        sens = edgeopt.prune_sensitivity(tiny_plain, example, lambda m: float(next(acc)), importance="l1",
                                         max_groups=1)
    assert sens.record["importance"] == "l1" and len(sens.layers) == 1


def test_old_options_of_qat_and_supermask_still_work_with_a_warning(small):
    x = torch.randn(2, 1, 16, 16)
    with pytest.warns(DeprecationWarning, match=r"qat\(\*\*training options\)"):
        old = edgeopt.qat(small, _labelled(), epochs=1, per_channel=False)
    assert old.model is not small and old.record == {"epochs": 1, "distill": True}
    assert old.model(x).shape == (2, 10)
    with pytest.warns(DeprecationWarning, match=r"return_record=True"):
        old = edgeopt.supermask(small, _labelled(), ratio=0.5, epochs=1, return_record=True)
    with pytest.warns(DeprecationWarning, match="unpacking"):
        masked, rec = old
    assert masked is old.model and rec is old.record and rec["measured_sparsity"] == pytest.approx(0.5, abs=0.01)


def test_old_return_shapes_still_work_with_a_warning(tiny, example, small, tmp_path):
    result = edgeopt.prune(tiny, example, ratio=0.3)
    with pytest.warns(DeprecationWarning, match="result.record"):
        assert result.edgeopt_record is result.record
    with pytest.warns(DeprecationWarning, match="result.model"):
        assert result(example).shape == (1, 10)
    with pytest.warns(DeprecationWarning):
        assert count_params(result) == count_params(result.model)
    with pytest.warns(DeprecationWarning, match="unpacking"):
        model, record = result
    assert model is result.model and record is result.record
    with pytest.warns(DeprecationWarning, match="result.model"):
        assert edgeopt.export(result, example, out=tmp_path / "m.onnx").is_file()
    with pytest.warns(DeprecationWarning, match="unpacking"):
        sparse, rec = edgeopt.sparsify(small, 0.5)
    assert isinstance(sparse, torch.nn.Module) and "deflate_bytes" in rec
    at_init = edgeopt.prune_at_init(small, _labelled(), ratio=0.5)
    with pytest.warns(DeprecationWarning, match="result.record"):
        assert at_init["method"] == "snip"
    with pytest.warns(DeprecationWarning, match="`in` on the result: use result.record"):
        assert "method" in at_init


def test_attributes_of_the_result_still_reach_the_model_with_a_warning(tiny, example):
    result = edgeopt.prune(tiny, example, ratio=0.3)
    with pytest.warns(DeprecationWarning, match=r"result\.fc: .*use result\.model\.fc"):
        assert result.fc is result.model.fc
    with pytest.warns(DeprecationWarning, match=r"setting result\.tag: use result\.model\.tag"):
        result.tag = "small"
    assert result.model.tag == "small"
    with pytest.warns(DeprecationWarning, match=r"deleting result\.tag"):
        del result.tag
    assert not hasattr(result.model, "tag")


def test_helpers_return_typed_results_with_old_dict_access(tiny_plain, example):
    acc = iter(range(100, 0, -1))
    sens = edgeopt.prune_sensitivity(tiny_plain, example, lambda m: float(next(acc)), max_groups=2)
    assert isinstance(sens, edgeopt.Sensitivity) and sens.baseline == 100.0 and sens.layers
    with pytest.warns(DeprecationWarning, match="use its attributes"):
        assert sens["layer_ratios"] == sens.layer_ratios
    with pytest.warns(DeprecationWarning, match="`in` on an edgeopt.Sensitivity: use its attributes"):
        assert "layers" in sens and "nope" not in sens
    with pytest.warns(DeprecationWarning, match=r"result\.get\('(baseline|nope)'\).*use its attributes"):
        assert sens.get("baseline") == 100.0 and sens.get("nope", 7) == 7
    found = edgeopt.efficient_architectures(tiny_plain, example, families=["mobilenet_v3_small"], max_time_s=0.5)
    assert isinstance(found, edgeopt.Architectures) and found.table[0]["name"] == "yours"
    with pytest.warns(DeprecationWarning, match="use its attributes"):
        assert found["decision"] == found.decision
