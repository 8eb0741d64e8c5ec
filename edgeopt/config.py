"""The deploy context: the lecture's four questions (where, what hurts, how much accuracy, can we retrain)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgeopt.errors import ConfigError


class DeployContext(BaseModel):
    """What the user told us about the deployment. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    target: str = "local"
    goal: Literal["latency", "size"] = "latency"
    max_accuracy_drop: float = Field(1.0, ge=0.0, le=100.0, description="percentage points")
    retrain: bool = False
    # the model may be trained from scratch (implies retrain): pruning at initialisation becomes possible
    from_scratch: bool = False
    # per-layer pruning sensitivity measured first; sensitive layers are then pruned less
    sensitivity: bool = False
    latency_budget_ms: float | None = Field(None, gt=0)
    size_budget_mb: float | None = Field(None, gt=0)
    time_budget_s: float | None = Field(None, gt=0)
    seed: int = 0
    calib_random: bool = False  # --calib random: INT8 scales from random inputs (meaningless; marked in the report)
    epochs: int = Field(2, ge=1, description="fine-tuning epochs per candidate when retraining is allowed")
    techniques: list[str] | None = None  # restrict the planner to these techniques
    runtimes: list[str] | None = None  # restrict measurement to these runtimes
    threads: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _scratch_implies_retrain(self) -> DeployContext:
        if self.from_scratch:
            self.retrain = True
        return self

    @field_validator("max_accuracy_drop")
    @classmethod
    def _finite(cls, v: float) -> float:
        if v != v:  # NaN
            raise ValueError("must be a number")
        return v


class DataOptions(BaseModel):
    """How a data spec (image folder, module:function) is read and split. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    image_size: int | tuple[int, int] | None = None  # default: the model's input size
    # resize the shorter side to `resize`, then center-crop `crop` (default: plain resize to image_size)
    resize: int | None = Field(None, gt=0)
    crop: int | tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    val_split: float = Field(0.2, gt=0.0, lt=1.0)
    seed: int = 0
    augment: bool = True  # random resized crop + horizontal flip, fine-tuning only
    calib_size: int = Field(300, ge=1, description="stratified calibration sample of the training split")
    batch_size: int = Field(32, ge=1)
    workers: int | None = Field(None, ge=0, description="DataLoader worker processes (default: cores - 1)")
    masks: str | None = None  # segmentation: a folder of masks with the same file stems as the images


def make_context(**kwargs) -> DeployContext:
    """Build a DeployContext, turning pydantic's multi-line errors into one typed line."""
    try:
        return DeployContext(**kwargs)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "context"
        raise ConfigError(f"invalid {where}: {first['msg']}") from None


class ModelSummary(BaseModel):
    """What the planner may know about a model (filled by analyze)."""

    params: int
    macs: int
    input_shape: list[int]
    num_outputs: int | None = None
    layers: dict[str, int] = Field(default_factory=dict)  # conv, depthwise_conv, linear, attention, norm ...
    prunable_groups: int = 0
    min_channels: int | None = None  # narrowest prunable layer (bounds useful channel rounding)
    unprunable: list[str] = Field(default_factory=list)  # "layer: reason"
    size_bytes: int = 0
