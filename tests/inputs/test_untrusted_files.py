"""Files and code from users: a hostile .pt2 or pickle never runs without --trust-pickle, and a data function's
file leaves no bytecode beside it."""

import json
import pickle
import sys
import zipfile

import pytest
import torch
from cliruns import run
from torch import nn

from edgeopt.errors import ModelLoadError, UnsafePickleError
from edgeopt.inputs.models import load_model


class _MakesMarker:
    """Unpickling this creates a marker file: stands for arbitrary code in a hostile file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil_pt2(tmp_path, marker):
    """A genuine torch.export archive whose first weight is rewritten as a `use_pickle` payload."""
    good = tmp_path / "good.pt2"
    ep = torch.export.export(nn.Sequential(nn.Linear(4, 3)).eval(), (torch.randn(1, 4),))
    torch.export.save(ep, str(good))
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("model_weights_config.json"):
                cfg = json.loads(data)
                first = next(iter(cfg["config"].values()))
                first["use_pickle"] = True
                payload = first["path_name"]
                data = json.dumps(cfg).encode()
            dst.writestr(info, data)
        root = src.namelist()[0].split("/")[0]
        evil_bytes = pickle.dumps(_MakesMarker(marker))
    # rewrite the weight file itself with the hostile pickle
    with zipfile.ZipFile(evil) as z:
        entries = [(i, z.read(i)) for i in z.infolist()]
    with zipfile.ZipFile(evil, "w") as z:
        for info, data in entries:
            if info.filename == f"{root}/data/weights/{payload}":
                data = evil_bytes
            z.writestr(info, data)
    return good, evil


def test_pt2_with_pickled_weight_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    good, evil = _evil_pt2(tmp_path, marker)
    p = run("plan", "--model", str(evil), "--input-shape", "1,4")
    assert not marker.exists()
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "--trust-pickle" in lines[0] and "Traceback" not in p.stderr, p.stderr
    with pytest.raises(UnsafePickleError, match="--trust-pickle"):
        load_model(str(evil), input_shape=(1, 4))
    assert not marker.exists()
    # any archive loads only with an explicit opt-in
    assert load_model(str(good), input_shape=(1, 4), trust_pickle=True).model(torch.randn(1, 4)).shape == (1, 3)
    p = run("plan", "--model", str(evil), "--input-shape", "1,4", "--trust-pickle")
    assert marker.exists()


def test_pt2_aotinductor_and_legacy_parts_are_refused(tmp_path):
    good, _ = _evil_pt2(tmp_path, tmp_path / "unused")
    with zipfile.ZipFile(good) as z:
        root = z.namelist()[0].split("/")[0]
    aoti = tmp_path / "aoti.pt2"
    aoti.write_bytes(good.read_bytes())
    with zipfile.ZipFile(aoti, "a") as z:
        z.writestr(f"{root}/data/aotinductor/model/model.so", b"\x7fELF")
    with pytest.raises(UnsafePickleError, match="--trust-pickle"):
        load_model(str(aoti), input_shape=(1, 4))
    legacy = tmp_path / "legacy.pt2"
    legacy.write_bytes(good.read_bytes())
    with zipfile.ZipFile(legacy, "a") as z:
        z.writestr(f"{root}/data/constants/model.pt", pickle.dumps(_MakesMarker(tmp_path / "m2")))
    with pytest.raises(UnsafePickleError, match="--trust-pickle"):
        load_model(str(legacy), input_shape=(1, 4))
    assert not (tmp_path / "m2").exists()


def test_full_pickle_message_does_not_call_export_archives_safe(tmp_path):
    path = tmp_path / "full.pt"
    torch.save(nn.Sequential(nn.Linear(4, 3)), path)
    with pytest.raises(UnsafePickleError) as err:
        load_model(str(path), input_shape=(1, 4))
    assert "torch.export" not in str(err.value) and "--weights" in str(err.value)


def test_raw_pickle_is_detected_by_format_and_loads_with_trust(tmp_path):
    path = tmp_path / "model.pkl"
    with open(path, "wb") as f:
        pickle.dump(nn.Sequential(nn.Linear(4, 3)), f)
    with pytest.raises(UnsafePickleError, match="raw pickle"):
        load_model(str(path), input_shape=(1, 4))
    lm = load_model(str(path), input_shape=(1, 4), trust_pickle=True)
    assert lm.model(torch.randn(1, 4)).shape == (1, 3)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelLoadError, match="not a readable PyTorch checkpoint") as err:
        load_model(str(broken), input_shape=(1, 4), trust_pickle=False)
    assert not isinstance(err.value, UnsafePickleError)


def test_data_function_file_leaves_no_pycache(tmp_path, monkeypatch):
    from edgeopt.inputs.data import from_function

    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # as for a user without PYTHONDONTWRITEBYTECODE
    user = tmp_path / "mydata.py"
    user.write_text("import torch\n\ndef make():\n    return {'calib': [torch.zeros(2, 4)]}\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert "calib" in from_function(f"{user}:make")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
