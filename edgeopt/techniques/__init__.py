"""Techniques registry: every technique declares itself in one torch-free module, and this package imports
those declarations so that they register.

Each technique is "a config + one verb" (as torchao's `quantize_(model, Config())`): a pydantic config whose
`technique` field names it, and a handler `apply(model, example, config, data=None, **retraining) -> (model,
record)` registered with `@technique` (edgeopt/techniques/declare.py) whose body imports the implementation
on use; beside them, the technique's planner proposer (`@proposer`, run in its `order` by decide/plan.py) and,
where a step chooses something by measurement, how its records become a report decision (`@measured_choice`).
A planned step IS its config: `parse_step({"technique": "prune", "ratio": 0.3})` validates it through the
config class of the named technique, so a bad step fails at planning time.

Model-stage techniques change the PyTorch model (prune, factorize, fine-tune); export-stage ones are realised
by an exporter at a precision (quantize). The implementations import torch at module level; the declarations
do not, so the decision layer reads the registry without paying for (or needing) torch.
tests/techniques/test_registry.py checks every handler's signature and the implementation it imports.

The implementations are grouped by concept: pruning/ (criteria, allocation, surgery, depth, slimming),
repair/ (reconstruction, BatchNorm re-estimation), lowrank/, sparsity/ (magnitude, lottery tickets, pruning at
init, supermasks) and retraining/ (fine-tuning, QAT, efficient architectures)."""

from __future__ import annotations

from edgeopt.techniques.declare import (
    CHOICES,
    PROPOSERS,
    TECHNIQUES,
    Technique,
    TechniqueConfig,
    allowed,
    apply_step,
    declare,
    forget,
    measured_choice,
    parse_step,
    proposer,
    proposers,
    technique,
)

# the declarations, imported so that they register (proposers and measured choices carry their own order)
from edgeopt.techniques.lowrank.factorize_technique import FactorizeConfig
from edgeopt.techniques.pruning.depth_technique import DepthConfig
from edgeopt.techniques.pruning.prune_technique import PruneConfig
from edgeopt.techniques.pruning.slimming_technique import SlimmingConfig
from edgeopt.techniques.quantize_technique import QuantizeConfig
from edgeopt.techniques.repair.bn_recalibrate_technique import BNRecalibrateConfig
from edgeopt.techniques.retraining.architecture_technique import ARCH_TIMM, ARCH_TORCHVISION, ArchitectureConfig
from edgeopt.techniques.retraining.fine_tune_technique import DISTILL_KINDS, FineTuneConfig
from edgeopt.techniques.retraining.qat_technique import QATConfig
from edgeopt.techniques.sparsity.imp_technique import IMPConfig
from edgeopt.techniques.sparsity.prune_at_init_technique import PruneAtInitConfig
from edgeopt.techniques.sparsity.supermask_technique import SupermaskConfig
from edgeopt.techniques.sparsity.unstructured_technique import UnstructuredConfig

__all__ = [
    "CHOICES", "PROPOSERS", "TECHNIQUES", "Technique", "TechniqueConfig", "allowed", "apply_step", "declare", "forget",
    "measured_choice", "parse_step", "proposer", "proposers", "technique",
    "ARCH_TIMM", "ARCH_TORCHVISION", "DISTILL_KINDS", "ArchitectureConfig", "BNRecalibrateConfig", "DepthConfig",
    "FactorizeConfig", "FineTuneConfig", "IMPConfig", "PruneAtInitConfig", "PruneConfig", "QATConfig",
    "QuantizeConfig", "SlimmingConfig", "SupermaskConfig", "UnstructuredConfig",
]
