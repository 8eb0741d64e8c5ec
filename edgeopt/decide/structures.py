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


def prune_variants(summary: ModelSummary, has_calib_data: bool, has_class_labels: bool,
                   sensitivity: dict | None = None) -> list[tuple[str, str, dict]]:
    """(family suffix, criterion, other PruneConfig fields) for every criterion the data allows, simplest first,
    then a global-scope and an iterative variant of the default criterion: the screening picks among them."""
    crits = [c for c in policy.CRITERIA_NO_DATA if c != "bn_scale" or summary.layers.get("batchnorm")]
    if has_calib_data:
        crits += policy.CRITERIA_INPUTS
    if has_class_labels:  # Taylor's gradients need the cross-entropy of a classifier on labelled batches
        crits += policy.CRITERIA_LABELS
    out = [(c, c, {}) for c in crits]
    d = policy.DEFAULT_CRITERION
    if not sensitivity:  # measured per-layer ratios fix how much each layer loses: no global ranking over them
        out.append((f"{d}-global", d, {"scope": "global"}))
    out.append((f"{d}-iter{policy.ITERATIVE_STEPS}", d, {"iterative_steps": policy.ITERATIVE_STEPS}))
    return out


def _variant_words(criterion: str, extra: dict) -> str:
    words = criterion.upper()
    if extra.get("scope") == "global":
        words += " (global ranking across layers)"
    if extra.get("iterative_steps", 1) > 1:
        words += f" ({extra['iterative_steps']} iterative steps)"
    return words


def prune_structures(context, target, summary, has_calib_data, finetune, decisions, sensitivity=None,
                     has_class_labels: bool = False) -> list[tuple]:
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
    variants = prune_variants(summary, has_calib_data, has_class_labels, sensitivity)
    out = []
    for suffix, crit, extra in variants:
        family = f"prune-{suffix}"
        for r in ratios:
            steps = [PruneConfig(ratio=r, importance=crit, round_to=round_to, sensitivity=sensitivity or None,
                                 **extra)]
            if recal:
                steps.append(BNRecalibrateConfig(batches=policy.BN_RECAL_BATCHES))
            if finetune:
                steps.append(finetune.model_copy(deep=True))
            pct = int(round(r * 100))
            name = (f"{family}{pct}" if not extra else f"{family}-{pct}") + ("-ft" if finetune else "")
            out.append((name, steps, f"structured {_variant_words(crit, extra)} pruning at {r:.0%}" +
                        (" + distillation fine-tuning" if finetune else ""), family, r, "prune-criterion"))
    goal = ("smaller weights and fewer MACs" if context.goal == "size" else
            f"dense {target.kind.upper()} kernels run faster")
    decisions.append(Decision(
        technique="prune", decision="applied",
        reason=f"structured channel pruning physically shrinks layers, so {goal}; ratios "
               f"{ratios[0]:.0%}..{ratios[-1]:.0%} " +
               ("(retraining recovers accuracy)" if finetune else
                "(no retraining: capped where measured accuracy allows)") +
               f"; criteria {', '.join(v[0] for v in variants)} screened at one ratio by measured accuracy, "
               f"the best {policy.SCREEN_KEEP} bisected" +
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


def _factorize_steps(method: str, ranks: str, energy: float | None, finetune: FineTuneConfig | None,
                     lut_runtime: str | None = None) -> list:
    # SVD of linear layers has no latency check (a Linear split in two is not a conv the table times)
    steps = [FactorizeConfig(method=method, rank_method=ranks, energy=energy,
                             lut_runtime=lut_runtime if method != "svd" else None)]
    return steps + ([finetune.model_copy(deep=True)] if finetune else [])


def _linears_negligible(summary) -> bool:
    if summary.linear_macs is None or summary.linear_params is None or not (summary.macs and summary.params):
        return False
    return max(summary.linear_macs / summary.macs, summary.linear_params / summary.params) < policy.MIN_GAIN


def factorize_structures(context, target, summary, finetune, decisions, lut_runtime: str | None = None
                         ) -> list[tuple]:
    """`lut_runtime`: the runtime whose measured layer latencies decide, layer by layer, whether a
    factorized conv is kept (None: every layer the energy allows is factorized)."""
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
    convs, linears = summary.layers.get("conv", 0), summary.layers.get("linear", 0)
    if not (convs or linears):
        decisions.append(Decision(technique="factorize", decision="skipped", reason="no conv/linear layers"))
        return []
    energies = policy.ENERGIES[bool(finetune)]
    common = 1 - energies[policy.screen_index(len(energies))]
    ft = "-ft" if finetune else ""
    out, methods, untrained = [], [], []
    for method, ranks in policy.FACTORIZE_METHODS:
        if (method == "svd" and not linears) or (method != "svd" and not convs):
            continue  # Tucker/CP factorize convs; SVD only linear layers
        what = {"tucker": "Tucker-2", "cp": "CP", "svd": "SVD (linear layers)"}[method]
        if not finetune and (method, ranks) in policy.RETRAIN_ONLY_FACTORIZATIONS:
            untrained.append(f"{method}-vbmf" if ranks == "vbmf" else method)
            continue
        if method == "svd" and _linears_negligible(summary):
            decisions.append(Decision(
                technique="factorize_svd", decision="skipped",
                reason=f"linear layers hold {100 * summary.linear_macs / summary.macs:.2f} % of the MACs and "
                       f"{100 * summary.linear_params / summary.params:.2f} % of the parameters: factorizing "
                       f"them cannot pay (under {100 * policy.MIN_GAIN:g} %)"))
            continue
        if ranks == "vbmf":  # ranks estimated per layer: one level, screened beside the others' middle one
            family = f"factorize-{method}-vbmf"
            out.append((family + ft, _factorize_steps(method, ranks, None, finetune, lut_runtime),
                        f"{what} factorization, ranks from VBMF", family, common, "factorize-method"))
        else:
            family = f"factorize-{method}"
            out += [(f"{family}{int(round(e * 100))}{ft}", _factorize_steps(method, ranks, e, finetune, lut_runtime),
                     f"{what} factorization keeping {e:.0%} of each layer's energy", family, 1 - e,
                     "factorize-method") for e in energies]
        methods.append(family.removeprefix("factorize-"))
    decisions.append(Decision(
        technique="factorize", decision="applied",
        reason=f"{'size goal' if context.goal == 'size' else 'CPU latency goal'}: low-rank factorization of "
               f"large layers cuts MACs and weights; methods {', '.join(methods)} screened at one energy by "
               "measured accuracy, the energy kept then bisected" + (
                   f"; a conv is factorized only where its factors are measured faster on {lut_runtime} "
                   "(latency table)" if lut_runtime else "") + (
                   f"; not tried without retraining: {', '.join(untrained)} (their layers need fine-tuning to "
                   "recover accuracy)" if untrained else "")))
    return out
