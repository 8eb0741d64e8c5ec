import hashlib

import pytest
import torch

from edgeopt.errors import ConfigError, InputShapeError, ModelLoadError, UnsafePickleError
from edgeopt.inputs.models import load_model, parse_input_shape, split_spec


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_spec_keyword_arguments():
    assert split_spec("torchvision:resnet18?num_classes=10&x=1.5&b=true") == (
        "torchvision:resnet18", {"num_classes": 10, "x": 1.5, "b": True})


def test_torchvision_with_kwargs():
    lm = load_model("torchvision:resnet18?num_classes=7", input_shape=(1, 3, 64, 64))
    assert lm.model(torch.randn(1, 3, 64, 64)).shape == (1, 7)


def test_unknown_torchvision_model():
    with pytest.raises(ModelLoadError, match="did you mean 'resnet18'"):
        load_model("torchvision:resnet81")


def test_file_factory(tinynet_spec):
    lm = load_model(tinynet_spec + "?num_classes=4", input_shape=(1, 1, 16, 16))
    assert lm.model(torch.randn(1, 1, 16, 16)).shape == (1, 4)


def test_module_factory():
    lm = load_model("torchvision.models:mobilenet_v3_small?num_classes=3", input_shape=(1, 3, 64, 64))
    assert lm.model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_timm_model():
    pytest.importorskip("timm")
    lm = load_model("timm:resnet10t?num_classes=5", input_shape=(1, 3, 64, 64))
    assert lm.model(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def test_pt2_archive(tmp_path, tiny, example):
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(tiny, (example,)), str(path))
    lm = load_model(str(path), input_shape=tuple(example.shape))
    torch.testing.assert_close(lm.model(example), tiny(example))


def test_weights_roundtrip_and_input_untouched(tmp_path, tinynet_spec, tiny):
    ckpt = tmp_path / "w.pth"
    torch.save(tiny.state_dict(), ckpt)
    before = _sha(ckpt)
    lm = load_model(tinynet_spec, weights=ckpt, input_shape=(1, 1, 16, 16))
    assert _sha(ckpt) == before
    x = torch.randn(1, 1, 16, 16)
    torch.testing.assert_close(lm.model(x), tiny(x))


def test_weights_mismatch_lists_keys(tmp_path, tinynet_spec):
    import tinynet

    ckpt = tmp_path / "w.pth"
    torch.save(tinynet.make(num_classes=3).state_dict(), ckpt)
    with pytest.raises(ModelLoadError, match=r"shape mismatches \['fc.weight"):
        load_model(tinynet_spec, weights=ckpt, input_shape=(1, 1, 16, 16))
    sd = tinynet.make().state_dict()
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, ckpt)
    with pytest.raises(ModelLoadError, match="unexpected keys"):
        load_model(tinynet_spec, weights=ckpt, input_shape=(1, 1, 16, 16))


def test_corrupt_and_missing_checkpoint(tmp_path, tinynet_spec):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelLoadError, match="not a readable PyTorch checkpoint"):
        load_model(tinynet_spec, weights=bad, input_shape=(1, 1, 16, 16))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tinynet_spec, weights=tmp_path / "nope.pth", input_shape=(1, 1, 16, 16))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nope.py") + ":make")


def test_full_pickle_refused_unless_trusted(tmp_path, tiny):
    path = tmp_path / "full.pt"
    torch.save(tiny, path)
    with pytest.raises(UnsafePickleError, match="--trust-pickle"):
        load_model(str(path), input_shape=(1, 1, 16, 16))
    lm = load_model(str(path), input_shape=(1, 1, 16, 16), trust_pickle=True)
    assert isinstance(lm.model, torch.nn.Module)


def test_wrong_input_shape(tinynet_spec):
    with pytest.raises(InputShapeError, match="fails on input shape 1,3,16,16"):
        load_model(tinynet_spec, input_shape=(1, 3, 16, 16))


@pytest.mark.parametrize("text", ["1,a,3", "5", "1,0,4,4", ""])
def test_bad_input_shape_text(text):
    with pytest.raises(InputShapeError):
        parse_input_shape(text)


def test_unintelligible_spec():
    with pytest.raises(ConfigError, match="not understood"):
        load_model("resnet18")
