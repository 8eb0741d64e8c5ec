"""Techniques registry: name -> (config class, apply function, stage, needs data?, needs retraining?).

Each technique is "a config + one verb" (as torchao's `quantize_(model, Config())`): a pydantic config whose
`technique` field names it, and an apply function `apply(model, example, config, data=...) -> (model,
record)`. A planned step IS its config: `parse_step({"technique": "prune", "ratio": 0.3})` validates it
through a discriminated union of every registered config, so a bad step fails at planning time.

Model-stage techniques change the PyTorch model (prune, factorize, fine-tune); export-stage ones are
realised by an exporter at a precision (quantize). The configs live here and the apply functions in the
technique modules, referenced as "module:function" strings and imported on use: the handler modules import
torch at module level, and the decision layer reads these configs without paying for (or needing) torch.
tests/test_registry.py resolves every reference and checks the handler's signature."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgeopt.errors import ConfigError, one_line
from edgeopt.registry import Registry


class TechniqueConfig(BaseModel):
    """Base of every technique config: `technique` is the discriminator (each subclass narrows it to its
    registered name); unknown fields are errors."""

    model_config = ConfigDict(extra="forbid")
    technique: str


class PruneConfig(TechniqueConfig):
    technique: Literal["prune"] = "prune"
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
    # re-solve the layers fed by pruned channels by least squares on calibration inputs (no retraining)
    reconstruct: bool = False
    # widths allocated under this fraction of the model's latency, predicted by a latency table measured on
    # `lut_runtime` (replaces the uniform `ratio`)
    latency_target: float | None = Field(None, gt=0.0, lt=1.0)
    lut_runtime: str | None = None  # None: the first runtime the latency table is measured on
    lut_precision: Literal["fp32", "int8"] = "fp32"  # the table's precision: the candidate's, for INT8 ones


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


class BNRecalibrateConfig(TechniqueConfig):
    technique: Literal["bn_recalibrate"] = "bn_recalibrate"
    batches: int = Field(20, ge=1)


# the distillation kinds of edgeopt.training (kept here too: the decision layer reads configs without torch)
DISTILL_KINDS = ("response", "feature", "relation")


class FineTuneConfig(TechniqueConfig):
    technique: Literal["fine_tune"] = "fine_tune"
    epochs: int = Field(2, ge=1)
    lr: float = Field(0.01, gt=0)
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.7, ge=0.0, le=1.0)  # weight of the soft-target (KD) loss vs the hard-label loss
    seed: int = 0
    keep_sparsity: bool = False  # zero weights stay zero (after unstructured / 2:4 sparsity)
    # response | feature | relation | a "+" combination | "auto": short runs of each on a subset of the
    # training data, the best held-out accuracy wins, then the full fine-tuning with it
    kind: str = "response"

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        parts = [p.strip().lower() for p in v.replace(",", "+").split("+") if p.strip()]
        if parts in (["auto"], ["none"]):
            return parts[0]
        bad = [p for p in parts if p not in DISTILL_KINDS]
        if bad or not parts:
            raise ValueError(f"unknown distillation kind {v!r}: use auto, none, {', '.join(DISTILL_KINDS)} "
                             "or a '+' combination")
        return "+".join(k for k in DISTILL_KINDS if k in parts)


class QuantizeConfig(TechniqueConfig):
    technique: Literal["quantize"] = "quantize"
    precision: Literal["fp16", "bf16", "int8"] = "int8"
    method: str = "ptq"


class UnstructuredConfig(TechniqueConfig):
    technique: Literal["unstructured"] = "unstructured"
    sparsity: float = Field(0.5, ge=0.0, lt=1.0)
    pattern: Literal["global", "2:4"] = "global"


class IMPConfig(TechniqueConfig):
    technique: Literal["imp"] = "imp"
    sparsity: float = Field(0.8, ge=0.0, lt=1.0)
    rounds: int = Field(3, ge=1)
    epochs: int = Field(3, ge=1)
    # "auto": the earliest epoch from which two differently-ordered runs are linearly mode-connected
    rewind: Literal["init", "epoch", "lr", "auto"] = "lr"
    rewind_epoch: int = Field(1, ge=1)


class SlimmingConfig(TechniqueConfig):
    """Network Slimming: `epochs` of training with `strength * sum|BN gamma|` added, then BN-scale pruning."""

    technique: Literal["slimming"] = "slimming"
    ratio: float = Field(0.3, ge=0.0, lt=1.0)
    epochs: int = Field(2, ge=1)
    # the paper's 1e-4 assumes ~160 epochs; over 2 fine-tuning epochs it leaves gammas where they were (measured on
    # a small CNN: mean |gamma| 1.095 -> 1.095), 0.1 shrinks them by 15% at <= 1.4 pp after distillation, 1.0 collapses
    # them (74% under 0.01)
    strength: float = Field(0.1, gt=0.0)
    lr: float = Field(0.01, gt=0.0)
    scope: Literal["local", "global"] = "global"
    round_to: int | None = Field(None, ge=1)
    max_layer_ratio: float = Field(0.9, gt=0.0, le=1.0)
    seed: int = 0


class PruneAtInitConfig(TechniqueConfig):
    technique: Literal["prune_at_init"] = "prune_at_init"
    method: Literal["snip", "grasp", "synflow"] = "snip"
    sparsity: float = Field(0.8, ge=0.0, lt=1.0)
    epochs: int = Field(5, ge=1)
    lr: float = Field(0.05, gt=0.0)
    seed: int = 0


class QATConfig(TechniqueConfig):
    technique: Literal["qat"] = "qat"
    epochs: int = Field(2, ge=1)
    lr: float = Field(0.005, gt=0.0)
    per_channel: bool = True
    distill: bool = True


class DepthConfig(TechniqueConfig):
    technique: Literal["depth_prune"] = "depth_prune"
    blocks: int = Field(1, ge=1)  # residual blocks removed (the cheapest by measured cost)
    epochs: int = Field(0, ge=0)  # fine-tuning from the original when training data is given
    lr: float = Field(0.01, gt=0.0)
    bn_batches: int = Field(20, ge=1)


class SupermaskConfig(TechniqueConfig):
    technique: Literal["supermask"] = "supermask"
    method: Literal["edge_popup", "large_final", "magnitude_increase"] = "edge_popup"
    sparsity: float = Field(0.5, gt=0.0, lt=1.0)
    epochs: int = Field(3, ge=1)
    lr: float | None = Field(None, gt=0.0)
    seed: int = 0


# efficient families (torchvision's, then timm's), built with random weights by techniques/retraining/architecture.py
ARCH_TORCHVISION = ("mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "regnet_x_400mf")
ARCH_TIMM = ("ghostnet_100", "mobileone_s0", "repvgg_a0", "convnext_atto")


class ArchitectureConfig(TechniqueConfig):
    technique: Literal["architecture"] = "architecture"
    family: Literal[ARCH_TORCHVISION + ARCH_TIMM] = "mobilenet_v3_small"  # trained from scratch
    epochs: int = Field(3, ge=1)
    lr: float = Field(0.05, gt=0.0)
    seed: int = 0


@dataclass(frozen=True)
class Technique:
    name: str
    config: type[TechniqueConfig]
    apply_ref: str | None  # "module:function"; None for export-stage techniques
    stage: Literal["model", "export"]
    needs_data: bool
    needs_retraining: bool
    summary: str

    def make_config(self, params: dict | None = None) -> TechniqueConfig:
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
    "prune", PruneConfig, "edgeopt.techniques.pruning.prune:apply_prune", "model", needs_data=False,
    needs_retraining=False, summary="structured channel pruning (Torch-Pruning dependency graph)"),
    aliases=("structured_pruning",))
TECHNIQUES.register("factorize", Technique(
    "factorize", FactorizeConfig, "edgeopt.techniques.lowrank.factorize:apply_factorize", "model", needs_data=False,
    needs_retraining=False, summary="low-rank factorization: Tucker-2 / CP convs, SVD linears (tensorly)"),
    aliases=("low_rank", "tucker"))
TECHNIQUES.register("bn_recalibrate", Technique(
    "bn_recalibrate", BNRecalibrateConfig, "edgeopt.techniques.repair.bn_recal:apply_bn_recalibrate", "model",
    needs_data=True, needs_retraining=False,
    summary="re-estimate BatchNorm statistics on unlabeled calibration data"), aliases=("bn_recal",))
TECHNIQUES.register("quantize", Technique(
    "quantize", QuantizeConfig, None, "export", needs_data=True, needs_retraining=False,
    summary="reduced precision realised by the exporter/runtime"), aliases=("quantization",))
TECHNIQUES.register("fine_tune", Technique(
    "fine_tune", FineTuneConfig, "edgeopt.techniques.retraining.finetune:apply_finetune", "model", needs_data=True,
    needs_retraining=True,
    summary="fine-tune with distillation from the original model (response, feature, relation; auto: screened)"),
    aliases=("finetune", "distill", "kd"))
TECHNIQUES.register("unstructured", Technique(
    "unstructured", UnstructuredConfig, "edgeopt.techniques.sparsity.unstructured:apply_unstructured", "model",
    needs_data=False, needs_retraining=False,
    summary="global magnitude / 2:4 weight sparsity: smaller compressed size, no dense-CPU speedup"),
    aliases=("unstructured_pruning", "sparsity"))
TECHNIQUES.register("imp", Technique(
    "imp", IMPConfig, "edgeopt.techniques.sparsity.lottery:apply_imp", "model", needs_data=True, needs_retraining=True,
    summary="iterative magnitude pruning with rewinding (lottery tickets / LR rewinding)"),
    aliases=("lottery_ticket", "lth"))
TECHNIQUES.register("slimming", Technique(
    "slimming", SlimmingConfig, "edgeopt.techniques.pruning.slimming:apply_slimming", "model", needs_data=True,
    needs_retraining=True,
    summary="network slimming: L1 sparsity training of BatchNorm scales, then BN-scale channel pruning"),
    aliases=("network_slimming",))
TECHNIQUES.register("prune_at_init", Technique(
    "prune_at_init", PruneAtInitConfig, "edgeopt.techniques.sparsity.prune_at_init:apply_prune_at_init", "model",
    needs_data=True, needs_retraining=True,
    summary="SNIP / GraSP / SynFlow masks on a fresh init, then training from scratch"),
    aliases=("snip", "grasp", "synflow"))
TECHNIQUES.register("qat", Technique(
    "qat", QATConfig, "edgeopt.techniques.retraining.qat:apply_qat", "model", needs_data=True, needs_retraining=True,
    summary="quantization-aware training (torch.ao fake-quant), exported as INT8 Q/DQ"),
    aliases=("quantization_aware_training",))
TECHNIQUES.register("depth_prune", Technique(
    "depth_prune", DepthConfig, "edgeopt.techniques.pruning.depth:apply_depth", "model", needs_data=True,
    needs_retraining=False,
    summary="layer-level pruning: remove the residual blocks whose measured removal costs least"),
    aliases=("depth", "layer_pruning", "block_pruning"))
TECHNIQUES.register("supermask", Technique(
    "supermask", SupermaskConfig, "edgeopt.techniques.sparsity.supermask:apply_supermask", "model", needs_data=True,
    needs_retraining=True,
    summary="supermask: a mask on the random initial weights (edge-popup scores, large-final, magnitude-increase)"),
    aliases=("edge_popup",))
TECHNIQUES.register("architecture", Technique(
    "architecture", ArchitectureConfig, "edgeopt.techniques.retraining.architecture:apply_architecture", "model",
    needs_data=True, needs_retraining=True,
    summary="efficient architecture: an efficient family trained from scratch by distillation from the model"),
    aliases=("efficient_architecture",))


def parse_step(step: TechniqueConfig | dict) -> TechniqueConfig:
    """A planned step as its typed config; a dict is validated by its technique's config class (unknown
    technique names get did-you-mean, bad values and unknown keys a one-line ConfigError)."""
    if isinstance(step, TechniqueConfig):
        return step
    data = dict(step)
    name = TECHNIQUES.canonical(str(data.get("technique", "")))  # aliases resolve; unknown names fail here
    data["technique"] = name
    return TECHNIQUES.get(name).make_config(data)


def allowed(techniques: list[str] | None, technique: str) -> bool:
    """Whether a --techniques selection (None = all) lets the planner use `technique` (aliases count)."""
    if techniques is None:
        return True
    return TECHNIQUES.canonical(technique) in {TECHNIQUES.canonical(t) for t in techniques}


def apply_step(model, example, step: TechniqueConfig | dict, data=None, *, teacher=None, train_data=None,
               progress=None):
    """Apply one model-stage step: `(model, record)`. Retraining techniques also get the teacher (default: the
    model itself), the training data and the progress display; the others only the calibration `data`."""
    config = parse_step(step)
    tech = TECHNIQUES.get(config.technique)
    extra = ({"teacher": model if teacher is None else teacher, "train_data": train_data, "progress": progress}
             if tech.needs_retraining else {})
    return tech.apply_fn()(model, example, config, data=data, **extra)
