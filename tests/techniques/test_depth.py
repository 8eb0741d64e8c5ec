"""Layer-level (depth) pruning: residual blocks found by tracing, removed by measured cost."""

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import edgeopt
from edgeopt.errors import PruningError
from edgeopt.techniques import TECHNIQUES
from edgeopt.techniques.pruning.depth import residual_blocks


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + x)


class Plain(nn.Module):
    """Same shape in and out, but no skip: removing it is not a depth-pruning move."""

    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))


class ResNetish(nn.Module):
    def __init__(self, width=16, blocks=3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.blocks = nn.Sequential(*[Block(width) for _ in range(blocks)])
        self.plain = Plain(width)
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        return self.fc(self.plain(self.blocks(self.stem(x))).mean((2, 3)))


@pytest.fixture(scope="module")
def trained():
    from smallnet import digits16

    from edgeopt.training import fit

    train, val = digits16(size=8)
    torch.manual_seed(0)
    model = ResNetish()
    fit(model, train, epochs=3, lr=0.05)
    return model.eval(), train, val


def test_finds_residual_blocks_only():
    import torchvision

    model = ResNetish().eval()
    assert residual_blocks(model, torch.randn(1, 1, 8, 8)) == ["blocks.0", "blocks.1", "blocks.2"]
    r18 = torchvision.models.resnet18(num_classes=10).eval()
    found = residual_blocks(r18, torch.randn(1, 3, 32, 32))
    # the first block of each later stage changes the shape (downsample): not removable
    assert found == ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]


def test_transformer_and_convnext_blocks_are_removable_and_export(tmp_path):
    """A ViT block is `x + attn(x)` then `+ mlp(...)` (a chain of residual adds, with option placeholders); a
    ConvNeXt block adds an identity `shortcut(x)`. Both are replaced by their skip and the model still exports."""
    timm = pytest.importorskip("timm")
    import onnxruntime as ort

    vit = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=4,
                                                           num_heads=2, num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    assert residual_blocks(vit, x) == [f"blocks.{i}" for i in range(4)]
    convnext = timm.create_model("convnext_atto", num_classes=10).eval()
    found = residual_blocks(convnext, x)
    assert len(found) == 12 and all(".blocks." in n for n in found)  # the stages' downsamples are not blocks
    res = edgeopt.depth_prune(vit, x, [torch.randn(8, 3, 32, 32)], blocks=2)
    assert len(res.record["removed"]) == 2 and len(res.record["costs"]) == 4
    assert sum(isinstance(b, nn.Identity) for b in res.model.blocks) == 2
    out = edgeopt.export(res.model, x, format="onnx", out=tmp_path / "vit.onnx")
    got = ort.InferenceSession(str(out)).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, res.model(x).numpy(), atol=1e-4, rtol=1e-3)


def test_a_block_whose_skip_goes_through_a_transformation_is_not_removable():
    class Scaled(nn.Module):  # f(x) + 2x: removing it would not leave the identity
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return self.conv(x) + x * 2

    class Chained(nn.Module):  # (f(x) + g(x)) + h(...): no term is x itself
        def __init__(self):
            super().__init__()
            self.f, self.g = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)

        def forward(self, x):
            y = self.f(x) + self.g(x)
            return y + self.f(y)

    x = torch.randn(1, 4, 8, 8)
    assert residual_blocks(nn.Sequential(Scaled(), Chained()), x) == []


def test_depth_levels_follow_the_blocks_the_model_has():
    from edgeopt.decide.policy import DEPTH_LEVELS, depth_levels

    assert depth_levels(12) == (1, 2, 3, 4, 6) and depth_levels(5) == (1, 2) and depth_levels(1) == (1,)
    assert depth_levels(0) == () and depth_levels(None) == DEPTH_LEVELS


def test_removes_the_cheapest_block_by_measured_drop(trained):
    model, train, val = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = edgeopt.depth_prune(model, torch.randn(1, 1, 8, 8), val, blocks=1)
    small, rec = res.model, res.record
    assert rec["criterion"] == "accuracy_drop" and set(rec["costs"]) == {"blocks.0", "blocks.1", "blocks.2"}
    assert rec["removed"] == [min(rec["costs"], key=rec["costs"].get)]
    removed = rec["removed"][0]
    assert isinstance(small.get_submodule(removed), nn.Identity)
    assert sum(isinstance(b, Block) for b in small.blocks) == 2
    assert rec["bn_recalibrated"] > 0 and rec["accuracy_after"] <= 100.0
    for k, v in model.state_dict().items():  # the input model is untouched
        assert torch.equal(v, before[k])


def test_proxy_without_labels_and_fine_tuning(trained):
    model, train, val = trained
    inputs = [x for x, _ in val.items]
    # fine-tuning from the plain removal (a re-solved start wants a smaller rate: test_later_layers_...)
    res = edgeopt.depth_prune(model, torch.randn(1, 1, 8, 8), inputs, blocks=2, train_data=train, epochs=1,
                              resolve=False)
    small, rec = res.model, res.record
    assert rec["criterion"] == "output_kl" and len(rec["removed"]) == 2
    assert all(c >= 0 for c in rec["costs"].values())  # KL from the original is never negative
    assert rec["fine_tuned"]["epochs"] == 1
    from edgeopt.training import top1

    assert top1(small, val) > 50.0  # two of three blocks gone, still far above chance (10%) after 1 epoch


def test_later_layers_are_resolved_where_it_helps(trained):
    """Two of three blocks removed: the layers after them refitted to the original's outputs recover most of
    what the removal lost; the re-solve is checked on a batch it was not fitted on."""
    model, _, val = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = edgeopt.depth_prune(model, torch.randn(1, 1, 8, 8), val, blocks=2, resolve=False)
    solved = edgeopt.depth_prune(model, torch.randn(1, 1, 8, 8), val, blocks=2)
    assert "resolved" not in plain.record and plain.record["removed"] == solved.record["removed"]
    got = solved.record["resolved"]
    assert got["kept"] and got["layers"] >= 1 and got["checked_on_batches"] >= 1
    assert got["gap_after"] < got["gap_before"]
    assert solved.record["accuracy_after"] > plain.record["accuracy_after"] + 20  # 87.5 against 19.2 % here
    for k, v in model.state_dict().items():  # the input model is untouched
        assert torch.equal(v, before[k])


def test_a_resolve_that_does_not_bring_the_outputs_closer_is_not_kept(trained, monkeypatch):
    from edgeopt.techniques.pruning import depth

    model, _, val = trained
    monkeypatch.setattr(depth, "RESOLVE_MIN_GAIN", 0.9999)  # asks for outputs all but identical to the original's
    plain = edgeopt.depth_prune(model, torch.randn(1, 1, 8, 8), val, blocks=2, resolve=False)
    res = edgeopt.depth_prune(model, torch.randn(1, 1, 8, 8), val, blocks=2)
    got = res.record["resolved"]
    assert not got["kept"] and "not 99.99 % closer" in got["reason"] and got["gap_after"] < got["gap_before"]
    for k, v in plain.model.state_dict().items():  # the model as the plain removal left it
        assert torch.equal(v, res.model.state_dict()[k])
    one = edgeopt.depth_prune(model, torch.randn(1, 1, 8, 8), val.items[:1], blocks=2)
    assert not one.record["resolved"]["kept"] and "one calibration batch" in one.record["resolved"]["reason"]


def test_an_output_gap_is_measured_on_the_first_few_batches_only(trained, monkeypatch):
    """Each block's gap is a full evaluation per block: measured on GAP_SAMPLES, not on every held-out batch."""
    from edgeopt.techniques.pruning import depth

    model, _, val = trained
    inputs = [x for x, _ in val.items]
    assert sum(len(x) for x in inputs) > depth.GAP_SAMPLES
    seen = []
    real = depth._cost

    def counted(m, reference, items, labelled):
        seen.append(sum(len(x) for x, _ in items))
        return real(m, reference, items, labelled)

    monkeypatch.setattr(depth, "_cost", counted)
    monkeypatch.setattr(depth, "_COSTS", depth.LastMeasurement())
    res = edgeopt.depth_prune(model, torch.randn(1, 1, 8, 8), inputs, blocks=1)
    assert res.record["criterion"] == "output_kl" and len(seen) == 4  # the model, then each of its 3 blocks
    assert all(depth.GAP_SAMPLES <= n < depth.GAP_SAMPLES + len(inputs[0]) for n in seen)
    assert res.record["bn_recalibrated"] > 0
    seen.clear()  # labelled: a count of correct answers keeps every sample
    monkeypatch.setattr(depth, "_COSTS", depth.LastMeasurement())
    edgeopt.depth_prune(model, torch.randn(1, 1, 8, 8), val, blocks=1)
    assert seen and all(n == sum(len(x) for x in inputs) for n in seen)


def test_no_residual_blocks_is_skipped_with_reason():
    from smallnet import make

    model = make().eval()
    res = edgeopt.depth_prune(model, torch.randn(1, 1, 8, 8), [torch.randn(4, 1, 8, 8)])
    small, rec = res.model, res.record
    assert rec["removed"] == [] and rec["blocks_found"] == []
    assert "no residual blocks" in rec["skipped"][0]
    x = torch.randn(2, 1, 8, 8)
    np.testing.assert_allclose(small(x).detach().numpy(), model(x).detach().numpy(), atol=1e-6)


def test_bad_input():
    model = ResNetish().eval()
    with pytest.raises(PruningError, match="held-out inputs"):
        edgeopt.depth_prune(model, torch.randn(1, 1, 8, 8), [])
    with pytest.raises(PruningError, match="at least one block"):
        edgeopt.depth_prune(model, torch.randn(1, 1, 8, 8), [torch.randn(2, 1, 8, 8)], blocks=0)
    rec = edgeopt.depth_prune(model, torch.randn(1, 1, 8, 8), [torch.randn(2, 1, 8, 8)], blocks=9).record
    assert len(rec["removed"]) == 3 and "only 3 removable" in rec["skipped"][0]
    from edgeopt.errors import ConfigError

    with pytest.raises(ConfigError, match="blocks"):
        TECHNIQUES.get("depth").make_config({"blocks": 0})


def test_cli_depth(tmp_path):
    rec = tmp_path / "d.json"
    spec = f"{__file__}:ResNetish"
    p = subprocess.run([sys.executable, "-m", "edgeopt", "depth", "--model", spec, "--input-shape", "1,1,8,8",
                        "--blocks", "2", "--out", str(tmp_path / "d.onnx"), "--record", str(rec)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    record = json.loads(rec.read_text())
    assert len(record["removed"]) == 2 and record["criterion"] == "output_kl"  # random inputs: no labels
    assert (tmp_path / "d.onnx").exists() and "removed 2 of 3" in p.stdout
    assert "kept" in record["resolved"] and "re-solved" in p.stdout  # said either way: kept, or why not
    p = subprocess.run([sys.executable, "-m", "edgeopt", "depth", "--model", spec, "--input-shape", "1,1,8,8",
                        "--blocks", "1", "--no-resolve", "--out", str(tmp_path / "d.onnx"), "--record", str(rec)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "resolved" not in json.loads(rec.read_text()) and "re-solved" not in p.stdout
    p = subprocess.run([sys.executable, "-m", "edgeopt", "depth", "--model", spec, "--input-shape", "1,1,8,8",
                        "--blocks", "0"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "at least one block" in p.stderr


def test_planner_proposes_depth_on_cpu_batch1_and_says_why_elsewhere():
    from edgeopt.config import ModelSummary, make_context
    from edgeopt.decide.plan import plan
    from edgeopt.targets import load_target

    local = load_target("x86-avx2").model_copy(update={"detected": False})

    def run(target, shape=(1, 3, 64, 64), calib=True, residual_blocks=None, layers=None, **ctx):
        summary = ModelSummary(params=10**6, macs=10**8, input_shape=list(shape), num_outputs=10,
                               prunable_groups=4, min_channels=64, layers=layers or {"conv": 8, "linear": 1},
                               residual_blocks=residual_blocks)
        p = plan(make_context(target=target, **ctx), load_target(target), summary, local, ["onnxruntime"],
                 has_calib_data=calib)
        return p, {d.technique: d for d in p.decisions}

    p, by = run("x86-avx2")
    depth = [c for c in p.candidates if c.family == "depth_prune"]
    assert depth and {c.level for c in depth} == {1.0, 2.0}
    assert depth[0].steps[0].technique == "depth_prune" and by["depth_prune"].decision == "applied"
    assert by["architecture"].decision == "skipped" and "needs training from scratch" in by["architecture"].reason
    _, by = run("x86-avx2", shape=(8, 3, 64, 64))
    assert by["depth_prune"].decision == "skipped" and "batch 8" in by["depth_prune"].reason
    _, by = run("x86-avx2", calib=False)
    assert by["depth_prune"].decision == "skipped" and "held-out data" in by["depth_prune"].reason
    p, by = run("x86-avx2", techniques=["prune"])
    assert not any(c.family == "depth_prune" for c in p.candidates) and by["depth_prune"].decision == "skipped"
    p, by = run("x86-avx2", residual_blocks=12)  # a transformer's 12 blocks: the ladder up to half of them
    assert sorted({c.level for c in p.candidates if c.family == "depth_prune"}) == [1.0, 2.0, 3.0, 4.0, 6.0]
    assert "of 12 residual blocks" in by["depth_prune"].reason
    p, by = run("x86-avx2", residual_blocks=0)
    assert not any(c.family == "depth_prune" for c in p.candidates)
    assert by["depth_prune"].decision == "skipped" and "no residual block" in by["depth_prune"].reason


def test_a_transformers_blocks_are_searched_before_its_channels():
    """The search takes families in the plan's order and a time budget can end it early: DeiT-tiny's blocks
    were never tried under --retrain at 300 s, the channel criteria used the time. A model with attention
    gets its depth family first; a CNN keeps the channel families first."""
    from edgeopt.config import ModelSummary, make_context
    from edgeopt.decide.plan import plan
    from edgeopt.targets import load_target

    local = load_target("x86-avx2").model_copy(update={"detected": False})

    def families(layers, retrain=False):
        summary = ModelSummary(params=10**6, macs=10**8, input_shape=[1, 3, 96, 96], num_outputs=10,
                               prunable_groups=4, min_channels=64, layers=layers, residual_blocks=12)
        p = plan(make_context(target="x86-avx2", retrain=retrain), load_target("x86-avx2"), summary, local,
                 ["onnxruntime"], has_calib_data=True, has_train_data=retrain)
        order = list(dict.fromkeys(c.family for c in p.candidates if c.family))
        return order, {d.technique: d for d in p.decisions}

    order, by = families({"conv": 1, "linear": 48, "attention": 12})
    assert order[0] == "depth_prune" and len(order) > 1
    assert "tried before channel pruning" in by["depth_prune"].reason
    order, by = families({"conv": 20, "linear": 1})
    assert order[0] != "depth_prune" and "depth_prune" in order
    assert "tried before" not in by["depth_prune"].reason
    # with retraining, the reconstruction alone comes first even so: it is the floor retraining must not end
    # below (DeiT-tiny's three fine-tuned depth builds took its 300 s and it never started)
    order, _ = families({"conv": 1, "linear": 48, "attention": 12}, retrain=True)
    assert order[:3] == ["prune-recon", "depth_prune", "depth_prune-ft"] and order.index("prune-recon-ft") > 2
    # a CNN too: the removal alone before any fine-tuned family (YOLOv8n's one fine-tuned build did not fit its
    # 300 s and it shipped its original, where without retraining it had removed three blocks)
    order, by = families({"conv": 20, "linear": 1}, retrain=True)
    assert order[:2] == ["prune-recon", "depth_prune"] and order.index("depth_prune-ft") > order.index("prune-recon-ft")
    assert "removal alone is searched first" in by["depth_prune"].reason


def test_fine_tuned_depth_levels_are_built_on_the_removal_alone():
    """depth<k>-ft is depth<k> then fine-tuning: its twin, so the search builds it on that level and
    bisects only the levels beyond the one the removal alone holds."""
    from edgeopt.config import ModelSummary, make_context
    from edgeopt.decide.plan import plan
    from edgeopt.engine.fine_tuned import fine_tuned
    from edgeopt.targets import load_target

    summary = ModelSummary(params=10**6, macs=10**8, input_shape=[1, 3, 96, 96], num_outputs=10,
                           prunable_groups=4, min_channels=64, layers={"conv": 20, "linear": 1}, residual_blocks=8)
    p = plan(make_context(target="x86-avx2", retrain=True), load_target("x86-avx2"), summary,
             load_target("x86-avx2").model_copy(update={"detected": False}), ["onnxruntime"], has_calib_data=True,
             has_train_data=True)
    steps = {c.structure: c.steps for c in p.candidates}
    tuned = [s for s in steps if s.startswith("depth") and s.endswith("-ft")]
    assert tuned
    for s in tuned:
        assert fine_tuned(next(c for c in p.candidates if c.structure == s))
        assert steps[s][:-1] == steps[s.removesuffix("-ft")]


def test_block_costs_are_measured_once_for_every_level(trained, monkeypatch):
    """Each level of a search removes blocks of the same model, ranked on the same held-out batches: the
    costs are measured for the first level and reused (a Unet's ten blocks took 65 s per level)."""
    from edgeopt.techniques.pruning import depth

    model, _, val = trained
    calls = []
    cost = depth._cost
    monkeypatch.setattr(depth, "_cost", lambda *a: calls.append(1) or cost(*a))
    batches = list(val.items) if hasattr(val, "items") else list(val)
    one = edgeopt.depth_prune(model, torch.randn(1, 1, 8, 8), batches, blocks=1).record
    first = len(calls)
    two = edgeopt.depth_prune(model, torch.randn(1, 1, 8, 8), batches, blocks=2).record
    assert first >= 1 + len(one["blocks_found"]) and len(calls) - first <= 2  # the removed model's score only
    assert two["costs"] == one["costs"] and two["removed"][:1] == one["removed"]
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).mul_(0.5)
    edgeopt.depth_prune(other, torch.randn(1, 1, 8, 8), batches, blocks=1)  # other weights: measured again
    assert len(calls) - first > 2


def test_the_run_deadline_stops_a_level_between_blocks_and_between_solves(trained):
    """Inside a search with a time budget a depth level stops at its deadline, not after its whole length
    (the Unet's re-solve alone took 23 s): between two blocks' costs, and between two layer solves."""
    import time

    from edgeopt.errors import TimeBudgetError
    from edgeopt.timeout import run_until

    model, _, val = trained
    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).mul_(0.9)  # weights whose block costs are not measured yet
    x = torch.randn(1, 1, 8, 8)
    with run_until(time.perf_counter() - 1), pytest.raises(TimeBudgetError, match="each block's cost"):
        edgeopt.depth_prune(other, x, val, blocks=2)
    edgeopt.depth_prune(other, x, val, blocks=1, resolve=False)  # costs measured: the next level reuses them
    with run_until(time.perf_counter() - 1), pytest.raises(TimeBudgetError, match="re-solving layers"):
        edgeopt.depth_prune(other, x, val, blocks=2)
    with run_until(time.perf_counter() + 3600):
        assert edgeopt.depth_prune(other, x, val, blocks=2).record["resolved"]["solved"] >= 1


class BoxSets(nn.Module):
    """A residual backbone ending in torchvision's detector contract: one {"boxes", "labels", "scores"} per image,
    as many boxes as score over a threshold (a count that follows the weights)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(Block(8), Block(8), Block(8))
        self.head = nn.Conv2d(8, 1, 1)

    def forward(self, x):
        score = torch.sigmoid(self.head(self.blocks(torch.relu(self.stem(x))))).flatten(1)  # (n, h*w)
        out = []
        for row in score:
            keep = torch.nonzero(row > 0.5).flatten()
            xy = keep.float()
            out.append({"boxes": torch.stack([xy, xy, xy + 4, xy + 4], 1), "labels": torch.zeros_like(keep),
                        "scores": row[keep]})
        return out


def test_depth_pruning_ranks_the_blocks_of_a_detector_with_per_image_box_sets():
    """SSDlite's depth levels failed to build ("the size of tensor a (10) must match the size of tensor b (3)"):
    the output gap subtracted box sets of different lengths. Per-image box sets are compared by their box-level
    agreement; every block gets a cost and the cheapest goes."""
    torch.manual_seed(0)
    model = BoxSets().eval()
    with torch.no_grad():
        model.head.bias.fill_(0.2)  # about half the positions over the threshold: box counts differ by block
    x = torch.randn(1, 3, 8, 8)
    batches = [torch.randn(2, 3, 8, 8) for _ in range(2)]
    res = edgeopt.depth_prune(model, x, batches, blocks=1, resolve=False)
    small, record = res.model, res.record
    assert set(record["costs"]) == {"blocks.0", "blocks.1", "blocks.2"}
    assert all(0.0 - 1e-9 <= c <= 1.0 for c in record["costs"].values())
    assert len(record["removed"]) == 1 and isinstance(small(x), list)
