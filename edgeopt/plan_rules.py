"""Small rules shared by the planner's proposers (L3, pure: no backend imports)."""

from __future__ import annotations

from edgeopt.config import DeployContext
from edgeopt.techniques import TECHNIQUES

TIGHT_PP, LOOSE_PP = 0.5, 2.0


def budget_kind(max_drop: float) -> str:
    return "tight" if max_drop <= TIGHT_PP else "loose" if max_drop >= LOOSE_PP else "normal"


def allowed(context: DeployContext, technique: str) -> bool:
    """Whether --techniques (when given) lets the planner use `technique` (aliases count)."""
    if context.techniques is None:
        return True
    return TECHNIQUES.canonical(technique) in {TECHNIQUES.canonical(t) for t in context.techniques}
