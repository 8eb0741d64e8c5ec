"""HRank ranks the maps after BatchNorm and activation, and the prune command says whether it measured real
inputs or random ones."""

import json
from pathlib import Path

import torch
from cliruns import run
from paths import TESTS
from torch import nn


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
    small = edgeopt.prune(net, torch.randn(1, 3, 8, 8), ratio=1 / 6, method="hrank", data=data).model
    assert small[0].out_channels == 5
    assert torch.equal(small[0].weight, net[0].weight[1:])  # the dead channel (the largest weights) went


def test_cli_prune_hrank_uses_data_or_says_it_is_random(tmp_path):
    import numpy as np

    spec = str(tmp_path / "net.py") + ":make"
    (tmp_path / "net.py").write_text(
        "import sys\nsys.path[:0] = " + repr([str(Path(__file__).parent), str(TESTS)]) + "\n"
        "from test_hrank import _dead_channel_net\n\ndef make():\n    return _dead_channel_net()\n")
    npy = tmp_path / "x.npy"
    np.save(npy, np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype(np.float32))
    rec = tmp_path / "rec.json"
    p = run("prune", "--model", spec, "--input-shape", "1,3,8,8", "--importance", "hrank", "--ratio", "0.2",
                "--data", str(npy), "--out", str(tmp_path / "p.onnx"), "--record", str(rec))
    assert p.returncode == 0, p.stderr
    assert "from --data" in p.stdout and json.loads(rec.read_text())["hrank_inputs"] == "data"
    p = run("prune", "--model", spec, "--input-shape", "1,3,8,8", "--importance", "hrank", "--ratio", "0.2",
                "--out", str(tmp_path / "p.onnx"), "--record", str(rec))
    assert p.returncode == 0, p.stderr
    assert "RANDOM inputs" in p.stdout and json.loads(rec.read_text())["hrank_inputs"] == "random"
