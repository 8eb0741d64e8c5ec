"""Layer-level (depth) pruning and the efficient-architecture decision. Pure, like the rest of the decision
layer: the measurement decides what is kept."""

from __future__ import annotations

from edgeopt.decide import policy
from edgeopt.report import Decision
from edgeopt.techniques import TECHNIQUES, DepthConfig, FineTuneConfig, allowed


def depth_structures(context, target, summary, has_calib_data: bool, finetune: FineTuneConfig | None,
                     decisions: list[Decision]) -> list[tuple]:
    """On CPUs at batch 1 per-layer dispatch, not MACs, dominates small models: removing whole residual
    blocks can beat thinning every layer, so depth pruning is proposed there and measured like the rest."""
    if "depth_prune" not in TECHNIQUES or not allowed(context.techniques, "depth_prune"):
        decisions.append(Decision(technique="depth_prune", decision="skipped",
                                  reason="not registered or excluded by --techniques"))
        return []
    batch = summary.input_shape[0] if summary.input_shape else 1
    if target.kind != "cpu" or batch != 1 or context.goal != "latency":
        decisions.append(Decision(technique="depth_prune", decision="skipped",
                                  reason="proposed for CPU latency at batch 1 only, where per-layer dispatch "
                                         f"dominates (here: {target.kind}, batch {batch}, goal {context.goal})"))
        return []
    if not has_calib_data:
        decisions.append(Decision(technique="depth_prune", decision="skipped",
                                  reason="the cost of removing each residual block is measured on held-out "
                                         "data, and none was given"))
        return []
    out = []
    for blocks in policy.DEPTH_LEVELS:
        steps = [DepthConfig(blocks=blocks)]
        if finetune:
            steps.append(finetune.model_copy(deep=True))
        out.append((f"depth{blocks}" + ("-ft" if finetune else ""), steps,
                    f"layer-level pruning: the {blocks} cheapest residual block(s) removed (measured cost), "
                    "BN re-estimated" + (" + distillation fine-tuning" if finetune else ""), "depth_prune",
                    float(blocks)))
    decisions.append(Decision(
        technique="depth_prune", decision="applied",
        reason=f"{target.name} at batch 1: removing whole residual blocks ({', '.join(map(str, policy.DEPTH_LEVELS))}) "
               "saves per-layer dispatch; models without residual blocks come back unchanged with the reason"))
    return out


def architecture_decision(context, decisions: list[Decision]) -> None:
    """Switching to an efficient family needs training from scratch; its latency table is measured by
    `edgeopt architecture` (the planner itself measures nothing)."""
    how = "`edgeopt architecture` measures MobileNetV3/EfficientNet/RegNet/GhostNet/MobileOne/RepVGG/ConvNeXt-atto"
    if not context.from_scratch:
        decisions.append(Decision(technique="architecture", decision="skipped",
                                  reason=f"needs training from scratch (--from-scratch); {how} at this input "
                                         "size next to your model, so you see what switching would buy"))
    else:
        decisions.append(Decision(technique="architecture", decision="skipped",
                                  reason=f"not trained inside optimize: {how} and `edgeopt architecture "
                                         "--from-scratch` trains the most promising by distillation from your model"))
