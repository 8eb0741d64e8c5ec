"""The `architecture` technique: an efficient family trained from scratch by distillation from the model,
declared in one place — its config, its handler (the implementation is retraining/architecture.py, imported on
use) and its proposer, which reads the families' latency measured beside the model."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

import edgeopt.decide.policy as policy
from edgeopt.report import Decision
from edgeopt.techniques.declare import TechniqueConfig, proposer, technique
from edgeopt.techniques.planning import PlanningContext, Proposal, Structure, skip

# efficient families (torchvision's, then timm's), built with random weights by retraining/architecture.py
ARCH_TORCHVISION = ("mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "regnet_x_400mf")
ARCH_TIMM = ("ghostnet_100", "mobileone_s0", "repvgg_a0", "convnext_atto")


class ArchitectureConfig(TechniqueConfig):
    technique: Literal["architecture"] = "architecture"
    family: Literal[ARCH_TORCHVISION + ARCH_TIMM] = "mobilenet_v3_small"  # trained from scratch
    epochs: int = Field(3, ge=1)
    lr: float = Field(0.05, gt=0.0)
    seed: int = 0


@technique("architecture", config=ArchitectureConfig, needs_data=True, needs_retraining=True,
           summary="efficient architecture: an efficient family trained from scratch by distillation from the model",
           aliases=("efficient_architecture",))
def apply(model, example, config: ArchitectureConfig, data=None, teacher=None, train_data=None, progress=None):
    from edgeopt.techniques.retraining.architecture import apply_architecture

    return apply_architecture(model, example, config, data=data, teacher=teacher, train_data=train_data,
                              progress=progress)


@proposer("architecture", order=90)
def propose(ctx: PlanningContext) -> Proposal:
    """`ctx.architectures`: the efficient families' latency measured beside the model (rows, the user's model
    first), or None when it was not measured. With --from-scratch and training data, the faster families at
    comparable capacity become candidates (trained by distillation from the model, then measured like any
    other); otherwise the decision says what switching would buy, with the numbers."""
    tech, context, table = "architecture", ctx.context, ctx.architectures
    how = ("`edgeopt architecture` measures MobileNetV3/EfficientNet/RegNet/GhostNet/MobileOne/RepVGG/"
           "ConvNeXt-atto at this input size next to your model")
    if not ctx.allowed(tech):
        return skip(tech, "excluded by --techniques")
    if table is None:
        why = ("needs training from scratch (--from-scratch)" if not context.from_scratch else
               "the efficient families' latency was not measured for this model (one (N, classes) output "
               "measured on this machine is needed)")
        return skip(tech, f"{why}; {how}")
    ran = [r for r in table if "skipped" not in r]  # families that could not be measured are listed with why
    measured = "; ".join([f"{r['name']} {r['p50_ms']:.3f} ms" for r in ran] +
                         [f"{r['name']} " + ("not measured: an optional extra is missing"
                                             if "not installed" in r["skipped"] else "not run at this input size")
                          for r in table if "skipped" in r])
    faster = policy.faster_families(ran)
    if not faster:
        return skip(tech, "no efficient family is faster than your model at comparable capacity here (measured, "
                          f"PyTorch batch 1: {measured})")
    if not context.from_scratch:
        return skip(tech, f"needs training from scratch (--from-scratch): {', '.join(faster)} would be faster "
                          f"(measured, PyTorch batch 1: {measured})")
    if not ctx.has_train_data:
        return skip(tech, f"{', '.join(faster)} faster than your model, but no training data was given to train "
                          f"them (measured: {measured})")
    epochs = policy.scratch_epochs(ctx.epochs)
    out = [Structure(f"arch-{name}", [ArchitectureConfig(family=name, epochs=epochs, seed=context.seed)],
                     f"efficient architecture {name} trained from scratch ({epochs} epochs) by distillation from "
                     "your model", f"arch-{name}", 0.0) for name in faster]
    return Proposal(out, [Decision(
        technique=tech, decision="applied",
        reason=f"{', '.join(faster)} measured faster than your model at comparable capacity (PyTorch batch 1: "
               f"{measured}): trained by distillation from your model, then measured on the runtime beside the "
               "compressed candidates")])
