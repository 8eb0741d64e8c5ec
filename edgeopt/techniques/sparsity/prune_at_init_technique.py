"""The `prune_at_init` technique: SNIP / GraSP / SynFlow masks on a fresh initialisation, then training from
scratch, declared in one place — its config, its handler (the implementation is sparsity/prune_at_init.py,
imported on use) and its proposer, which screens the three criteria as families (with --from-scratch)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

import edgeopt.decide.policy as policy
from edgeopt.report import Decision
from edgeopt.techniques.declare import TechniqueConfig, proposer, technique
from edgeopt.techniques.planning import PlanningContext, Proposal, Structure, skip
from edgeopt.techniques.sparsity.unstructured_technique import has_2_4

# pruning-at-init criteria screened as families (Lee et al. 2019; Wang et al. 2020; Tanaka et al. 2020)
SCRATCH_METHODS = ("snip", "grasp", "synflow")


class PruneAtInitConfig(TechniqueConfig):
    technique: Literal["prune_at_init"] = "prune_at_init"
    method: Literal["snip", "grasp", "synflow"] = "snip"
    sparsity: float = Field(0.8, ge=0.0, lt=1.0)
    epochs: int = Field(5, ge=1)
    lr: float = Field(0.05, gt=0.0)
    seed: int = 0


@technique("prune_at_init", config=PruneAtInitConfig, needs_data=True, needs_retraining=True,
           summary="SNIP / GraSP / SynFlow masks on a fresh init, then training from scratch",
           aliases=("snip", "grasp", "synflow"))
def apply(model, example, config: PruneAtInitConfig, data=None, teacher=None, train_data=None, progress=None):
    from edgeopt.techniques.sparsity.prune_at_init import apply_prune_at_init

    return apply_prune_at_init(model, example, config, data=data, teacher=teacher, train_data=train_data,
                               progress=progress)


@proposer("prune_at_init", order=70)
def propose(ctx: PlanningContext) -> Proposal:
    tech, context = "prune_at_init", ctx.context
    if not context.from_scratch:
        return skip(tech, "pruning at initialisation trains from scratch: only with --from-scratch")
    if not ctx.allowed(tech):
        return skip(tech, "excluded by --techniques")
    if not ctx.has_train_data:
        return skip(tech, "no training data was given")
    if context.goal != "size" and not has_2_4(ctx.target):
        return skip(tech, f"SNIP/GraSP/SynFlow masks are unstructured: dense kernels on {ctx.target.name} gain no "
                          "latency; structured pruning with retraining is proposed instead", decision="rejected")
    epochs = policy.scratch_epochs(ctx.epochs)
    out = [Structure(f"{method}{int(round(s * 100))}",
                     [PruneAtInitConfig(method=method, sparsity=s, epochs=epochs, seed=context.seed)],
                     f"{method.upper()} mask at initialisation ({s:.0%} sparse), trained from scratch for {epochs} "
                     "epochs", method, s)
           for method in SCRATCH_METHODS for s in policy.SCRATCH_SPARSITIES]
    return Proposal(out, [Decision(
        technique=tech, decision="applied",
        reason="training from scratch allowed: SNIP (connection sensitivity on one labelled batch), GraSP "
               "(gradient flow) and SynFlow (data-free synaptic flow) each pick a mask before training; they rank "
               "weights differently and which one holds accuracy best is model-dependent, so each is its own "
               "family, bisected over the sparsities by measured accuracy, and the selection keeps the best")])
