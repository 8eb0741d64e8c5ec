"""A fake technique for tests: it wraps the model's last Linear layer in a Sequential (new parameter names, so
the search does not take the result for the original model) with its weights scaled by `factor` (1.0 by
default: the model computes the same outputs), and records what it did. It lives outside edgeopt on purpose:
this one module — its config, its handler, its proposer and how its records become a report decision — must
be all it takes for plan, search, report.json and the report's decisions to use it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from edgeopt.report import Decision
from edgeopt.techniques import TechniqueConfig, measured_choice, proposer, technique
from edgeopt.techniques.planning import PlanningContext, Proposal, Structure, skip

NAME = "scale_head"


class ScaleHeadConfig(TechniqueConfig):
    technique: Literal["scale_head"] = "scale_head"
    factor: float = Field(1.0, gt=0.0)


@technique(NAME, config=ScaleHeadConfig, summary="scale the last Linear layer's weights (a test technique)",
           aliases=("head_scaling",))
def apply(model, example, config: ScaleHeadConfig, data=None):
    import copy

    import torch
    from torch import nn

    model = copy.deepcopy(model)
    name, last = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(config.factor)
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, nn.Sequential(last))
    return model, {"layer": name, "factor": config.factor}


@proposer(NAME, order=95)
def propose(ctx: PlanningContext) -> Proposal:
    if not ctx.allowed(NAME):
        return skip(NAME, "excluded by --techniques")
    if not ctx.summary.layers.get("linear"):
        return skip(NAME, "no Linear layer to scale")
    return Proposal([Structure("scale-head", [ScaleHeadConfig()], "fake technique: the head's weights scaled by 1.0",
                               "scale-head", 1.0)],
                    [Decision(technique=NAME, decision="applied", reason="the fake technique is proposed")])


@measured_choice(NAME, order=95)
def scaled(records: list[tuple[str, dict]]) -> Decision | None:
    items = [f"{structure}: {rec['layer']} x {rec['factor']}" for structure, rec in records if "layer" in rec]
    return Decision(technique="head_scaled", decision="applied", reason="; ".join(items)) if items else None
