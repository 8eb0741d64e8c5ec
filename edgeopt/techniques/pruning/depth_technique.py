"""The `depth_prune` technique: layer-level pruning, declared in one place — its config, its handler (the
implementation is pruning/depth.py, imported on use) and its proposer. On CPUs at batch 1 per-layer dispatch,
not MACs, dominates small models: removing whole residual blocks can beat thinning every layer, so depth
pruning is proposed there and measured like the rest; at a served batch that overhead is shared by the batch
(decide/serving.py)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

import edgeopt.decide.policy as policy
from edgeopt.decide.serving import Serving, depth_pruning
from edgeopt.report import Decision
from edgeopt.techniques.declare import TechniqueConfig, proposer, technique
from edgeopt.techniques.planning import PlanningContext, Proposal, Structure, skip, then_finetune


class DepthConfig(TechniqueConfig):
    technique: Literal["depth_prune"] = "depth_prune"
    blocks: int = Field(1, ge=1)  # residual blocks removed (the cheapest by measured cost)
    epochs: int = Field(0, ge=0)  # fine-tuning from the original when training data is given
    lr: float = Field(0.01, gt=0.0)
    bn_batches: int = Field(20, ge=1)
    resolve: bool = True  # the layers after the removed blocks re-solved to the original's outputs, where it helps


@technique("depth_prune", config=DepthConfig, needs_data=True, needs_retraining=False, shrinks=True,
           summary="layer-level pruning: remove the residual blocks whose measured removal costs least",
           aliases=("depth", "layer_pruning", "block_pruning"))
def apply(model, example, config: DepthConfig, data=None, teacher=None, train_data=None, progress=None):
    from edgeopt.techniques.pruning.depth import apply_depth

    return apply_depth(model, example, config, data=data, teacher=teacher, train_data=train_data,
                       progress=progress)


# right after the channel-pruning families that reach furthest (reconstruction, the latency table) and before the
# criteria screen: another technique settled early gives stacking (engine/stacking.py) its second family while
# the time budget still allows it
@proposer("depth_prune", order=8)
def propose(ctx: PlanningContext) -> Proposal:
    target, summary, context, finetune = ctx.target, ctx.summary, ctx.context, ctx.finetune
    if not ctx.allowed("depth_prune"):
        return skip("depth_prune", "not registered or excluded by --techniques")
    serving = Serving.of(context)
    pays, why = depth_pruning(serving, target.kind, summary.input_shape[0] if summary.input_shape else 1)
    if not pays:
        return skip("depth_prune", why)
    if not ctx.has_calib_data:
        return skip("depth_prune", "the cost of removing each residual block is measured on held-out data, and "
                                   "none was given")
    levels = policy.depth_levels(summary.residual_blocks)
    if not levels:
        return skip("depth_prune", "the model has no residual block (an f(x) + x of unchanged shape): removing a "
                                   "plain layer would break the network")
    # in a transformer, thinning the Linear layers inside its blocks barely shortens a batch-1 call (DeiT-tiny
    # at 96 px, 10 % of its widths cut: 2.70 against 2.71 ms at OpenVINO INT8) while each block removed takes a
    # whole share of the work and its dispatch, so its blocks are tried before the channel criteria
    early = summary.layers.get("attention", 0) > 0
    out = []
    # with retraining, the removal alone (5-36 s a level) is searched first, and the fine-tuned levels (85-320 s)
    # are built on it, beyond the level it holds (engine/fine_tuned.py): where fine-tuning cannot fit the time
    # left, the search still has what removal alone holds (YOLOv8n with --retrain at 300 s had shipped its
    # original, its one fine-tuned build forecast at 101 s with 85 s left; without retraining: depth3)
    for tuned, suffix in ((None, ""), (finetune, "-ft")) if finetune else ((None, ""),):
        for blocks in levels:
            out.append(Structure(f"depth{blocks}{suffix}", then_finetune([DepthConfig(blocks=blocks)], tuned),
                                 f"layer-level pruning: the {blocks} cheapest residual block(s) removed (measured "
                                 "cost), BN re-estimated, later layers re-solved where it helps"
                                 + (" + distillation fine-tuning" if tuned else ""), "depth_prune" + suffix,
                                 float(blocks), early=early or (bool(finetune) and not tuned)))
    return Proposal(out, [Decision(
        technique="depth_prune", decision="applied",
        reason=f"{target.name}: {why} (removing {', '.join(map(str, levels))} of "
               f"{summary.residual_blocks if summary.residual_blocks is not None else 'the'} residual blocks)"
               + ("; tried before channel pruning: in a transformer whole blocks save more than thinner layers"
                  if early else "")
               + ("; the removal alone is searched first, and only the levels beyond the one it holds are "
                  "fine-tuned" if finetune else ""))])
