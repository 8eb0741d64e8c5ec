import numpy as np
import pytest
import torch
from torch import nn

import edgeopt
from edgeopt.errors import ConfigError
from edgeopt.inputs.analyze import count_macs
from edgeopt.techniques.lowrank.ranks import energy_rank, vbmf_rank


class ConvNet(nn.Module):
    """Large-enough 3x3 convs (factorizable), a 1x1 and a depthwise conv (skipped), a Linear head."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 32, 3, padding=1)
        self.c2 = nn.Conv2d(32, 48, 3, padding=1, stride=2)
        self.pw = nn.Conv2d(48, 48, 1)
        self.dw = nn.Conv2d(48, 48, 3, padding=1, groups=48)
        self.fc1 = nn.Linear(48, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        x = self.dw(self.pw(x)).mean((2, 3))
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.fixture
def net():
    torch.manual_seed(0)
    return ConvNet().eval()


@pytest.fixture
def x():
    return torch.randn(1, 3, 16, 16)


def _ort(path, x):
    import onnxruntime as ort

    return ort.InferenceSession(str(path)).run(None, {"input": x.numpy()})[0]


@pytest.mark.parametrize("method", ["tucker", "cp", "svd"])
def test_factorize_drops_macs_exports_and_matches(tmp_path, net, x, method):
    res = edgeopt.factorize(net, x, method=method, macs_reduction=0.5)
    small, rec = res.model, res.record
    assert rec["layers_changed"] > 0
    assert count_macs(small, x) < count_macs(net, x)
    assert small(x).shape == net(x).shape
    for row in rec["layers"]:
        assert row["macs_after"] <= 0.5 * row["macs_before"] + 1
    path = edgeopt.export(small, x, format="onnx", out=tmp_path / f"{method}.onnx")
    np.testing.assert_allclose(_ort(path, x), small(x).detach().numpy(), atol=1e-4, rtol=1e-3)
    assert isinstance(net.c2, nn.Conv2d)  # the input model is untouched


def test_skips_1x1_depthwise_with_reasons(net, x):
    rec = edgeopt.factorize(net, x, method="tucker", energy=0.9, layers=["c2", "pw", "dw"]).record
    skipped = " | ".join(rec["skipped"])
    assert "pw: 1x1 conv" in skipped and "dw: grouped/depthwise" in skipped
    assert {r["layer"] for r in rec["layers"]} <= {"c2"}


@pytest.mark.parametrize("method,layer", [("tucker", "c2"), ("svd", "fc1")])
def test_error_decreases_as_rank_grows(net, x, method, layer):
    errs, ranks = [], []
    for e in (0.5, 0.8, 0.95, 0.999):
        rec = edgeopt.factorize(net, x, method=method, energy=e, layers=[layer]).record
        if not rec["layers"]:  # a rank this high would not reduce MACs: skipped, with the reason
            assert "not reduce MACs" in rec["skipped"][0]
            continue
        errs.append(rec["layers"][0]["weight_rel_error"])
        ranks.append(sum(rec["layers"][0]["ranks"]))
    assert len(errs) >= 2
    assert ranks == sorted(ranks) and errs == sorted(errs, reverse=True) and errs[-1] < errs[0]


def test_vbmf_and_energy_ranks():
    rng = np.random.default_rng(0)
    low = rng.standard_normal((64, 5)) @ rng.standard_normal((5, 80))
    noisy = low + 0.05 * rng.standard_normal((64, 80))
    assert 3 <= vbmf_rank(noisy) <= 8  # finds the planted rank, not the noise
    s = np.linalg.svd(noisy, compute_uv=False)
    assert energy_rank(s, 0.5) <= energy_rank(s, 0.99) <= 64


def test_vbmf_factorizes(net, x):
    res = edgeopt.factorize(net, x, method="tucker", rank_method="vbmf", layers=["c2"])
    assert res.record["rank_method"] == "vbmf" and res.model(x).shape == (1, 10)


def test_bad_arguments(net, x):
    with pytest.raises(ConfigError, match="method"):
        edgeopt.factorize(net, x, method="qr")
    with pytest.raises(ConfigError, match="macs_reduction"):
        edgeopt.factorize(net, x, macs_reduction=1.5)
    with pytest.raises(ConfigError, match="unknown layer"):
        edgeopt.factorize(net, x, layers=["nope"])


def test_registered_as_technique(net, x):
    from edgeopt.techniques import TECHNIQUES

    tech = TECHNIQUES.get("factorize")
    cfg = tech.make_config({"method": "svd", "energy": 0.8})
    small, rec = tech.apply_fn()(net, x, cfg)
    assert rec["method"] == "svd" and small(x).shape == (1, 10)
    with pytest.raises(ConfigError):
        tech.make_config({"method": "tucker", "bogus": 1})


def test_cli_factorize_and_prune_record(tinynet_spec, tmp_path):
    import json
    import subprocess
    import sys

    def run(*args):
        return subprocess.run([sys.executable, "-m", "edgeopt", *args], capture_output=True, text=True, timeout=600)

    rec = tmp_path / "f.json"
    p = run("factorize", "--model", tinynet_spec, "--input-shape", "1,1,16,16", "--method", "svd", "--energy", "0.5",
            "--out", str(tmp_path / "f.onnx"), "--record", str(rec))
    assert p.returncode == 0, p.stderr
    assert "MACs" in p.stdout and (tmp_path / "f.onnx").exists()
    assert json.loads(rec.read_text())["method"] == "svd"
    p = run("factorize", "--model", tinynet_spec, "--input-shape", "1,1,16,16", "--method", "qr")
    assert p.returncode == 2 and "Traceback" not in p.stderr and "method" in p.stderr
    prec = tmp_path / "p.json"
    p = run("prune", "--model", tinynet_spec, "--input-shape", "1,1,16,16", "--importance", "hrank",
            "--scope", "global", "--round-to", "4", "--out", str(tmp_path / "p.onnx"), "--record", str(prec))
    assert p.returncode == 0, p.stderr
    assert json.loads(prec.read_text())["importance"] == "hrank"


class _Costs:
    """Stand-in latencies for the decision logic alone (the real table is measured in
    tests/measure/test_latency_table.py): a 1x1 conv costs `pointwise` ms whatever its widths, a k x k conv
    cin x cout / 1000 ms."""

    runtime = "scripted"

    def __init__(self, pointwise: float):
        self.pointwise = pointwise

    def entry(self, sig, cin, cout, precision="fp32"):
        if sig["kind"] == "null":  # the call's fixed cost
            return 0.0
        return self.pointwise if sig["k"] == [1, 1] else cin * cout / 1000


def test_tucker_layers_kept_where_not_measured_faster(net, x):
    from edgeopt.techniques.lowrank.factorize import factorize

    cheap, rec = factorize(net, x, energy=0.5, table=_Costs(pointwise=0.0))
    assert "c2" in [d["layer"] for d in rec["layers"]] and rec["latency_checked_on"] == "scripted"
    dear, rec = factorize(net, x, energy=0.5, table=_Costs(pointwise=10.0))
    assert all(d["kind"] != "tucker" for d in rec["layers"])
    assert any(s.startswith("c2: ranks") and "not faster on scripted" in s for s in rec["skipped"])
    assert isinstance(dear.c2, nn.Conv2d) and not isinstance(cheap.c2, nn.Conv2d)


def test_factorize_with_a_measured_table_records_every_decision(net, x, tmp_path):
    from edgeopt.measure.latency_table import LatencyTable
    from edgeopt.techniques.lowrank.factorize import factorize

    table = LatencyTable(cache_dir=tmp_path, runs=3)
    _, rec = factorize(net, x, energy=0.5, table=table)
    assert table.measured > 0 and rec["latency_checked_on"] == "onnxruntime"
    tucker = {d["layer"] for d in rec["layers"] if d["kind"] == "tucker"}
    slower = {s.split(":")[0] for s in rec["skipped"] if "not faster" in s}
    assert tucker | slower == {"c2"} and not tucker & slower  # c1 (3 in-channels) is too small either way
    again = LatencyTable(cache_dir=tmp_path, runs=3)
    factorize(net, x, energy=0.5, table=again)
    assert again.measured == 0  # the same layers at the same ranks: all from the cache


def test_cp_layers_decided_by_the_table_before_any_decomposition(net, x, monkeypatch):
    """CP's four convs (1x1, k x 1 and 1 x k depthwise, 1x1) are looked up before the ALS fit: a layer not
    measured faster is kept and never decomposed."""
    from edgeopt.techniques.lowrank import factorize as F

    cheap, rec = F.factorize(net, x, method="cp", energy=0.5, table=_Costs(pointwise=0.0))
    assert [d["kind"] for d in rec["layers"] if d["layer"] == "c2"] == ["cp"]

    def no_fit(*a, **k):
        raise AssertionError("decomposed a layer the table kept")

    monkeypatch.setattr(F, "_cp", no_fit)
    dear, rec = F.factorize(net, x, method="cp", energy=0.5, table=_Costs(pointwise=10.0))
    assert any(s.startswith("c2: ranks") and "not faster on scripted" in s for s in rec["skipped"])
    assert isinstance(dear.c2, nn.Conv2d)



def test_cp_skips_a_layer_too_costly_to_fit_with_the_reason(monkeypatch):
    from edgeopt.techniques.lowrank import factorize as F

    def no_fit(*a, **k):
        raise AssertionError("ran CP-ALS on a layer over the cost limit")

    monkeypatch.setattr(F, "_cp", no_fit)
    torch.manual_seed(0)
    big = nn.Sequential(nn.Conv2d(256, 256, 3, padding=1), nn.ReLU()).eval()
    same, rec = F.factorize(big, torch.randn(1, 256, 8, 8), method="cp", energy=0.9)
    assert rec["layers_changed"] == 0 and isinstance(same[0], nn.Conv2d)
    assert any(s.startswith("0: CP at rank") and "too costly to fit" in s for s in rec["skipped"])


@pytest.mark.parametrize("method, cin, cout", [("tucker", 320, 320), ("cp", 64, 128)])
def test_the_same_factorization_whatever_the_callers_blas_threads(method, cin, cout):
    """A Ray worker runs NumPy on one BLAS thread, the driver on all cores; a threaded eigh of a 320-wide Gram
    matrix gives other last bits, and CP's SVD initialisation filled the factors beyond a 3x3 kernel's modes
    from NumPy's global random state: fine-tuning made either another accuracy. Factorizing gives the same
    weights, run after run, under any BLAS thread count."""
    from threadpoolctl import threadpool_limits

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1)).eval()
    x = torch.randn(1, cin, 6, 6)
    got = []
    for threads in (1, 2, 1):
        with threadpool_limits(limits=threads, user_api="blas"):
            small = edgeopt.factorize(model, x, method=method, energy=0.5).model
        got.append(torch.cat([p.detach().flatten() for p in small.parameters()]))
    assert torch.equal(got[0], got[1]) and torch.equal(got[0], got[2])


def test_a_vit_whose_qkv_is_factorized_still_counts_its_macs():
    """Torch-Pruning counts a timm attention block by its fused qkv Linear's width; factorized into two Linears,
    the block crashed every MAC count (so every factorization of a DeiT failed its build)."""
    timm = pytest.importorskip("timm")
    from edgeopt.techniques.lowrank.factorize import factorize

    torch.manual_seed(0)
    vit = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2,
                                                           num_heads=4, num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    small, rec = factorize(vit, x, "svd", energy=0.5, min_params=1)
    assert any(d["layer"].endswith("attn.qkv") for d in rec["layers"])
    assert isinstance(small.blocks[0].attn.qkv, nn.Sequential)
    before, after = count_macs(vit, x), count_macs(small, x)
    assert 0 < after < before
    from torch_pruning.utils import op_counter  # the library's own counter is left as it was

    assert all(h is not None and h.__name__ != "hook" for h in op_counter.MODULES_MAPPING.values())
