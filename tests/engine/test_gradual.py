"""Climbing a fine-tuned family gradually (engine/gradual.py): the next level cut from the level held, with the
exact layout the level has from the original (real Torch-Pruning), and the search's use of it (fake builder)."""

from types import SimpleNamespace

import torch
import torchvision
from test_search import TwinBuilder, _by_id, _plan, _plan_with_fine_tuned_twins, _search
from torch import nn

from edgeopt.decide.plan import CandidateSpec
from edgeopt.engine.build import Builder
from edgeopt.engine.gradual import TWIN_REASON, climbs, increment, target_widths
from edgeopt.techniques import FineTuneConfig, PruneConfig, apply_step
from edgeopt.techniques.pruning.depth_technique import DepthConfig
from edgeopt.techniques.pruning.prune import channel_table, prune


def _spec(name, *steps):
    return [CandidateSpec(id=f"{name}@onnx-fp32", structure=name, format="onnx", steps=list(steps))]


def test_a_channel_increment_reaches_the_layout_the_level_has_from_the_original():
    """resnet18 (residual groups coupled across blocks) cut 30 % and fine-tuned is the level held; the increment
    to 50 % gives every layer the width a 50 % cut of the original gives it, whatever criterion picks them."""
    torch.manual_seed(0)
    net, example = torchvision.models.resnet18(num_classes=10).eval(), torch.randn(1, 3, 64, 64)
    held, _ = prune(net, example, ratio=0.3, importance="l2", round_to=16)
    direct, _ = prune(net, example, ratio=0.5, importance="fpgm", round_to=16)
    tune = FineTuneConfig(epochs=1)
    specs = {"p30-ft": _spec("p30-ft", PruneConfig(ratio=0.3, round_to=16), tune),
             "p50-ft": _spec("p50-ft", PruneConfig(ratio=0.5, round_to=16), tune)}
    ready = {"p30-ft": SimpleNamespace(model=held)}
    dry = SimpleNamespace(net=net, example=example)
    search = SimpleNamespace(ledger=SimpleNamespace(specs=specs), reaches={}, base_of={},
                             builds=SimpleNamespace(ready=ready.get),
                             builder=SimpleNamespace(cut_widths=lambda cut: Builder.cut_widths(dry, cut)))
    widths = target_widths(search, "p50-ft")  # a dry run of the 50 % cut
    assert widths == channel_table(direct)
    inc = increment(search, "p30-ft", "p50-ft", widths)
    assert inc.ratio == 0.0 and inc.layer_ratios
    stepped, _ = apply_step(held, example, inc)
    assert channel_table(stepped) == channel_table(direct)
    assert channel_table(net)["layer4.1.conv1"] == 512 and channel_table(stepped)["layer4.1.conv1"] == 256
    with torch.no_grad():
        assert stepped(example).shape == (1, 10)
    # a level no deeper than the one held has no increment
    try:
        increment(search, "p30-ft", "p30-ft", channel_table(held))
        raise AssertionError("expected a ValueError")
    except ValueError as e:
        assert "no more channels" in str(e)


def _climb_search(net, example, low: float, high: float, held):
    tune = FineTuneConfig(epochs=1)
    specs = {"lo": _spec("lo", PruneConfig(ratio=low, round_to=16), tune),
             "hi": _spec("hi", PruneConfig(ratio=high, round_to=16), tune)}
    dry = SimpleNamespace(net=net, example=example)
    return SimpleNamespace(ledger=SimpleNamespace(specs=specs), reaches={}, base_of={},
                           builds=SimpleNamespace(ready={"lo": SimpleNamespace(model=held)}.get),
                           builder=SimpleNamespace(cut_widths=lambda cut: Builder.cut_widths(dry, cut)))


def test_a_channel_increment_removes_whole_heads_to_the_levels_layout():
    """A DeiT-tiny-shaped ViT (3 heads of 64): a cut removes floor(ratio x heads) heads, so 30 % keeps 3 and 40 %
    keeps 2. The increment from 30 % to 40 % asked the fused qkv for 1 - 384.5 / 576 of its channels (a channel
    layer's rounding), 0.997 of a head, and no head went: the climb fell back to bisecting from the original."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    net = VisionTransformer(img_size=32, patch_size=8, embed_dim=192, depth=2, num_heads=3, num_classes=10).eval()
    example = torch.randn(1, 3, 32, 32)
    for low, high in ((0.3, 0.4), (0.6, 0.7)):
        held, _ = prune(net, example, ratio=low, importance="l2", round_to=16)
        direct, _ = prune(net, example, ratio=high, importance="l2", round_to=16)
        search = _climb_search(net, example, low, high, held)
        stepped, _ = apply_step(held, example, increment(search, "lo", "hi", target_widths(search, "hi")))
        assert channel_table(stepped) == channel_table(direct), (low, high)
        assert [b.attn.num_heads for b in stepped.blocks] == [b.attn.num_heads for b in direct.blocks]
        assert [b.attn.num_heads for b in held.blocks] != [b.attn.num_heads for b in direct.blocks]
        with torch.no_grad():
            assert stepped(example).shape == (1, 10)


def test_a_depth_increment_removes_the_blocks_between_the_levels():
    specs = {"depth2-ft": _spec("depth2-ft", DepthConfig(blocks=2), FineTuneConfig(epochs=1)),
             "depth4-ft": _spec("depth4-ft", DepthConfig(blocks=4, resolve=False), FineTuneConfig(epochs=1))}
    search = SimpleNamespace(ledger=SimpleNamespace(specs=specs), reaches={})
    inc = increment(search, "depth2-ft", "depth4-ft", None)
    assert inc.technique == "depth_prune" and inc.blocks == 2 and inc.resolve is False
    assert climbs(specs["depth4-ft"][0]) and climbs(_spec("d", DepthConfig(blocks=2))[0])  # fine-tuned or not
    # a per-layer or global cut's widths do not follow from its ratio, and a stacked level has two techniques
    assert not climbs(_spec("g", PruneConfig(ratio=0.5, scope="global"), FineTuneConfig(epochs=1))[0])
    assert not climbs(_spec("s", DepthConfig(blocks=2), PruneConfig(ratio=0.5))[0])


def _climb(search, fam: str):
    """The `gradual` decision of the family's climb."""
    return next(d for d in search.decisions if d.technique == "gradual" and d.reason.startswith(f"{fam} climbed"))


class LayoutBuilder(TwinBuilder):
    """A model of one layer whose width follows the steps: a cut at ratio r of the original keeps 100 (1 - r)
    channels, an increment's per-layer ratio q keeps int(width (1 - q)) of the model it starts from."""

    def build(self, start, spec):
        b = super().build(start, spec)
        width = start.out_features if hasattr(start, "structure") else 100
        for st in spec.steps:
            if st.technique == "prune":
                width = int(width * (1 - st.layer_ratios[""])) if st.layer_ratios else round(100 * (1 - st.ratio))
        b.model = nn.Linear(4, width)
        b.model.structure, b.macs = spec.structure, 10 * width  # fewer channels, fewer MACs
        return b

    def cut_widths(self, cut):
        return {"": round(100 * (1 - cut.ratio))}


# no level of prune holds without fine-tuning; the fine-tuned family, probed from its mildest level, holds
# prune-ft60 (prune-ft70 from the original would miss)
_DROPS = {"prune10": 1.5, "prune20": 2.0, "prune30": 2.5, "prune40": 3.0, "prune50": 3.5, "prune60": 4.0,
          "prune-ft60": 0.5, "prune-ft70": 2.0, "prune-ft80": 4.0}


def test_the_next_level_is_cut_from_the_level_held_and_trained_on_by_its_measured_recovery(tmp_path):
    """prune-ft70 rebuilt from the original would miss (2.0 pp); cut from prune-ft60 it loses 1.5 pp before
    fine-tuning and 1.2 after: its recovery (0.3 pp a block) closes the 0.2 pp gap, so it is trained on, and
    the block within the budget is finished. The near miss from the original is not trained on."""
    g = "prune-ft70-from-prune-ft60"
    builder = LayoutBuilder(tmp_path, {**_DROPS, f"{g}-cut": 1.5, g: 1.2, f"{g}-2ep": 0.7})
    search = _search(tmp_path, builder, plan=_plan_with_fine_tuned_twins((0.6, 0.7)))
    c = _by_id(search.run())
    assert search.settled["prune-ft"] == "prune-ft60"
    assert builder.started_from[f"{g}-cut"] == "prune-ft60" and builder.started_from[g] == f"{g}-cut"
    assert search.builds.ready(f"{g}-cut").model.out_features == 30  # prune-ft70's layout, from 40 channels
    assert c[f"{g}-2ep@onnx-fp32"].status == "ok"
    assert c[f"{g}-cut@onnx-fp32"].status == "rejected" and TWIN_REASON in c[f"{g}-cut@onnx-fp32"].reason
    assert "prune-ft70-2ep" not in builder.builds
    # probed first, prune-ft60 held: the level beyond it is not rebuilt from the original
    assert "prune-ft70" not in builder.builds and "is climbed from prune-ft60" in c["prune-ft70@onnx-fp32"].reason
    d = _climb(search, "prune-ft")
    assert d.decision == "applied" and f"{g}: 1.50 pp cut, 1.20 pp fine-tuned" in d.reason
    assert d.reason.endswith("stopped at prune-ft70-from-prune-ft60-2ep: no level beyond it")
    assert search.reaches[f"{g}-2ep"] == "prune-ft70"


def test_a_level_cut_from_the_level_held_that_holds_is_finished_and_the_climb_goes_on(tmp_path):
    """prune-ft70 cut from prune-ft60 holds (0.8 pp): finished, and prune-ft80 (never built: its widths from a dry
    run) is cut from it; it misses by more than its recovery can close, and the climb stops there."""
    g70, g80 = "prune-ft70-from-prune-ft60", "prune-ft80-from-prune-ft70"
    drops = {**_DROPS, f"{g70}-cut": 1.1, g70: 0.8, f"{g80}-cut": 2.5, g80: 2.3}
    builder = LayoutBuilder(tmp_path, drops)
    search = _search(tmp_path, builder, plan=_plan_with_fine_tuned_twins((0.6, 0.7, 0.8)))
    c = _by_id(search.run())
    assert c[f"{g70}@onnx-fp32"].status == "ok"
    assert "prune-ft80" not in builder.builds and builder.started_from[f"{g80}-cut"] == g70
    assert search.builds.ready(f"{g80}-cut").model.out_features == 20
    assert "PyTorch accuracy drop 2.30 pp" in c[f"{g80}@onnx-fp32"].reason
    d = _climb(search, "prune-ft")
    assert d.decision == "applied" and f"stopped at {g70}: {g80} missed the budget" in d.reason
    t = next(d for d in search.decisions if d.technique == "train_longer")
    assert t.decision == "skipped" and "would not close it" in t.reason


def test_where_the_increment_cannot_reach_the_levels_layout_the_family_is_bisected_as_planned(tmp_path):
    """A level whose widths the level held cannot reach (here a cut wider than prune-ft60 in some layer) is not
    climbed to: the family's levels are bisected as planned (prune-ft70 from the original misses) and its near
    miss is trained on from its own build, as without climbing."""

    class Wider(LayoutBuilder):
        def cut_widths(self, cut):
            return {"": 99}

    builder = Wider(tmp_path, {**_DROPS, "prune-ft70-2ep": 0.9})
    search = _search(tmp_path, builder, plan=_plan_with_fine_tuned_twins((0.6, 0.7)))
    c = _by_id(search.run())
    assert search.settled["prune-ft"] == "prune-ft60" and builder.started_from["prune-ft70"] == "original"
    assert c["prune-ft70-2ep@onnx-fp32"].status == "ok"
    d = _climb(search, "prune-ft")
    assert d.decision == "skipped" and "could not be worked out (prune-ft60 is narrower than prune-ft70" in d.reason


def test_a_cut_that_holds_without_fine_tuning_is_finished_where_its_fine_tuning_cannot_run(tmp_path):
    """prune-ft70 cut from prune-ft60 loses only 0.6 pp and its fine-tuning does not fit the time left: the cut
    itself is finished, and the climb goes on from it (prune-ft80 cut from the cut, then fine-tuned, holds)."""
    from edgeopt.errors import WontFitError

    g70, g80 = "prune-ft70-from-prune-ft60", "prune-ft80-from-prune-ft70"
    drops = {**_DROPS, f"{g70}-cut": 0.6, f"{g80}-cut": 1.4, g80: 0.9}
    wont = WontFitError("fine-tuning would take about 50 s, 40 s of the search's share left", 50.0)
    builder = LayoutBuilder(tmp_path, drops, errors={g70: wont})
    search = _search(tmp_path, builder, plan=_plan_with_fine_tuned_twins((0.6, 0.7, 0.8)))
    c = _by_id(search.run())
    assert c[f"{g70}-cut@onnx-fp32"].status == "ok"
    assert c[f"{g70}@onnx-fp32"].status == "rejected" and "fine-tuning would take" in c[f"{g70}@onnx-fp32"].reason
    assert builder.started_from[f"{g80}-cut"] == f"{g70}-cut" and c[f"{g80}@onnx-fp32"].status == "ok"
    assert c[f"{g80}-cut@onnx-fp32"].status == "rejected"
    d = _climb(search, "prune-ft")
    assert f"{g70}-cut: 0.60 pp, within the budget without fine-tuning" in d.reason
    assert d.reason.endswith(f"stopped at {g80}: no level beyond it")


def test_a_family_without_fine_tuning_climbs_by_cuts_alone(tmp_path):
    """prune (no retraining) settles at 40 % (50 % from the original loses 1.5 pp); cut from prune40, 50 % loses
    0.8 pp and is finished; 60 % cut from that loses 1.3 pp: the climb stops there."""
    drops = {"prune10": 0.1, "prune20": 0.2, "prune30": 0.4, "prune40": 0.7, "prune50": 1.5, "prune60": 3.0,
             "prune50-from-prune40": 0.8, "prune60-from-prune50": 1.3}
    builder = LayoutBuilder(tmp_path, drops)
    search = _search(tmp_path, builder, plan=_plan())
    c = _by_id(search.run())
    assert search.settled["prune"] == "prune40"
    assert builder.started_from["prune50-from-prune40"] == "prune40"
    assert builder.started_from["prune60-from-prune50"] == "prune50-from-prune40"
    assert search.builds.ready("prune60-from-prune50").model.out_features == 40
    assert c["prune50-from-prune40@onnx-fp32"].status == "ok"
    assert "PyTorch accuracy drop 1.30 pp" in c["prune60-from-prune50@onnx-fp32"].reason
    assert not [b for b in builder.builds if b.endswith("-cut")]  # no fine-tuning: the cut is the level
    d = _climb(search, "prune")
    assert d.decision == "applied" and "prune50-from-prune40: 0.80 pp; prune60-from-prune50: 1.30 pp" in d.reason


def test_a_fine_tuned_family_climbs_from_the_level_another_family_holds(tmp_path):
    """prune holds 50 % without fine-tuning (its 60 % cut from it misses): the fine-tuned family does not rebuild
    its mildest level beyond it from the original but cuts it from prune50 and fine-tunes it, then climbs on."""
    drops = {"prune10": 0.1, "prune20": 0.2, "prune30": 0.4, "prune40": 0.6, "prune50": 0.9, "prune60": 3.0,
             "prune60-from-prune50": 2.0, "prune-ft60-from-prune50-cut": 2.0, "prune-ft60-from-prune50": 0.6,
             "prune-ft70-from-prune-ft60-cut": 1.8, "prune-ft70-from-prune-ft60": 1.4}
    builder = LayoutBuilder(tmp_path, drops)
    search = _search(tmp_path, builder, plan=_plan_with_fine_tuned_twins((0.6, 0.7)))
    c = _by_id(search.run())
    assert not [b for b in builder.builds if b in ("prune-ft60", "prune-ft70")]  # nothing rebuilt from the original
    assert builder.started_from["prune-ft60-from-prune50-cut"] == "prune50"
    assert search.builds.ready("prune-ft60-from-prune50").model.out_features == 40
    assert c["prune-ft60-from-prune50@onnx-fp32"].status == "ok"
    assert builder.started_from["prune-ft70-from-prune-ft60-cut"] == "prune-ft60-from-prune50"
    assert "is climbed from prune50" in c["prune-ft60@onnx-fp32"].reason
    d = _climb(search, "prune-ft")
    assert d.reason.startswith("prune-ft climbed from prune50") and d.decision == "applied"
