"""What a technique's planner proposer receives and returns, and the planning helpers several techniques share.

A proposer takes one `PlanningContext` (the run context, the target, the model summary, the data at hand, the
runtimes and precision pairs the plan measures, the fine-tuning step every retraining structure appends) and
returns a `Proposal`: the structures it proposes and the decisions that say why (or why not). A structure's
steps are typed technique configs; structures of one family are ordered by `level` (more aggressive =
higher), which is what lets the search bisect. Pure: ladders and rules come from decide/policy.py."""

from __future__ import annotations

from dataclasses import dataclass, field

import edgeopt.decide.policy as policy
from edgeopt.config import DeployContext, ModelSummary
from edgeopt.report import Decision
from edgeopt.targets import TargetProfile
from edgeopt.techniques.declare import TECHNIQUES, TechniqueConfig, allowed
from edgeopt.techniques.retraining.fine_tune_technique import (
    ADAMW_RATES,
    DEFAULT_LR,
    SCREENED_RATE_FACTORS,
    FineTuneConfig,
)


@dataclass(frozen=True)
class PlanningContext:
    context: DeployContext
    target: TargetProfile
    summary: ModelSummary
    has_calib_data: bool = False
    has_train_data: bool = False
    has_class_labels: bool = False  # class labels for a classifier (Taylor's gradients need them)
    sensitivity: dict[str, float] | None = None  # per-layer drops measured by --sensitivity
    architectures: list[dict] | None = None  # efficient families' latency measured beside the model
    runtimes: tuple[str, ...] = ()  # the runtimes measured (or estimated), in the target's order
    here: bool = True  # latency is measured on this machine
    pairs: tuple[tuple[str, str, str], ...] = ()  # the plan's (format, precision, why)
    format_of_runtime: dict[str, str] = field(default_factory=dict)
    # the first runtime whose per-layer latency table can be measured here (None: not on this machine)
    timing_runtime: str | None = None
    finetune: FineTuneConfig | None = None  # the fine-tuning step retraining structures end with
    epochs: int = policy.FINETUNE_EPOCHS  # what each training of the run trains (policy.planned_epochs)

    def allowed(self, technique: str) -> bool:
        """Whether --techniques (None = all) lets the planner use `technique` (aliases count)."""
        return allowed(self.context.techniques, technique)


@dataclass
class Structure:
    name: str  # the candidates' structure key: candidates sharing it share one built model
    steps: list[TechniqueConfig]
    why: str
    family: str | None = None
    level: float = 0.0
    # the screening group whose families answer the same question; None: policy.SCREEN_GROUP_OF's
    screen: str | None = None
    # searched before the families of lower proposer order: its proposer expects it to reach furthest here
    early: bool = False


@dataclass
class Proposal:
    structures: list[Structure] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)


def skip(technique: str, reason: str, decision: str = "skipped", before: list[Decision] | None = None) -> Proposal:
    """No structure, and why (after the decisions already made, `before`)."""
    return Proposal([], [*(before or []), Decision(technique=technique, decision=decision, reason=reason)])


def finetune_step(context: DeployContext, has_train_data: bool, decisions: list[Decision],
                  epochs: int = policy.FINETUNE_EPOCHS, steps_per_epoch: int | None = None) -> FineTuneConfig | None:
    """The fine-tuning step that pruned, factorized, depth-pruned and sparse structures end with (None: no
    retraining), `epochs` long (policy.planned_epochs, from the training split's `steps_per_epoch`), its
    distillation kind chosen per candidate by a short measured screen."""
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
                                     "Hinton distillation from the original, so the search may go further; "
                                     + fine_tuning_length(context, epochs, steps_per_epoch)))
    rates = ", ".join(f"{DEFAULT_LR * f:g}" for f in (1, *SCREENED_RATE_FACTORS))
    adamw = ", ".join(f"{r:g}" for r in ADAMW_RATES)
    decisions.append(Decision(
        technique="distillation_kind", decision="applied",
        reason=f"the fine-tuning rate (SGD at {rates}; for a LayerNorm model AdamW at {adamw} too) and the "
               "distillation kind (response, feature, relation, "
               "response+feature) are chosen by measured recovery: one-epoch runs on a subset of the training data, "
               "scored on a slice held out of it, once per run (later fine-tunings take the choice and are kept "
               "only if they score above the model as it came); each one's accuracy is in the fine-tuning step's "
               "record (kind_screen)"))
    return FineTuneConfig(epochs=epochs, kind="auto", precision=getattr(context, "train_precision", "auto"))


def fine_tuning_length(context: DeployContext, epochs: int, steps_per_epoch: int | None) -> str:
    """What the report says about the planned epochs: given, the default, or raised on a small training split."""
    steps = f" ({epochs * steps_per_epoch} optimizer steps)" if steps_per_epoch else ""
    if getattr(context, "epochs", None) is not None:
        return f"{epochs} epochs each, as given{steps}"
    if epochs == policy.FINETUNE_EPOCHS:
        return f"{epochs} epochs each{steps}"
    return (f"{epochs} epochs each, not {policy.FINETUNE_EPOCHS}: the training split is {steps_per_epoch} steps an "
            f"epoch, and a pruned model's recovery follows optimizer steps, so each fine-tuning runs about "
            f"{policy.FINETUNE_STEPS} ({epochs * steps_per_epoch}; --epochs sets it)")


def channel_rounding(target: TargetProfile, decisions: list[Decision]) -> int | None:
    """The target's channel block: pruned layers keep whole blocks of it (graph_surgery.rounded_kept)."""
    multiple = target.channel_multiple
    if multiple <= 1:
        return None
    narrow = policy.ROUNDING_MIN_STEPS * multiple
    decisions.append(Decision(
        technique="channel_rounding", decision="applied",
        reason=f"kept channels rounded up to multiples of {multiple} for {target.name}: its kernels work in blocks "
               f"of {multiple} channels, and a partial block costs as much as a whole one (layers narrower than "
               f"{narrow} channels round to smaller multiples, so they can still be cut in steps)"))
    return multiple


def then_finetune(steps: list, finetune: FineTuneConfig | None) -> list:
    """`steps` followed by a copy of the fine-tuning step, when there is one."""
    return steps + ([finetune.model_copy(deep=True)] if finetune else [])
