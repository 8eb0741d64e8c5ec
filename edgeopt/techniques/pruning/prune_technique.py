"""The `prune` technique: structured channel pruning, declared in one place — its config, its handler (the
implementation is pruning/prune.py, imported on use) and its three proposers: one family per pruning
criterion (with BN re-estimation and distillation fine-tuning), and without retraining, pruning with
least-squares reconstruction, uniform or with widths allocated over a latency table measured on the runtime."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

import edgeopt.decide.policy as policy
from edgeopt.config import ModelSummary
from edgeopt.decide.serving import Serving, channel_pruning_pays
from edgeopt.report import Decision
from edgeopt.techniques.declare import TechniqueConfig, proposer, technique
from edgeopt.techniques.planning import PlanningContext, Proposal, Structure, channel_rounding, skip, then_finetune
from edgeopt.techniques.repair.bn_recalibrate_technique import BNRecalibrateConfig


class PruneConfig(TechniqueConfig):
    technique: Literal["prune"] = "prune"
    ratio: float = Field(0.3, ge=0.0, lt=1.0)
    importance: str = "l2"
    scope: Literal["local", "global"] = "local"
    round_to: int | None = Field(None, ge=1)
    iterative_steps: int = Field(1, ge=1)
    max_layer_ratio: float = Field(0.9, gt=0.0, le=1.0)
    timeout_s: float = Field(120.0, gt=0.0)  # tracing + pruning; past it the rest is skipped with a reason
    layer_ratios: dict[str, float] | None = None  # per-layer ratios, e.g. from sensitivity analysis
    # per-layer accuracy drops from sensitivity analysis: turned into layer ratios around `ratio`
    sensitivity: dict[str, float] | None = None
    # re-solve the layers fed by pruned channels by least squares on calibration inputs (no retraining)
    reconstruct: bool = False
    # widths allocated under this fraction of the model's latency, predicted by a latency table measured on
    # `lut_runtime` (replaces the uniform `ratio`)
    latency_target: float | None = Field(None, gt=0.0, lt=1.0)
    lut_runtime: str | None = None  # None: the first runtime the latency table is measured on
    lut_precision: Literal["fp32", "int8"] = "fp32"  # the table's precision: the candidate's, for INT8 ones
    lut_batch: int = Field(1, ge=1)  # the table's batch: the served batch under goal throughput


@technique("prune", config=PruneConfig, needs_data=False, needs_retraining=False, shrinks=True,
           summary="structured channel pruning (Torch-Pruning dependency graph)", aliases=("structured_pruning",))
def apply(model, example, config: PruneConfig, data=None):
    from edgeopt.techniques.pruning.prune import apply_prune

    return apply_prune(model, example, config, data=data)


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


@proposer("prune", order=10)
def propose_criteria(ctx: PlanningContext) -> Proposal:
    """One family per criterion the data allows, each a ladder of ratios; screened, then bisected."""
    context, target, summary, finetune = ctx.context, ctx.target, ctx.summary, ctx.finetune
    decisions: list[Decision] = []
    round_to = channel_rounding(target, decisions)
    if not ctx.allowed("prune"):
        return skip("prune", "excluded by --techniques", before=decisions)
    if summary.prunable_groups == 0:
        return skip("prune", "; ".join(summary.unprunable) or "no prunable channel groups found", before=decisions)
    ratios = policy.RATIOS[(bool(finetune), policy.budget_kind(context.max_accuracy_drop))]
    recal = ctx.has_calib_data and ctx.allowed("bn_recalibrate")
    variants = prune_variants(summary, ctx.has_calib_data, ctx.has_class_labels, ctx.sensitivity)
    out = []
    for suffix, crit, extra in variants:
        family = f"prune-{suffix}"
        for r in ratios:
            steps = [PruneConfig(ratio=r, importance=crit, round_to=round_to, sensitivity=ctx.sensitivity or None,
                                 **extra)]
            if recal:
                steps.append(BNRecalibrateConfig(batches=policy.BN_RECAL_BATCHES))
            pct = int(round(r * 100))
            name = (f"{family}{pct}" if not extra else f"{family}-{pct}") + ("-ft" if finetune else "")
            out.append(Structure(name, then_finetune(steps, finetune),
                                 f"structured {_variant_words(crit, extra)} pruning at {r:.0%}" +
                                 (" + distillation fine-tuning" if finetune else ""), family, r, "prune-criterion"))
    goal = channel_pruning_pays(Serving.of(context), target.kind)
    decisions.append(Decision(
        technique="prune", decision="applied",
        reason=f"structured channel pruning physically shrinks layers, so {goal}; ratios "
               f"{ratios[0]:.0%}..{ratios[-1]:.0%} " +
               ("(retraining recovers accuracy)" if finetune else
                "(no retraining: capped where measured accuracy allows)") +
               f"; criteria {', '.join(v[0] for v in variants)} screened at one ratio by measured accuracy, "
               f"the best {policy.SCREEN_KEEP} bisected" +
               ("; per-layer ratios from the measured sensitivity (sensitive layers pruned less)"
                if ctx.sensitivity else "")))
    if recal:
        decisions.append(Decision(technique="bn_recalibrate", decision="applied",
                                  reason="pruning shifts activation statistics; BN re-estimated on unlabeled "
                                         "calibration data"))
    else:
        decisions.append(Decision(technique="bn_recalibrate", decision="skipped",
                                  reason="no calibration data given (random data would corrupt BN)"))
    return Proposal(out, decisions)


@proposer("prune-recon", order=6)
def propose_reconstruction(ctx: PlanningContext) -> Proposal:
    """With calibration data: channels chosen by reconstruction error, then the layers they fed re-solved by
    least squares on the calibration inputs. Planned (so searched) before the criteria, with the latency-table
    allocation: they reach furthest, and a time budget that stops the search should stop it after them. BN is
    not re-estimated after it: the re-solved layers already match the original pre-BN outputs, which the
    original statistics describe better than a few batches.

    With retraining allowed the reconstructed model is then fine-tuned (`prune-recon<r>-ft`), from the mild
    reconstruction levels up to the retraining ladder's furthest: fine-tuning starts from a network whose layers
    already reproduce the original's features instead of from a cut one, so it recovers more in the same epochs,
    and the family is bisected directly (no screening's builds before it). The reconstruction alone is proposed
    too, ahead of it: the search bisects it first, then fine-tunes only the levels beyond the one it holds, each
    built on its reconstructed twin (engine/search.py), so retraining never ends below what no retraining
    reaches, and its time goes where only fine-tuning can go."""
    if not ctx.allowed("prune") or ctx.summary.prunable_groups == 0:
        return Proposal()
    if not ctx.has_calib_data:
        return skip("prune_reconstruct", "no calibration data: reconstruction needs unlabeled real inputs")
    round_to = channel_rounding(ctx.target, [])
    kind = policy.budget_kind(ctx.context.max_accuracy_drop)
    finetune = ctx.finetune
    # fine-tuned, a level holds at least what it held reconstructed only: the ladder keeps the mild levels
    # (a model that holds 30 % only just) and reaches as far as the retraining criteria
    ratios = tuple(sorted({*policy.RECON_RATIOS[kind], *policy.RATIOS[(True, kind)]})) if finetune \
        else policy.RECON_RATIOS[kind]
    out = []
    for tuned, ladder in ((None, policy.RECON_RATIOS[kind]), (finetune, ratios)) if finetune else ((None, ratios),):
        suffix = "-ft" if tuned else ""
        for r in ladder:
            step = PruneConfig(ratio=r, importance="recon", round_to=round_to, reconstruct=True)
            # with retraining, the reconstruction alone is the floor retraining must not end below: searched
            # before every fine-tuned family, even one planned early (a transformer's blocks: three fine-tuned
            # builds took DeiT-tiny's 300 s, and the reconstruction that held without retraining never started)
            out.append(Structure(f"prune-recon{int(round(r * 100))}{suffix}", then_finetune([step], tuned),
                                 f"structured pruning at {r:.0%} with least-squares reconstruction"
                                 + (" + distillation fine-tuning" if tuned else ""), "prune-recon" + suffix, r,
                                 early=bool(finetune) and not tuned))
    why = ("channels ranked by the output error their removal leaves, and the layers they fed re-solved by least "
           "squares on unlabeled calibration inputs, so pruning goes further")
    return Proposal(out, [Decision(
        technique="prune_reconstruct", decision="applied",
        reason=(f"before fine-tuning: {why}; fine-tuning then starts from layers that already reproduce the "
                f"original's features, ratios {ratios[0]:.0%}..{ratios[-1]:.0%}; the reconstruction alone is "
                "searched first, and only the levels beyond the one it holds are fine-tuned" if finetune
                else f"no retraining: {why}"))])


def table_precision(ctx: PlanningContext, rt: str) -> str:
    """The latency table's precision for `rt`: INT8 when the plan measures INT8 on it. The structure is
    shared by every (format, precision) pair, and without retraining the INT8 candidate is the one that
    wins whenever the hardware runs INT8, so its kernels' widths decide (fp32 twins are still measured)."""
    fmt = ctx.format_of_runtime.get(rt)
    return "int8" if any(f == fmt and p == "int8" for f, p, *_ in ctx.pairs) else "fp32"


@proposer("prune-latency", order=7)
def propose_latency_allocation(ctx: PlanningContext) -> Proposal:
    """Without retraining, with calibration data: per-layer widths allocated over a latency table measured on
    this machine's runtime, then reconstruction."""
    if ctx.finetune or not ctx.has_calib_data or not ctx.allowed("prune") or ctx.summary.prunable_groups == 0:
        return Proposal()
    rt = ctx.timing_runtime
    if rt is None:
        return skip("prune_latency_allocation", "the latency table is measured on this machine's runtimes: "
                                                "not available for this target")
    prec = table_precision(ctx, rt)
    batch = Serving.of(ctx.context).table_batch  # per-layer times at the batch the model will serve
    out = []
    for t in policy.LATENCY_TARGETS:
        # the uniform ratio is unused: widths come from the allocation
        step = PruneConfig(ratio=0.0, latency_target=t, lut_runtime=rt, lut_precision=prec, lut_batch=batch,
                           importance="recon", reconstruct=True)
        out.append(Structure(f"prune-lat{int(round(t * 100))}", [step],
                             f"channels allocated for {t:.0%} of the latency ({rt} {prec} table) + reconstruction",
                             "prune-lat", 1 - t))
    return Proposal(out, [Decision(
        technique="prune_latency_allocation", decision="applied",
        reason=f"per-layer widths chosen greedily over a latency table measured on {rt} ({prec} layers"
               + (", the precision the INT8 candidates run" if prec == "int8" else "")
               + (f", at the served batch {batch}" if batch > 1 else "")
               + "), keeping the most importance per millisecond, for "
               + "/".join(f"{t:.0%}" for t in policy.LATENCY_TARGETS) + " of the baseline's latency")])
