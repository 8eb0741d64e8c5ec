"""The `imp` technique: iterative magnitude pruning with rewinding (lottery tickets), declared in one place — its
config, its handler (the implementation is sparsity/lottery.py, imported on use) and the report decision
quoting the rewinding point each candidate chose by linear mode connectivity. The unstructured-sparsity
proposer (sparsity/unstructured_technique.py) proposes it when retraining is allowed."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from edgeopt.report import Decision
from edgeopt.techniques.declare import TechniqueConfig, listing, measured_choice, technique

# the error barrier (pp) under which two runs count as linearly mode-connected: Frankle et al. 2020 call two
# trained copies so when the error along the straight line between them rises by less than 2 points over the
# endpoints (their "stability" threshold); the technique measures against it and the decision quotes it
LMC_BARRIER_PP = 2.0


class IMPConfig(TechniqueConfig):
    technique: Literal["imp"] = "imp"
    sparsity: float = Field(0.8, ge=0.0, lt=1.0)
    rounds: int = Field(3, ge=1)
    epochs: int = Field(3, ge=1)
    # "auto": the earliest epoch from which two differently-ordered runs are linearly mode-connected
    rewind: Literal["init", "epoch", "lr", "auto"] = "lr"
    rewind_epoch: int = Field(1, ge=1)


@technique("imp", config=IMPConfig, needs_data=True, needs_retraining=True,
           summary="iterative magnitude pruning with rewinding (lottery tickets / LR rewinding)",
           aliases=("lottery_ticket", "lth"))
def apply(model, example, config: IMPConfig, data=None, teacher=None, train_data=None, progress=None):
    from edgeopt.techniques.sparsity.lottery import apply_imp

    return apply_imp(model, example, config, data=data, teacher=teacher, train_data=train_data, progress=progress)


@measured_choice("imp", order=20)
def rewind_decision(records: list[tuple[str, dict]]) -> Decision | None:
    """The rewinding point each IMP structure chose, with the measured error barriers."""
    items = []
    for structure, rec in records:
        lmc = rec.get("rewind_auto")
        if not lmc:
            continue
        barriers = ", ".join(f"epoch {k}: {v['barrier_pp']:.2f} pp" for k, v in lmc.get("barriers", {}).items())
        chosen = (f"rewound to epoch {lmc['chosen_epoch']}" if lmc.get("chosen_epoch") is not None
                  else "learning-rate rewinding (no epoch was stable)")
        items.append(f"{structure}: {chosen} (barriers {barriers}; stable below {lmc.get('threshold_pp')} pp)")
    if not items:
        return None
    return Decision(technique="imp_rewind", decision="applied", reason=(
        "IMP rewinding point chosen by linear mode connectivity (the earliest epoch from which two runs with "
        f"different data orders stay in one basin): {listing(items)}"))
