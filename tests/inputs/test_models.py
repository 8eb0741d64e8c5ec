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
    lm = load_model(str(path), input_shape=tuple(example.shape), trust_pickle=True)  # an archive runs code
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


# --- user code: one loader for --model file.py:fn, --data file.py:fn and --metric file.py:fn ---

USER_CODE = ("import torch\n"
             "def make_net(width=4):\n    return torch.nn.Conv2d(1, width, 3)\n"
             "def make_data():\n    return {'calib': [torch.zeros(2, 1, 8, 8)]}\n"
             "def accuracy(outputs, targets):\n    return 50.0\n"
             "def broken():\n    raise RuntimeError('disk on fire')\n")


@pytest.fixture
def user_file(tmp_path, monkeypatch):
    import sys

    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # as for a user without PYTHONDONTWRITEBYTECODE
    f = tmp_path / "usercode.py"
    f.write_text(USER_CODE)
    return f


def test_user_code_three_loaders_one_way(user_file):
    from edgeopt.errors import DataError
    from edgeopt.inputs.data import from_function
    from edgeopt.measure.accuracy import load_metric

    before = sorted(p.name for p in user_file.parent.iterdir())
    assert load_model(f"{user_file}:make_net?width=3", input_shape=(1, 1, 8, 8)).model.out_channels == 3
    assert "calib" in from_function(f"{user_file}:make_data")
    assert load_metric(f"{user_file}:accuracy").fn(None, None) == 50.0
    assert sorted(p.name for p in user_file.parent.iterdir()) == before  # no __pycache__ beside the user's file
    # a missing attribute: the caller's error type, one line naming the spec, with did-you-mean
    for call, err in ((lambda s: load_model(s), ModelLoadError), (from_function, DataError),
                      (load_metric, ConfigError)):
        for wrong, right in (("make_nett", "make_net"), ("make_dat", "make_data"), ("acuracy", "accuracy")):
            with pytest.raises(err, match=f"{wrong}.*did you mean '{right}'") as e:
                call(f"{user_file}:{wrong}")
            assert "\n" not in str(e.value) and str(user_file) in str(e.value)


def test_user_code_failures_are_one_line(user_file, tmp_path):
    from edgeopt.errors import DataError
    from edgeopt.inputs.data import from_function
    from edgeopt.measure.accuracy import load_metric

    with pytest.raises(DataError, match=r"data function .*:broken raised RuntimeError: disk on fire"):
        from_function(f"{user_file}:broken")
    with pytest.raises(ModelLoadError, match=r"make_net raised TypeError"):
        load_model(f"{user_file}:make_net?depth=3")  # a keyword the factory does not take
    bad = tmp_path / "bad.py"
    bad.write_text("def f(:\n")
    with pytest.raises(ConfigError, match=r"cannot load metric function .*bad.py:f: importing .* SyntaxError"):
        load_metric(f"{bad}:f")
    with pytest.raises(ModelLoadError, match="No module named 'no_such_pkg_xyz'"):
        load_model("no_such_pkg_xyz.mod:make")
    with pytest.raises(ConfigError, match="use path/file.py:name"):
        load_metric(":acc")
    with pytest.raises(ConfigError, match="accuracy_value is int, not a function"):
        (tmp_path / "v.py").write_text("accuracy_value = 3\n")
        load_metric(f"{tmp_path / 'v.py'}:accuracy_value")


def test_user_files_with_the_same_stem_do_not_shadow(tmp_path):
    from edgeopt.inputs import usercode

    for d, value in (("a", 1), ("b", 2)):
        (tmp_path / d).mkdir()
        (tmp_path / d / "data.py").write_text(f"VALUE = {value}\n")
    assert usercode.load(f"{tmp_path / 'a' / 'data.py'}:VALUE", "x") == 1
    assert usercode.load(f"{tmp_path / 'b' / 'data.py'}:VALUE", "x") == 2


def test_cli_user_code_typo_exit_2(user_file):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "EDGEOPT_DEBUG"}
    r = subprocess.run([sys.executable, "-m", "edgeopt", "export", "--model", f"{user_file}:make_nt",
                        "--input-shape", "1,1,8,8", "--out", str(user_file.parent / "m.onnx")],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2 and "did you mean 'make_net'" in r.stderr and "Traceback" not in r.stderr, r.stderr
