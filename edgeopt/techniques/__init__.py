"""Techniques registry: name -> (config class, apply function, stage, needs data?, needs retraining?).

Model-stage techniques change the PyTorch model (prune, factorize, fine-tune); export-stage ones are
realised by an exporter at a precision (quantize). Apply functions are imported on use."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeopt.errors import ConfigError, one_line
from edgeopt.registry import Registry


class PruneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
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


class FactorizeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: Literal["tucker", "cp", "svd"] = "tucker"
    energy: float | None = Field(0.9, gt=0.0, le=1.0)
    macs_reduction: float | None = Field(None, gt=0.0, lt=1.0)
    rank_method: Literal["energy", "vbmf"] = "energy"
    layers: list[str] | None = None
    min_params: int = Field(4096, ge=0)


class BNRecalibrateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    batches: int = Field(20, ge=1)


class FineTuneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(2, ge=1)
    lr: float = Field(0.01, gt=0)
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.7, ge=0.0, le=1.0)  # weight of the soft-target (KD) loss vs the hard-label loss
    seed: int = 0
    keep_sparsity: bool = False  # zero weights stay zero (after unstructured / 2:4 sparsity)


class QuantizeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    precision: Literal["fp16", "bf16", "int8"] = "int8"
    method: str = "ptq"


class UnstructuredConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sparsity: float = Field(0.5, ge=0.0, lt=1.0)
    pattern: Literal["global", "2:4"] = "global"


class IMPConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sparsity: float = Field(0.8, ge=0.0, lt=1.0)
    rounds: int = Field(3, ge=1)
    epochs: int = Field(3, ge=1)
    rewind: Literal["init", "epoch", "lr"] = "lr"
    rewind_epoch: int = Field(1, ge=1)


class PruneAtInitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    method: Literal["snip", "grasp", "synflow"] = "snip"
    sparsity: float = Field(0.8, ge=0.0, lt=1.0)
    epochs: int = Field(5, ge=1)
    lr: float = Field(0.05, gt=0.0)
    seed: int = 0


class QATConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(2, ge=1)
    lr: float = Field(0.005, gt=0.0)
    per_channel: bool = True
    distill: bool = True


@dataclass(frozen=True)
class Technique:
    name: str
    config: type[BaseModel]
    apply_ref: str | None  # "module:function"; None for export-stage techniques
    stage: Literal["model", "export"]
    needs_data: bool
    needs_retraining: bool
    summary: str

    def make_config(self, params: dict | None = None) -> BaseModel:
        try:
            return self.config(**(params or {}))
        except ValidationError as e:
            raise one_line(e, self.name, self.config) from None

    def apply_fn(self):
        if self.apply_ref is None:
            raise ConfigError(f"{self.name} is realised at export, not applied to the model")
        module, _, fn = self.apply_ref.partition(":")
        return getattr(importlib.import_module(module), fn)


TECHNIQUES: Registry[Technique] = Registry("technique")
TECHNIQUES.register("prune", Technique(
    "prune", PruneConfig, "edgeopt.techniques.prune:apply_prune", "model", needs_data=False,
    needs_retraining=False, summary="structured channel pruning (Torch-Pruning dependency graph)"),
    aliases=("structured_pruning",))
TECHNIQUES.register("factorize", Technique(
    "factorize", FactorizeConfig, "edgeopt.techniques.factorize:apply_factorize", "model", needs_data=False,
    needs_retraining=False, summary="low-rank factorization: Tucker-2 / CP convs, SVD linears (tensorly)"),
    aliases=("low_rank", "tucker"))
TECHNIQUES.register("bn_recalibrate", Technique(
    "bn_recalibrate", BNRecalibrateConfig, "edgeopt.techniques.bn_recal:apply_bn_recalibrate", "model",
    needs_data=True, needs_retraining=False,
    summary="re-estimate BatchNorm statistics on unlabeled calibration data"), aliases=("bn_recal",))
TECHNIQUES.register("quantize", Technique(
    "quantize", QuantizeConfig, None, "export", needs_data=True, needs_retraining=False,
    summary="reduced precision realised by the exporter/runtime"), aliases=("quantization",))
TECHNIQUES.register("fine_tune", Technique(
    "fine_tune", FineTuneConfig, "edgeopt.techniques.finetune:apply_finetune", "model", needs_data=True,
    needs_retraining=True, summary="fine-tune with response-based (Hinton) distillation from the original model"),
    aliases=("finetune", "distill", "kd"))
TECHNIQUES.register("unstructured", Technique(
    "unstructured", UnstructuredConfig, "edgeopt.techniques.unstructured:apply_unstructured", "model",
    needs_data=False, needs_retraining=False,
    summary="global magnitude / 2:4 weight sparsity: smaller compressed size, no dense-CPU speedup"),
    aliases=("unstructured_pruning", "sparsity"))
TECHNIQUES.register("imp", Technique(
    "imp", IMPConfig, "edgeopt.techniques.lottery:apply_imp", "model", needs_data=True, needs_retraining=True,
    summary="iterative magnitude pruning with rewinding (lottery tickets / LR rewinding)"),
    aliases=("lottery_ticket", "lth"))
TECHNIQUES.register("prune_at_init", Technique(
    "prune_at_init", PruneAtInitConfig, "edgeopt.techniques.prune_at_init:apply_prune_at_init", "model",
    needs_data=True, needs_retraining=True,
    summary="SNIP / GraSP / SynFlow masks on a fresh init, then training from scratch"),
    aliases=("snip", "grasp", "synflow"))
TECHNIQUES.register("qat", Technique(
    "qat", QATConfig, "edgeopt.techniques.qat:apply_qat", "model", needs_data=True, needs_retraining=True,
    summary="quantization-aware training (torch.ao fake-quant), exported as INT8 Q/DQ"),
    aliases=("quantization_aware_training",))
