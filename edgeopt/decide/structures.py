"""Dense model structures the planner proposes: structured pruning (with BN re-estimation and distillation
fine-tuning) and low-rank factorization, each as a family of levels the search bisects.

A structure is (name, steps, why, family, level): steps are typed technique configs; structures of one family
are ordered by `level` (more aggressive = higher). Ladders and rules come from decide/policy.py."""

from __future__ import annotations

from edgeopt.config import DeployContext, ModelSummary
from edgeopt.decide import policy
from edgeopt.report import Decision
from edgeopt.targets import TargetProfile
from edgeopt.techniques import (
    TECHNIQUES,
    BNRecalibrateConfig,
    FactorizeConfig,
    FineTuneConfig,
    PruneConfig,
    allowed,
)


def finetune_step(context: DeployContext, has_train_data: bool, decisions: list[Decision]
                  ) -> FineTuneConfig | None:
    if not context.retrain:
        decisions.append(Decision(technique="fine_tune", decision="skipped",
                                  reason="no retraining allowed: pruning capped at the ratio that measured "
                                         "accuracy allows; BN re-estimation and PTQ only"))
        return None
    if "fine_tune" not in TECHNIQUES or not allowed(context.techniques, "fine_tune"):
        decisions.append(Decision(technique="fine_tune", decision="skipped",
                                  reason="fine-tuning not registered or excluded by --techniques"))
        return None
    if not has_train_data:
        decisions.append(Decision(technique="fine_tune", decision="skipped",
                                  reason="retraining allowed, but no training data was given"))
        return None
    decisions.append(Decision(technique="fine_tune", decision="applied",
                              reason="retraining allowed: every pruned/factorized model is fine-tuned with "
                                     "Hinton distillation from the original, so the search may go further"))
    return FineTuneConfig(epochs=context.epochs)


def channel_rounding(target: TargetProfile, summary: ModelSummary, decisions: list[Decision]) -> int | None:
    """The target's channel multiple, unless the model is so narrow that rounding would force huge steps
    (a 32-channel layer rounded to 16 can only keep 16 or 32): then no rounding, and say so."""
    wanted = multiple = target.channel_multiple
    if multiple <= 1:
        return None
    narrow = summary.min_channels
    while narrow is not None and multiple > 1 and narrow < policy.ROUNDING_MIN_STEPS * multiple:
        multiple //= 2
    if multiple <= 1:
        decisions.append(Decision(
            technique="channel_rounding", decision="skipped",
            reason=f"{target.name} prefers multiples of {wanted}, but the narrowest layer has {narrow} "
                   "channels: any rounding would force huge pruning steps"))
        return None
    why = f"kept channels rounded to multiples of {multiple} for {target.name}"
    if multiple != wanted:
        why += f" (the target prefers {wanted}; the narrowest layer has only {narrow} channels)"
    decisions.append(Decision(technique="channel_rounding", decision="applied", reason=why))
    return multiple


def prune_structures(context, target, summary, has_calib_data, finetune, decisions, sensitivity=None
                     ) -> list[tuple]:
    round_to = channel_rounding(target, summary, decisions)
    if not allowed(context.techniques, "prune"):
        decisions.append(Decision(technique="prune", decision="skipped", reason="excluded by --techniques"))
        return []
    if summary.prunable_groups == 0:
        why = "; ".join(summary.unprunable) or "no prunable channel groups found"
        decisions.append(Decision(technique="prune", decision="skipped", reason=why))
        return []
    ratios = policy.RATIOS[(bool(finetune), policy.budget_kind(context.max_accuracy_drop))]
    recal = has_calib_data and allowed(context.techniques, "bn_recalibrate")
    out = []
    for crit in policy.CRITERIA_NO_LABELS:
        for r in ratios:
            steps = [PruneConfig(ratio=r, importance=crit, round_to=round_to, sensitivity=sensitivity or None)]
            if recal:
                steps.append(BNRecalibrateConfig())
            if finetune:
                steps.append(finetune.model_copy(deep=True))
            name = f"prune-{crit}{int(round(r * 100))}" + ("-ft" if finetune else "")
            out.append((name, steps, f"structured {crit.upper()} pruning at {r:.0%}" +
                        (" + distillation fine-tuning" if finetune else ""), f"prune-{crit}", r))
    goal = ("smaller weights and fewer MACs" if context.goal == "size" else
            f"dense {target.kind.upper()} kernels run faster")
    decisions.append(Decision(
        technique="prune", decision="applied",
        reason=f"structured channel pruning physically shrinks layers, so {goal}; ratios "
               f"{ratios[0]:.0%}..{ratios[-1]:.0%} " +
               ("(retraining recovers accuracy)" if finetune else
                "(no retraining: capped where measured accuracy allows)") +
               ("; per-layer ratios from the measured sensitivity (sensitive layers pruned less)"
                if sensitivity else "")))
    if recal:
        decisions.append(Decision(technique="bn_recalibrate", decision="applied",
                                  reason="pruning shifts activation statistics; BN re-estimated on unlabeled "
                                         "calibration data"))
    else:
        decisions.append(Decision(technique="bn_recalibrate", decision="skipped",
                                  reason="no calibration data given (random data would corrupt BN)"))
    return out


def factorize_structures(context, target, summary, finetune, decisions) -> list[tuple]:
    if "factorize" not in TECHNIQUES:
        decisions.append(Decision(technique="factorize", decision="skipped",
                                  reason="no factorization technique registered in this version"))
        return []
    if not allowed(context.techniques, "factorize"):
        decisions.append(Decision(technique="factorize", decision="skipped", reason="excluded by --techniques"))
        return []
    if target.kind == "gpu" and context.goal == "latency":
        decisions.append(Decision(technique="factorize", decision="skipped",
                                  reason="on GPUs a conv split into three smaller ones costs more launches "
                                         "than the MACs it saves; pruning and fp16/int8 pay off first"))
        return []
    if not (summary.layers.get("conv", 0) or summary.layers.get("linear", 0)):
        decisions.append(Decision(technique="factorize", decision="skipped", reason="no conv/linear layers"))
        return []
    out = []
    for e in policy.ENERGIES[bool(finetune)]:
        steps = [FactorizeConfig(method="tucker", energy=e)]
        if finetune:
            steps.append(finetune.model_copy(deep=True))
        out.append((f"factorize-tucker{int(round(e * 100))}" + ("-ft" if finetune else ""), steps,
                    f"Tucker-2 factorization keeping {e:.0%} of each conv's energy", "factorize-tucker", 1 - e))
    decisions.append(Decision(
        technique="factorize", decision="applied",
        reason=f"{'size goal' if context.goal == 'size' else 'CPU latency goal'}: low-rank Tucker/SVD "
               "factorization of large layers cuts MACs and weights; energy kept chosen by measured accuracy"))
    return out
