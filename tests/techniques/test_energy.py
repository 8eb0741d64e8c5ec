"""Energy-based pruning criterion: channels whose output maps carry little energy on real inputs go first."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import edgeopt
from edgeopt.errors import PruningError


class DeadInput(nn.Module):
    """conv1's channels 0-3 have large weights but read only input channel 1, which is always zero in the
    data: no energy, large magnitude. Channels 4-7 have small weights on the live input channel 0."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 8, 1, bias=False)
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.conv1.weight.zero_()
            self.conv1.weight[:4, 1] = 5.0
            self.conv1.weight[4:, 0] = torch.linspace(0.1, 0.4, 4).view(4, 1, 1)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def _live_data(n=3):
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(8, 2, 6, 6, generator=g).abs() for _ in range(n)]
    for x in xs:
        x[:, 1] = 0.0  # the dead input channel
    return xs


def _conv1_keeps_live_channels(model) -> bool:
    w = model.conv1.weight.detach()
    return bool(w[:, 1].abs().max() == 0 and w[:, 0].abs().min() > 0)


def test_energy_removes_silent_channels_where_magnitude_does_not():
    model, data = DeadInput().eval(), _live_data()
    example = data[0][:1]
    ratios = {"conv1": 0.5, "conv2": 0.0}  # prune conv1 only: its choice of channels is what is under test
    energy_res = edgeopt.prune(model, example, method="energy", data=data, layer_ratios=ratios, ratio=0.0001)
    by_energy = energy_res.model
    by_l2 = edgeopt.prune(model, example, method="l2", layer_ratios=ratios, ratio=0.0001).model
    assert by_energy.conv1.out_channels == 4 and by_l2.conv1.out_channels == 4
    assert _conv1_keeps_live_channels(by_energy)
    assert not _conv1_keeps_live_channels(by_l2)  # magnitude keeps the large, silent channels
    with torch.no_grad():  # removing silent channels changes nothing on the data
        for x in data:
            np.testing.assert_allclose(by_energy(x).numpy(), model(x).numpy(), atol=1e-5)
    stab = energy_res.record["energy_stability"]
    assert stab["batches"] == 3 and stab["layers_measured"] >= 2
    assert not any(hasattr(m, "_energy") for m in by_energy.modules())  # measurements are not left behind


def test_energy_needs_inputs(tiny, example):
    with pytest.raises(PruningError, match="energy importance needs a few batches"):
        edgeopt.prune(tiny, example, ratio=0.3, method="energy")
    with pytest.raises(PruningError, match="energy importance needs a few batches"):
        edgeopt.prune(tiny, example, ratio=0.3, method="energy", data=[])


def test_energy_iterative_steps_remeasure(tiny, example):
    data = [torch.randn(4, 1, 16, 16) for _ in range(2)]
    res = edgeopt.prune(tiny, example, ratio=0.4, method="energy", data=data, iterative_steps=2)
    assert res.record["layers_changed"] > 0
    assert res.model(example).shape == tiny(example).shape


def test_cli_prune_energy(tmp_path, tinynet_spec):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "edgeopt", *args], capture_output=True, text=True, timeout=600)

    rec = tmp_path / "p.json"
    p = run("prune", "--model", tinynet_spec, "--input-shape", "1,1,16,16", "--importance", "energy",
            "--out", str(tmp_path / "p.onnx"), "--record", str(rec))
    assert p.returncode == 0, p.stderr
    record = json.loads(rec.read_text())
    assert record["importance"] == "energy" and record["layers_changed"] > 0
    assert record["energy_stability"]["layers_measured"] > 0
    p = run("prune", "--model", tinynet_spec, "--input-shape", "1,1,16,16", "--importance", "energy",
            "--data", str(tmp_path / "missing.npy"))
    assert p.returncode == 2 and "Traceback" not in p.stderr and "--data" in p.stderr
