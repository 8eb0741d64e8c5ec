"""The `qat` technique: quantization-aware training (torch.ao fake-quant), exported as INT8 Q/DQ; the
implementation is retraining/qat.py, imported on use. Which formats may retry INT8 with it is planned by
decide/precisions.py (the precisions are planned there)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from edgeopt.techniques.declare import TechniqueConfig, technique


class QATConfig(TechniqueConfig):
    technique: Literal["qat"] = "qat"
    epochs: int = Field(2, ge=1)
    lr: float = Field(0.005, gt=0.0)
    per_channel: bool = True
    distill: bool = True


@technique("qat", config=QATConfig, needs_data=True, needs_retraining=True,
           summary="quantization-aware training (torch.ao fake-quant), exported as INT8 Q/DQ",
           aliases=("quantization_aware_training",))
def apply(model, example, config: QATConfig, data=None, teacher=None, train_data=None, progress=None):
    from edgeopt.techniques.retraining.qat import apply_qat

    return apply_qat(model, example, config, data=data, teacher=teacher, train_data=train_data, progress=progress)
