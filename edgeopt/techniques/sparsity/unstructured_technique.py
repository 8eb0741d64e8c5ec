"""The `unstructured` technique: global magnitude / 2:4 weight sparsity, declared in one place — its config, its
handler (the implementation is sparsity/unstructured.py, imported on use) and the weight-sparsity proposer,
which also proposes IMP (sparsity/imp_technique.py) when retraining is allowed.

Where sparsity pays off: zeroed weights make no dense kernel faster, so it is proposed only for a size goal
(zeros compress: candidates are ranked by compressed size) or for a target with sparse tensor cores (2:4 on
NVIDIA Ampere+, through TensorRT); never for latency on a dense CPU, and the decision says why."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

import edgeopt.decide.policy as policy
from edgeopt.report import Decision
from edgeopt.targets import TargetProfile
from edgeopt.techniques.declare import TechniqueConfig, proposer, technique
from edgeopt.techniques.planning import PlanningContext, Proposal, Structure, skip
from edgeopt.techniques.sparsity.imp_technique import LMC_BARRIER_PP, IMPConfig


class UnstructuredConfig(TechniqueConfig):
    technique: Literal["unstructured"] = "unstructured"
    sparsity: float = Field(0.5, ge=0.0, lt=1.0)
    pattern: Literal["global", "2:4"] = "global"


@technique("unstructured", config=UnstructuredConfig, needs_data=False, needs_retraining=False,
           summary="global magnitude / 2:4 weight sparsity: smaller compressed size, no dense-CPU speedup",
           aliases=("unstructured_pruning", "sparsity"))
def apply(model, example, config: UnstructuredConfig, data=None):
    from edgeopt.techniques.sparsity.unstructured import apply_unstructured

    return apply_unstructured(model, example, config, data=data)


def has_2_4(target: TargetProfile) -> bool:
    """Whether the target runs 2:4 semi-structured sparse weights faster (sparse tensor cores)."""
    return "2:4" in (target.sparse_support or [])


@proposer("unstructured", order=60)
def propose(ctx: PlanningContext) -> Proposal:
    tech, context, target, finetune = "unstructured_pruning", ctx.context, ctx.target, ctx.finetune
    if context.goal == "size":
        use_imp = bool(finetune) and ctx.allowed("imp")
        if not use_imp and not ctx.allowed("unstructured"):
            return skip(tech, "excluded by --techniques")
        out = []
        for s in policy.SPARSITIES[bool(finetune)]:
            if use_imp:  # lottery-ticket style: prune gradually, retrain between rounds; the rewinding point is
                # the earliest epoch with no error barrier (linear mode connectivity), measured per candidate
                steps = [IMPConfig(sparsity=s, rounds=policy.IMP_ROUNDS, epochs=ctx.epochs, rewind="auto")]
                name = f"imp{int(round(s * 100))}"
            else:
                steps = [UnstructuredConfig(sparsity=s)]
                name = f"sparse{int(round(s * 100))}"
            out.append(Structure(name, steps, f"{'IMP (rewinding by LMC)' if use_imp else 'global magnitude'} "
                                 f"weight sparsity at {s:.0%}", "imp" if use_imp else "sparse", s))
        return Proposal(out, [Decision(
            technique="imp" if use_imp else tech, decision="applied",
            reason="size goal: zeroed weights compress (candidates are ranked by their deflate-compressed size "
                   "on disk, as downloads and container layers carry them); sparsity "
                   f"{out[0].level:.0%}..{out[-1].level:.0%} chosen by measured accuracy" +
                   ("; iterative magnitude pruning retrains between rounds, rewinding to the earliest epoch (0, 1) "
                    "whose two differently-ordered probe runs show no error barrier (linear mode connectivity, "
                    f"< {LMC_BARRIER_PP} pp), else learning-rate rewinding; the barriers are in each candidate's "
                    "record (rewind_auto)" if use_imp else "; no retraining: one-shot magnitude masks"))])
    if has_2_4(target):
        if not ctx.allowed("unstructured"):
            return skip(tech, "excluded by --techniques")
        if not finetune:
            return skip(tech, f"{target.name} runs 2:4 sparse weights on sparse tensor cores, but removing half of "
                              "every group of 4 weights needs retraining to keep accuracy: pass --retrain",
                        decision="rejected")
        steps = [UnstructuredConfig(pattern="2:4"), finetune.model_copy(update={"keep_sparsity": True}, deep=True)]
        return Proposal([Structure("sparse24-ft", steps, "2:4 semi-structured sparsity + distillation fine-tuning",
                                   "sparse24", 0.5)], [Decision(
            technique=tech, decision="applied",
            reason=f"{target.name} accelerates 2:4 semi-structured sparsity (TensorRT sparse weights); the "
                   "2:4 pattern is produced, kept through distillation fine-tuning and marked for the build")])
    return skip(tech, f"unstructured sparsity: dense kernels on {target.name} gain no latency from zeroed weights "
                      "(only a size goal or sparse tensor cores pay off)", decision="rejected")
