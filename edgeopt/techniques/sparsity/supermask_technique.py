"""The `supermask` technique: a mask on the random initial weights (edge-popup scores, large-final,
magnitude-increase); the implementation is sparsity/supermask.py, imported on use. Applied on request (API,
CLI), not proposed by the planner."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from edgeopt.techniques.declare import TechniqueConfig, technique


class SupermaskConfig(TechniqueConfig):
    technique: Literal["supermask"] = "supermask"
    method: Literal["edge_popup", "large_final", "magnitude_increase"] = "edge_popup"
    sparsity: float = Field(0.5, gt=0.0, lt=1.0)
    epochs: int = Field(3, ge=1)
    lr: float | None = Field(None, gt=0.0)
    seed: int = 0


@technique("supermask", config=SupermaskConfig, needs_data=True, needs_retraining=True,
           summary="supermask: a mask on the random initial weights (edge-popup scores, large-final, "
                   "magnitude-increase)", aliases=("edge_popup",))
def apply(model, example, config: SupermaskConfig, data=None, teacher=None, train_data=None, progress=None):
    from edgeopt.techniques.sparsity.supermask import apply_supermask

    return apply_supermask(model, example, config, data=data, teacher=teacher, train_data=train_data,
                           progress=progress)
