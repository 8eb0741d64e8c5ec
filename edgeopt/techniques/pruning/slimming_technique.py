"""The `slimming` technique: Network Slimming (Liu et al. 2017), declared in one place — its config, its handler
(the implementation is pruning/slimming.py, imported on use), its proposer and the report decision quoting
what sparsity training did to the BatchNorm scales.

With --retrain and training data it is its own family: L1 sparsity training of the BatchNorm scales, then
BN-scale pruning at the retraining ratios, then distillation fine-tuning; the search bisects it beside the other
pruning families, so whether slimming pays off on this model is measured, not assumed."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

import edgeopt.decide.policy as policy
from edgeopt.report import Decision
from edgeopt.techniques.declare import TechniqueConfig, listing, measured_choice, proposer, technique
from edgeopt.techniques.planning import PlanningContext, Proposal, Structure, skip

# Sparsity-training epochs of Network Slimming: as many as the fine-tuning that follows (ctx.epochs), at
# least SLIM_MIN_EPOCHS, since the L1 penalty needs steps to move the scales (the penalty strength is the
# SlimmingConfig default, chosen by measurement for short schedules).
SLIM_MIN_EPOCHS = 2


class SlimmingConfig(TechniqueConfig):
    """Network Slimming: `epochs` of training with `strength * sum|BN gamma|` added, then BN-scale pruning."""

    technique: Literal["slimming"] = "slimming"
    ratio: float = Field(0.3, ge=0.0, lt=1.0)
    epochs: int = Field(2, ge=1)
    # the paper's 1e-4 assumes ~160 epochs; over 2 fine-tuning epochs it leaves gammas where they were (measured on
    # a small CNN: mean |gamma| 1.095 -> 1.095), 0.1 shrinks them by 15% at <= 1.4 pp after distillation, 1.0 collapses
    # them (74% under 0.01)
    strength: float = Field(0.1, gt=0.0)
    lr: float = Field(0.01, gt=0.0)
    scope: Literal["local", "global"] = "global"
    round_to: int | None = Field(None, ge=1)
    max_layer_ratio: float = Field(0.9, gt=0.0, le=1.0)
    seed: int = 0


@technique("slimming", config=SlimmingConfig, needs_data=True, needs_retraining=True,
           summary="network slimming: L1 sparsity training of BatchNorm scales, then BN-scale channel pruning",
           aliases=("network_slimming",))
def apply(model, example, config: SlimmingConfig, data=None, teacher=None, train_data=None, progress=None):
    from edgeopt.techniques.pruning.slimming import apply_slimming

    return apply_slimming(model, example, config, data=data, teacher=teacher, train_data=train_data,
                          progress=progress)


@proposer("slimming", order=50)
def propose(ctx: PlanningContext) -> Proposal:
    tech, summary, finetune = "slimming", ctx.summary, ctx.finetune
    if not ctx.allowed(tech):
        return skip(tech, "excluded by --techniques")
    if finetune is None:
        return skip(tech, "network slimming trains with an L1 penalty on BatchNorm scales: it needs --retrain and "
                          "training data")
    if not summary.layers.get("batchnorm"):
        return skip(tech, "the model has no BatchNorm layers: slimming sparsifies their scales")
    if summary.prunable_groups == 0:
        return skip(tech, "; ".join(summary.unprunable) or "no prunable channel groups found")
    ratios = policy.RATIOS[(True, policy.budget_kind(ctx.context.max_accuracy_drop))]
    epochs = max(SLIM_MIN_EPOCHS, ctx.epochs)
    out = []
    for r in ratios:
        steps = [SlimmingConfig(ratio=r, epochs=epochs, seed=ctx.context.seed), finetune.model_copy(deep=True)]
        out.append(Structure(f"slim{int(round(r * 100))}-ft", steps,
                             f"network slimming: {epochs} epochs of L1 sparsity training on BN scales, BN-scale "
                             f"pruning at {r:.0%} + distillation fine-tuning", "slim", r))
    return Proposal(out, [Decision(
        technique=tech, decision="applied",
        reason=f"retraining allowed and {summary.layers['batchnorm']} BatchNorm layers: sparsity training pushes "
               "unneeded channels' scales towards zero before BN-scale pruning (one sparsity-trained model shared "
               f"by the ratios {ratios[0]:.0%}..{ratios[-1]:.0%}); bisected like the other pruning families")])


@measured_choice("slimming", order=30)
def gamma_decision(records: list[tuple[str, dict]]) -> Decision | None:
    """What sparsity training did to the BatchNorm scales of each slimmed structure."""
    items = []
    for structure, rec in records:
        before, after = rec.get("gamma_before") or {}, rec.get("gamma_after") or {}
        if not after:
            continue
        g0, g1 = before.get("mean_abs_gamma", 0.0), after.get("mean_abs_gamma", 0.0)
        z0, z1 = before.get("share_below_0.01", 0.0), after.get("share_below_0.01", 0.0)
        items.append(f"{structure}: mean |gamma| {g0:.3f} -> {g1:.3f}, under 0.01 {100 * z0:.0f}% -> {100 * z1:.0f}%")
    if not items:
        return None
    return Decision(technique="slimming_training", decision="applied", reason=(
        f"sparsity training with an L1 penalty on BatchNorm scales before BN-scale pruning: {listing(items)}"))
