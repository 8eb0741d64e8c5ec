"""The `fine_tune` technique: distillation fine-tuning from the original model (the implementation is
retraining/finetune.py, imported on use), and the report decision quoting which distillation kind each
candidate's screen chose. The step itself is planned by techniques/planning.py (every retraining structure
ends with it)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from edgeopt.report import Decision
from edgeopt.techniques.declare import TechniqueConfig, listing, measured_choice, technique

# the distillation kinds of edgeopt.training (kept here too: the decision layer reads configs without torch)
DISTILL_KINDS = ("response", "feature", "relation")
DEFAULT_LR = 0.01
# the fine-tuning rates screened beside the default one, as factors of it: SGD at 0.01 suits BatchNorm CNNs;
# ConvNeXt-atto, a LayerNorm model trained with AdamW, lost its accuracy at it in one epoch
SCREENED_RATE_FACTORS = (0.1, 0.01)
# AdamW's rates screened for a model normalised by LayerNorm or GroupNorm and without BatchNorm (a vision
# transformer, a ConvNeXt): such models are trained with AdamW (Touvron et al. 2021; Liu et al. 2022). Measured on
# DeiT-tiny trained on digits, three of its blocks removed, 300 steps of response distillation: AdamW at 1e-4
# kept 69.70 % of the teacher's 70.37 (64.65 before), at 5e-4 63.64, SGD at 0.001 61.45 and at 0.01 11.11; with six
# blocks removed, AdamW at 1e-4 62.46, SGD at 0.001 31.14. BatchNorm CNNs, trained with SGD, are screened at
# SGD's rates only.
ADAMW_RATES = (1e-4, 3e-5)


class FineTuneConfig(TechniqueConfig):
    technique: Literal["fine_tune"] = "fine_tune"
    epochs: int = Field(2, ge=1)
    # None: DEFAULT_LR, or with kind "auto" the best of DEFAULT_LR times (1, *SCREENED_RATE_FACTORS); a rate
    # given is used as given (None, not a default value, says "not given": it survives a config's round trip)
    lr: float | None = Field(None, gt=0)
    # None: SGD, or with kind "auto" and no rate given the screen's choice (AdamW screened for LayerNorm models);
    # given: used as given, at its own rates when no rate is
    optimizer: Literal["sgd", "adamw"] | None = None
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.7, ge=0.0, le=1.0)  # weight of the soft-target (KD) loss vs the hard-label loss
    seed: int = 0
    keep_sparsity: bool = False  # zero weights stay zero (after unstructured / 2:4 sparsity)
    # response | feature | relation | a "+" combination | "auto": short runs of each on a subset of the
    # training data, the best held-out accuracy wins, then the full fine-tuning with it
    kind: str = "response"
    # "auto": bfloat16 autocast where the processor has bfloat16 arithmetic and a timed step of the model runs at
    # least 1.25x faster with it (edgeopt.training.mixed_precision), else fp32; "fp32" / "bf16": as given
    precision: Literal["auto", "fp32", "bf16"] = "auto"

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        parts = [p.strip().lower() for p in v.replace(",", "+").split("+") if p.strip()]
        if parts in (["auto"], ["none"]):
            return parts[0]
        bad = [p for p in parts if p not in DISTILL_KINDS]
        if bad or not parts:
            raise ValueError(f"unknown distillation kind {v!r}: use auto, none, {', '.join(DISTILL_KINDS)} "
                             "or a '+' combination")
        return "+".join(k for k in DISTILL_KINDS if k in parts)


@technique("fine_tune", config=FineTuneConfig, needs_data=True, needs_retraining=True, shrinks=True,
           summary="fine-tune with distillation from the original model (response, feature, relation; auto: "
                   "screened)", aliases=("finetune", "distill", "kd"))
def apply(model, example, config: FineTuneConfig, data=None, teacher=None, train_data=None, progress=None):
    from edgeopt.techniques.retraining.finetune import apply_finetune

    return apply_finetune(model, example, config, data=data, teacher=teacher, train_data=train_data,
                          progress=progress)


@measured_choice("fine_tune", order=10)
def kind_decision(records: list[tuple[str, dict]]) -> Decision | None:
    """The distillation kind each structure was fine-tuned with: its screen's scores, or the run's first screen's
    choice taken (and whether its result was then kept); the precision the run's fine-tunings trained at, and
    why; and each fine-tuning shortened to end within the time left, with how many of its planned steps ran."""
    items, metric, cut, precision = [], None, [], None
    for structure, rec in records:
        if precision is None and rec.get("precision_choice", {}).get("why") not in (None, "given"):
            precision = rec["precision_choice"]
        if rec.get("shortened"):
            cut.append(f"{structure}: {rec['shortened']}")
        screen = rec.get("kind_screen")
        if not screen:
            continue
        metric = screen.get("metric", metric)
        rate = (f" at lr {screen['lr']:g}" + (" with AdamW" if screen.get("optimizer") == "adamw" else "")
                if "lr" in screen else "")
        if "screened_before" in screen:  # the run's first screen's choice
            kept = f"; then kept unchanged: {rec['kept_unchanged']}" if rec.get("kept_unchanged") else ""
            items.append(f"{structure}: {screen['chosen']}{rate} (as first screened{kept})")
            continue
        scores = ", ".join(f"{k} {v:.2f}" for k, v in sorted(screen["scores"].items(), key=lambda kv: -kv[1]))
        below = (f"; every probe below the {screen['start']:.2f} it started at, trained and judged after"
                 + (f": kept unchanged, {rec['kept_unchanged']}" if rec.get("kept_unchanged") else "")
                 if screen.get("probes_below_start") else "")
        items.append(f"{structure}: {screen['chosen']}{rate} ({scores}{below})")
    if not items and not cut and precision is None:
        return None
    reasons = ([f"distillation kind (and rate, unless given) chosen by one-epoch probes scored ({metric}) on a "
                f"slice held out of the training data: {listing(items)}"] if items else [])
    if precision is not None:  # measured once per run: the first record's choice holds for all
        reasons.append(f"trained in {'bfloat16 autocast' if precision['precision'] == 'bf16' else 'fp32'}: "
                       f"{precision['why']}")
    if cut:  # not the structure its name describes: a run with more time trains it whole
        reasons.append(f"fine-tuned for fewer steps than planned: {listing(cut)}")
    return Decision(technique="distillation_kind", decision="applied", reason="; ".join(reasons))
