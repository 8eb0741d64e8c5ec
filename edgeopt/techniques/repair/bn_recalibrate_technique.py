"""The `bn_recalibrate` technique: BatchNorm statistics re-estimated on unlabeled calibration data (the
implementation is repair/bn_recal.py, imported on use). The pruning proposer appends it to pruned structures."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from edgeopt.techniques.declare import TechniqueConfig, technique


class BNRecalibrateConfig(TechniqueConfig):
    technique: Literal["bn_recalibrate"] = "bn_recalibrate"
    batches: int = Field(20, ge=1)


@technique("bn_recalibrate", config=BNRecalibrateConfig, needs_data=True, needs_retraining=False, shrinks=True,
           summary="re-estimate BatchNorm statistics on unlabeled calibration data", aliases=("bn_recal",))
def apply(model, example, config: BNRecalibrateConfig, data=None):
    from edgeopt.techniques.repair.bn_recal import apply_bn_recalibrate

    return apply_bn_recalibrate(model, example, config, data=data)
