"""Security and correctness fix-ups: each test reproduces one found problem."""

import json
import os
import pickle
import subprocess
import sys
import zipfile

import pytest
import torch
from torch import nn

from edgeopt.errors import ModelLoadError, UnsafePickleError
from edgeopt.inputs.models import load_model


def run_cli(*args):
    env = {k: v for k, v in os.environ.items() if k != "EDGEOPT_DEBUG"}
    return subprocess.run([sys.executable, "-m", "edgeopt", *args], capture_output=True, text=True,
                          timeout=600, env=env)


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
    p = run_cli("plan", "--model", str(evil), "--input-shape", "1,4")
    assert not marker.exists()
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "--trust-pickle" in lines[0] and "Traceback" not in p.stderr, p.stderr
    with pytest.raises(UnsafePickleError, match="--trust-pickle"):
        load_model(str(evil), input_shape=(1, 4))
    assert not marker.exists()
    # any archive loads only with an explicit opt-in
    assert load_model(str(good), input_shape=(1, 4), trust_pickle=True).model(torch.randn(1, 4)).shape == (1, 3)
    p = run_cli("plan", "--model", str(evil), "--input-shape", "1,4", "--trust-pickle")
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


@pytest.fixture
def umask_002():
    old = os.umask(0o002)
    yield 0o664
    os.umask(old)


def test_everything_written_honours_the_umask(tmp_path, umask_002):
    from edgeopt.engine.cache import CandidateCache
    from edgeopt.formats.onnx import export_onnx
    from edgeopt.report import write_atomic
    from edgeopt.report.gate import Check, Subject, write_junit

    write_atomic(tmp_path / "report.json", "{}")
    CandidateCache(tmp_path).put("measure", "k", {"a": 1})
    write_junit(tmp_path / "junit.xml", [Check("c", True, "ok")], Subject("s", "n", None, None))
    onnx_path = export_onnx(nn.Sequential(nn.Linear(4, 3)).eval(), torch.randn(1, 4), tmp_path / "m.onnx").path
    for path in (tmp_path / "report.json", tmp_path / "cache" / "measure-k.json", tmp_path / "junit.xml", onnx_path):
        assert (path.stat().st_mode & 0o777) == umask_002, f"{path.name}: {oct(path.stat().st_mode & 0o777)}"


def test_data_function_file_leaves_no_pycache(tmp_path, monkeypatch):
    from edgeopt.inputs.data import from_function

    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # as for a user without PYTHONDONTWRITEBYTECODE
    user = tmp_path / "mydata.py"
    user.write_text("import torch\n\ndef make():\n    return {'calib': [torch.zeros(2, 4)]}\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert "calib" in from_function(f"{user}:make")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_help_and_readme_say_user_code_is_run():
    import re
    from pathlib import Path

    helps = run_cli("optimize", "--help").stdout
    flat = re.sub(r"[\s│]+", " ", helps)
    assert "IMPORT AND RUN that code" in flat and "IMPORTS AND RUNS that code" in flat
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "**import and run that Python code**" in readme


def _dead_channel_net():
    """conv -> BN -> ReLU where BN shifts channel 0 far below zero: its raw conv map is full rank (and has the
    largest weights), but after BN+ReLU it is all zeros: HRank must rank it last."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1),
                        nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        net[0].weight[0] *= 5
        net[1].bias[0] = -1e4
    return net.eval()


def test_hrank_ranks_activated_maps():
    import edgeopt
    from edgeopt.techniques.pruning.importance import HRankImportance

    net = _dead_channel_net()
    data = [torch.randn(8, 3, 8, 8) for _ in range(2)]
    hrank = HRankImportance()
    stab = hrank.measure(net, data)["hrank_stability"]
    ranks = hrank.scores["0"]
    assert ranks[0] < 0.01 and ranks[1:].min() > 1, ranks  # dead after ReLU: rank 0; the rest: full-ish rank
    assert stab["maps"] == "after BatchNorm and activation"
    small = edgeopt.prune(net, torch.randn(1, 3, 8, 8), ratio=1 / 6, importance="hrank", data=data)
    assert small[0].out_channels == 5
    assert torch.equal(small[0].weight, net[0].weight[1:])  # the dead channel (the largest weights) went


def test_cli_prune_hrank_uses_data_or_says_it_is_random(tmp_path):
    import numpy as np

    spec = str(tmp_path / "net.py") + ":make"
    (tmp_path / "net.py").write_text(
        "import sys\nsys.path.insert(0, " + repr(str(__import__('pathlib').Path(__file__).parent)) + ")\n"
        "from test_fixups import _dead_channel_net\n\ndef make():\n    return _dead_channel_net()\n")
    npy = tmp_path / "x.npy"
    np.save(npy, np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype(np.float32))
    rec = tmp_path / "rec.json"
    p = run_cli("prune", "--model", spec, "--input-shape", "1,3,8,8", "--importance", "hrank", "--ratio", "0.2",
                "--data", str(npy), "--out", str(tmp_path / "p.onnx"), "--record", str(rec))
    assert p.returncode == 0, p.stderr
    assert "from --data" in p.stdout and json.loads(rec.read_text())["hrank_inputs"] == "data"
    p = run_cli("prune", "--model", spec, "--input-shape", "1,3,8,8", "--importance", "hrank", "--ratio", "0.2",
                "--out", str(tmp_path / "p.onnx"), "--record", str(rec))
    assert p.returncode == 0, p.stderr
    assert "RANDOM inputs" in p.stdout and json.loads(rec.read_text())["hrank_inputs"] == "random"
