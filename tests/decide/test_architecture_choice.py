"""Efficient architecture: families built at the user's input/outputs, re-parameterized, timed beside the
user's model; the decision says why; the promising ones are trained by distillation."""

import json
import subprocess
import sys

import pytest
import torch

import edgeopt
from edgeopt.errors import ConfigError
from edgeopt.techniques.retraining.architecture import build, decision, promising, reparameterize, train_candidates


@pytest.mark.parametrize("family", ["mobilenet_v3_small", "repvgg_a0", "mobileone_s0"])
def test_build_at_the_users_input_and_outputs(family):
    net = build(family, num_classes=7, in_chans=1)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert net(x).shape == (2, 7)


def test_reparameterization_fuses_branches_and_keeps_outputs():
    net = build("repvgg_a0", num_classes=10, in_chans=3)
    x = torch.randn(2, 3, 32, 32)
    deploy, fused = reparameterize(net)
    assert fused
    convs = lambda m: sum(isinstance(q, torch.nn.Conv2d) for q in m.modules())  # noqa: E731
    assert convs(deploy) < convs(net)  # 3x3 + 1x1 (+ identity) branches became one conv per block
    with torch.no_grad():
        torch.testing.assert_close(deploy(x), net(x), atol=1e-3, rtol=1e-3)
    same, fused = reparameterize(build("mobilenet_v3_small", 10, 3))
    assert not fused


def test_table_measures_families_next_to_the_users_model(tiny_plain, example):
    rows = edgeopt.efficient_architectures(tiny_plain, example, families=["mobilenet_v3_small", "repvgg_a0"],
                                           max_time_s=1.0).table
    assert [r["name"] for r in rows] == ["yours", "mobilenet_v3_small", "repvgg_a0"]
    assert all(r["p50_ms"] > 0 and r["params"] > 0 and r["macs"] > 0 for r in rows)
    assert rows[0]["speedup"] == 1.0 and rows[2]["reparameterized"]
    with pytest.raises(ConfigError, match="unknown architecture family"):
        edgeopt.efficient_architectures(tiny_plain, example, families=["resnet9000"])


def _rows(yours=10.0, **fams):
    rows = [{"name": "yours", "p50_ms": yours, "params": 1000}]
    return rows + [{"name": n, "p50_ms": ms, "params": p} for n, (ms, p) in fams.items()]


def test_decision_needs_from_scratch_and_reports_the_numbers():
    rows = _rows(a=(5.0, 2000), b=(9.5, 2000), c=(2.0, 50))  # b: not 10% faster, c: too small to compare
    assert promising(rows) == ["a"]
    d = decision(rows, from_scratch=False)
    assert d["technique"] == "architecture" and d["decision"] == "skipped"
    assert "needs training from scratch" in d["reason"] and "a 5.00 ms" in d["reason"]
    assert "training data needed" in decision(rows, from_scratch=True)["reason"]
    assert decision(_rows(a=(20.0, 2000)), from_scratch=True)["decision"] == "skipped"
    d = decision(rows, True, {"a": {"top1": 91.0, "p50_ms": 5.0}})
    assert d["decision"] == "applied" and "top-1 91.0%" in d["reason"]


def test_train_the_promising_family_by_distillation():
    from smallnet import trained

    teacher, train, val = trained(size=8)
    few = type(train)(train.items[:4])
    rows = _rows(yours=10.0, mobilenet_v3_small=(5.0, 5000), repvgg_a0=(20.0, 5000))
    rows[0]["params"] = 1000
    out = train_candidates(teacher, torch.randn(1, 1, 8, 8), rows, few, val, epochs=1)
    assert list(out) == ["mobilenet_v3_small"]  # only the faster one is trained
    res = out["mobilenet_v3_small"]
    assert res["teacher_top1"] > 80.0 and 0.0 <= res["top1"] <= 100.0 and res["p50_ms"] == 5.0
    assert res["model"](torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_cli_architecture(tmp_path, tinynet_spec):
    rec = tmp_path / "a.json"
    p = subprocess.run([sys.executable, "-m", "edgeopt", "architecture", "--model", tinynet_spec, "--input-shape",
                        "1,1,16,16", "--families", "mobilenet_v3_small", "--seconds", "1", "--record", str(rec)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    record = json.loads(rec.read_text())
    assert record["decision"]["technique"] == "architecture" and len(record["table"]) == 2
    assert "mobilenet_v3_small" in p.stdout and "ms" in p.stdout
    p = subprocess.run([sys.executable, "-m", "edgeopt", "architecture", "--model", tinynet_spec, "--input-shape",
                        "1,1,16,16", "--families", "resnet9000"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "unknown architecture family" in p.stderr


def _plan(context_kwargs, table, has_train_data=True):
    from edgeopt.config import ModelSummary, RunContext
    from edgeopt.decide.plan import plan
    from edgeopt.targets import detect_local

    local = detect_local()
    ctx = RunContext(target="local", goal="latency", techniques=["architecture", "quantize"], **context_kwargs)
    summary = ModelSummary(params=1000, macs=10**6, layers={"conv": 2}, prunable_groups=1, input_shape=[1, 1, 8, 8])
    return plan(ctx, local, summary, local, ["onnxruntime"], has_calib_data=True, has_train_data=has_train_data,
                architectures=table)


def test_planner_trains_faster_families_only_from_scratch_with_data():
    rows = _rows(yours=10.0, mobilenet_v3_small=(5.0, 5000), repvgg_a0=(20.0, 5000))
    rows.append({"name": "convnext_atto", "skipped": "convnext_atto: does not run at input (1, 1, 8, 8)"})
    p = _plan({"retrain": True, "from_scratch": True}, rows)
    arch = [c for c in p.candidates if c.structure.startswith("arch-")]
    assert {c.structure for c in arch} == {"arch-mobilenet_v3_small"}
    assert arch[0].steps[0].technique == "architecture" and arch[0].steps[0].family == "mobilenet_v3_small"
    d = next(d for d in p.decisions if d.technique == "architecture")
    assert d.decision == "applied" and "mobilenet_v3_small 5.000 ms" in d.reason and "yours 10.000 ms" in d.reason
    assert "convnext_atto not run at this input size" in d.reason
    # without --from-scratch: no candidate, but the decision still shows what switching would buy
    p = _plan({}, rows)
    assert not any(c.structure.startswith("arch-") for c in p.candidates)
    d = next(d for d in p.decisions if d.technique == "architecture")
    assert "needs training from scratch" in d.reason and "mobilenet_v3_small 5.000 ms" in d.reason
    # from scratch without training data, and with nothing faster
    assert "no training data" in next(d.reason for d in _plan({"retrain": True, "from_scratch": True}, rows,
                                                                   False).decisions if d.technique == "architecture")
    slow = _rows(yours=1.0, mobilenet_v3_small=(5.0, 5000))
    assert "no efficient family is faster" in next(
        d.reason for d in _plan({"retrain": True, "from_scratch": True}, slow).decisions
        if d.technique == "architecture")


def test_architecture_step_needs_training_data_and_a_classifier():
    from edgeopt.techniques import ArchitectureConfig
    from edgeopt.techniques.retraining.architecture import apply_architecture

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(3))
    x = torch.randn(1, 1, 8, 8)
    net(x)
    with pytest.raises(ConfigError, match="needs training data"):
        apply_architecture(net, x, ArchitectureConfig(family="mobilenet_v3_small"))
    seg = torch.nn.Conv2d(1, 3, 1)  # dense output: not a classifier
    with pytest.raises(ConfigError, match="replace classifiers"):
        apply_architecture(seg, x, ArchitectureConfig(family="mobilenet_v3_small"), train_data=[(x, torch.zeros(1))])


def test_optimize_from_scratch_measures_a_trained_efficient_family(tmp_path, monkeypatch):
    """optimize --from-scratch: the table is measured, the faster family is trained by distillation from the
    model and measured on the runtime beside the original (the table is pinned so the family is 'faster')."""
    from smallnet import trained

    import edgeopt.techniques.retraining.architecture as arch

    teacher, train, val = trained(size=8)

    def pinned(model, example, families=None, max_time_s=4.0, skipped=None):
        return _rows(yours=10.0, mobilenet_v3_small=(5.0, 10**6))

    monkeypatch.setattr(arch, "latency_table", pinned)
    report = edgeopt.optimize(teacher, torch.randn(1, 1, 8, 8), train_data=type(train)(train.items[:4]),
                              eval_data=val, calib_data=[b[0] for b in train.items[:2]], from_scratch=True,
                              techniques=["architecture"], runtimes=["onnxruntime"], epochs=1,
                              max_accuracy_drop=100.0, bench_time_s=0.2, out_dir=tmp_path / "out")
    cand = next(c for c in report.candidates if c.id.startswith("arch-mobilenet_v3_small"))
    assert cand.status == "ok" and cand.accuracy is not None and cand.latency_ms is not None
    assert any(s.params.get("family") == "mobilenet_v3_small" for s in cand.steps)
    d = next(d for d in report.decisions if d.technique == "architecture")
    assert d.decision == "applied" and "yours 10.000 ms" in d.reason
