"""Choices the retraining steps made by measurement inside a candidate (which distillation kind, which
rewinding point, what sparsity training did to the BatchNorm scales), lifted from the step records into
report decisions: each technique that makes such a choice registers how its records read (`@measured_choice`
in its declaration); this loop hands each one its steps' records, once per structure."""

from __future__ import annotations

from edgeopt.report import Candidate, Decision
from edgeopt.techniques.declare import measured_choices as registered
from edgeopt.techniques.declare import step_records


def measured_choices(candidates: list[Candidate]) -> list[Decision]:
    found = (c.fn(list(step_records(candidates, c.technique))) for c in registered())
    return [d for d in found if d is not None]
