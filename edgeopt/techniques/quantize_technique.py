"""The `quantize` technique: reduced precision, realised by the exporter/runtime at export (no handler). Which
precisions each format is built at is planned by decide/precisions.py."""

from __future__ import annotations

from typing import Literal

from edgeopt.techniques.declare import TechniqueConfig, declare


class QuantizeConfig(TechniqueConfig):
    technique: Literal["quantize"] = "quantize"
    precision: Literal["fp16", "bf16", "int8"] = "int8"
    method: str = "ptq"


declare("quantize", config=QuantizeConfig, stage="export", needs_data=True, needs_retraining=False,
        summary="reduced precision realised by the exporter/runtime", aliases=("quantization",))
