"""The `factorize` technique: low-rank factorization (Tucker-2 / CP convs, SVD linears), declared in one place —
its config, its handler (the implementation is lowrank/factorize.py, imported on use) and its proposer: one
family per method, each a ladder of kept energies, screened at a common energy, then bisected."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

import edgeopt.decide.policy as policy
from edgeopt.report import Decision
from edgeopt.techniques.declare import TechniqueConfig, proposer, technique
from edgeopt.techniques.planning import PlanningContext, Proposal, Structure, skip, then_finetune


class FactorizeConfig(TechniqueConfig):
    technique: Literal["factorize"] = "factorize"
    method: Literal["tucker", "cp", "svd"] = "tucker"
    energy: float | None = Field(0.9, gt=0.0, le=1.0)
    macs_reduction: float | None = Field(None, gt=0.0, lt=1.0)
    rank_method: Literal["energy", "vbmf"] = "energy"
    layers: list[str] | None = None
    min_params: int = Field(4096, ge=0)
    # a conv is factorized only where its factors (Tucker: three convs; CP: four) are measured faster on
    # this runtime (latency table); decided before decomposing
    lut_runtime: str | None = None


@technique("factorize", config=FactorizeConfig, needs_data=False, needs_retraining=False, shrinks=True,
           summary="low-rank factorization: Tucker-2 / CP convs, SVD linears (tensorly)",
           aliases=("low_rank", "tucker"))
def apply(model, example, config: FactorizeConfig, data=None):
    from edgeopt.techniques.lowrank.factorize import apply_factorize

    return apply_factorize(model, example, config, data=data)


def _factorize_steps(method: str, ranks: str, energy: float | None, finetune, lut_runtime: str | None = None
                     ) -> list:
    # SVD of linear layers has no latency check (a Linear split in two is not a conv the table times)
    steps = [FactorizeConfig(method=method, rank_method=ranks, energy=energy,
                             lut_runtime=lut_runtime if method != "svd" else None)]
    return then_finetune(steps, finetune)


def _linears_negligible(summary) -> bool:
    if summary.linear_macs is None or summary.linear_params is None or not (summary.macs and summary.params):
        return False
    return max(summary.linear_macs / summary.macs, summary.linear_params / summary.params) < policy.MIN_GAIN


@proposer("factorize", order=40)
def propose(ctx: PlanningContext) -> Proposal:
    """`ctx.timing_runtime`: the runtime whose measured layer latencies decide, layer by layer, whether a
    factorized conv is kept (None: every layer the energy allows is factorized)."""
    context, summary, finetune, lut_runtime = ctx.context, ctx.summary, ctx.finetune, ctx.timing_runtime
    if not ctx.allowed("factorize"):
        return skip("factorize", "excluded by --techniques")
    if ctx.target.kind == "gpu" and context.goal == "latency":
        return skip("factorize", "on GPUs a conv split into three smaller ones costs more launches than the MACs "
                                 "it saves; pruning and fp16/int8 pay off first")
    convs, linears = summary.layers.get("conv", 0), summary.layers.get("linear", 0)
    if not (convs or linears):
        return skip("factorize", "no conv/linear layers")
    energies = policy.ENERGIES[bool(finetune)]
    common = 1 - energies[policy.screen_index(len(energies))]
    ft = "-ft" if finetune else ""
    out, methods, untrained, decisions = [], [], [], []
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
            out.append(Structure(family + ft, _factorize_steps(method, ranks, None, finetune, lut_runtime),
                                 f"{what} factorization, ranks from VBMF", family, common, "factorize-method"))
        else:
            family = f"factorize-{method}"
            out += [Structure(f"{family}{int(round(e * 100))}{ft}",
                              _factorize_steps(method, ranks, e, finetune, lut_runtime),
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
    return Proposal(out, decisions)
