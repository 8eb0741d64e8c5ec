"""Retraining-side choices the planner leaves to measurement (with --retrain and training data):

- the distillation kind of every fine-tuning step: `kind="auto"` screens response / feature / relation /
  response+feature on short runs and keeps the best held-out accuracy (edgeopt.training.screen);
- Network Slimming (Liu et al. 2017) as its own family: L1 sparsity training of the BatchNorm scales, then
  BN-scale pruning at the retraining ratios, then distillation fine-tuning; the search bisects it beside the
  other pruning families, so whether slimming pays off on this model is measured, not assumed.

IMP's rewinding point (linear mode connectivity) and the pruning-at-init screen (SNIP, GraSP, SynFlow) are
proposed in decide/sparsity.py. Pure, like the rest of the decision layer; structures are
(name, steps, why, family, level) as in decide/structures.py."""

from __future__ import annotations

from edgeopt.config import DeployContext, ModelSummary
from edgeopt.decide import policy
from edgeopt.report import Decision
from edgeopt.techniques import TECHNIQUES, FineTuneConfig, SlimmingConfig, allowed

# Sparsity-training epochs of Network Slimming: as many as the fine-tuning that follows (context.epochs), at
# least SLIM_MIN_EPOCHS, since the L1 penalty needs steps to move the scales (the penalty strength is the
# SlimmingConfig default, chosen by measurement for short schedules).
SLIM_MIN_EPOCHS = 2


def distillation_kind(finetune: FineTuneConfig | None, decisions: list[Decision]) -> FineTuneConfig | None:
    """Every planned fine-tuning chooses its distillation kind by a short measured screen."""
    if finetune is None:
        return None
    decisions.append(Decision(
        technique="distillation_kind", decision="applied",
        reason="the distillation kind (response, feature, relation, response+feature) is chosen per candidate by "
               "measured recovery: one-epoch runs of each on a subset of the training data, scored on a slice held "
               "out of it; each kind's accuracy is in the fine-tuning step's record (kind_screen)"))
    return finetune.model_copy(update={"kind": "auto"}, deep=True)


def slimming_structures(context: DeployContext, summary: ModelSummary, finetune: FineTuneConfig | None,
                        decisions: list[Decision]) -> list[tuple]:
    tech = "slimming"
    if tech not in TECHNIQUES or not allowed(context.techniques, tech):
        decisions.append(Decision(technique=tech, decision="skipped", reason="excluded by --techniques"))
        return []
    if finetune is None:
        decisions.append(Decision(technique=tech, decision="skipped",
                                  reason="network slimming trains with an L1 penalty on BatchNorm scales: it needs "
                                         "--retrain and training data"))
        return []
    if not summary.layers.get("batchnorm"):
        decisions.append(Decision(technique=tech, decision="skipped",
                                  reason="the model has no BatchNorm layers: slimming sparsifies their scales"))
        return []
    if summary.prunable_groups == 0:
        decisions.append(Decision(technique=tech, decision="skipped",
                                  reason="; ".join(summary.unprunable) or "no prunable channel groups found"))
        return []
    ratios = policy.RATIOS[(True, policy.budget_kind(context.max_accuracy_drop))]
    epochs = max(SLIM_MIN_EPOCHS, context.epochs)
    out = []
    for r in ratios:
        steps = [SlimmingConfig(ratio=r, epochs=epochs, seed=context.seed), finetune.model_copy(deep=True)]
        out.append((f"slim{int(round(r * 100))}-ft", steps,
                    f"network slimming: {epochs} epochs of L1 sparsity training on BN scales, BN-scale pruning at "
                    f"{r:.0%} + distillation fine-tuning", "slim", r))
    decisions.append(Decision(
        technique=tech, decision="applied",
        reason=f"retraining allowed and {summary.layers['batchnorm']} BatchNorm layers: sparsity training pushes "
               "unneeded channels' scales towards zero before BN-scale pruning (one sparsity-trained model shared "
               f"by the ratios {ratios[0]:.0%}..{ratios[-1]:.0%}); bisected like the other pruning families"))
    return out
