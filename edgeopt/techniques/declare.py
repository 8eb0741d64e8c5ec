"""How a technique declares itself: its config class, its handler (`@technique`), its planner proposer
(`@proposer`) and how its step records become report decisions (`@measured_choice`), each registered by
decorator in one torch-free declaration module.

A handler is `apply(model, example, config, data=None, **retraining) -> (model, record)` whose body imports
the heavy implementation on use, so that the decision layer can read the registry without torch. A proposer
takes one `PlanningContext` (edgeopt.techniques.planning) and returns a `Proposal`; the planner calls the
registered proposers in their `order`. A measured choice reads the records a technique's steps left in the
report's candidates and returns one Decision quoting them (or None when nothing was recorded)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from edgeopt.errors import ConfigError, one_line
from edgeopt.registry import Registry


class TechniqueConfig(BaseModel):
    """Base of every technique config: `technique` is the discriminator (each subclass narrows it to its
    registered name); unknown fields are errors."""

    model_config = ConfigDict(extra="forbid")
    technique: str


@dataclass(frozen=True)
class Technique:
    name: str
    config: type[TechniqueConfig]
    apply: Callable | None  # (model, example, config, data=None, **retraining) -> (model, record); None: export
    stage: Literal["model", "export"]
    needs_data: bool
    needs_retraining: bool
    summary: str
    # its whole effect is fewer MACs and parameters: a structure made only of such steps that removes under
    # policy.MIN_GAIN of both is not worth exporting and measuring
    shrinks: bool = False

    def make_config(self, params: dict | None = None) -> TechniqueConfig:
        try:
            return self.config(**(params or {}))
        except ValidationError as e:
            raise one_line(e, self.name, self.config) from None

    def apply_fn(self) -> Callable:
        if self.apply is None:
            raise ConfigError(f"{self.name} is realised at export, not applied to the model")
        return self.apply


@dataclass(frozen=True)
class Proposer:
    name: str
    order: int  # ascending: the order of the plan's structures and decisions
    fn: Callable  # (PlanningContext) -> Proposal


@dataclass(frozen=True)
class MeasuredChoice:
    technique: str  # whose step records it reads
    order: int  # ascending: the order of these decisions in the report
    fn: Callable  # (records: [(structure, record)]) -> Decision | None


TECHNIQUES: Registry[Technique] = Registry("technique")
PROPOSERS: Registry[Proposer] = Registry("proposer")
CHOICES: Registry[MeasuredChoice] = Registry("measured choice")


def declare(name: str, *, config: type[TechniqueConfig], apply: Callable | None = None,
            stage: Literal["model", "export"] = "model", needs_data: bool = False, needs_retraining: bool = False,
            shrinks: bool = False, summary: str = "", aliases: tuple[str, ...] = ()) -> Technique:
    """Register a technique (an export-stage one has no handler: its exporter realises it)."""
    if stage == "model" and apply is None:
        raise ValueError(f"model-stage technique {name!r} needs a handler")
    return TECHNIQUES.register(name, Technique(name, config, apply, stage, needs_data, needs_retraining, summary,
                                               shrinks), aliases=aliases)


def technique(name: str, *, config: type[TechniqueConfig], **declared) -> Callable[[Callable], Callable]:
    """Decorator registering a model-stage handler with its config (the other keywords as `declare`)."""
    def register(fn: Callable) -> Callable:
        declare(name, config=config, apply=fn, **declared)
        return fn
    return register


def proposer(name: str, *, order: int) -> Callable[[Callable], Callable]:
    """Decorator registering a planner proposer under `name`, run at `order` among the others."""
    def register(fn: Callable) -> Callable:
        PROPOSERS.register(name, Proposer(name, order, fn))
        return fn
    return register


def measured_choice(name: str, *, order: int) -> Callable[[Callable], Callable]:
    """Decorator registering how the records of technique `name`'s steps become one report decision."""
    def register(fn: Callable) -> Callable:
        CHOICES.register(name, MeasuredChoice(name, order, fn))
        return fn
    return register


def proposers() -> list[Proposer]:
    """The registered proposers in the order the planner runs them."""
    return sorted((p for _, p in PROPOSERS.items()), key=lambda p: p.order)


def measured_choices() -> list[MeasuredChoice]:
    """The registered measured choices in the order the report lists their decisions."""
    return sorted((c for _, c in CHOICES.items()), key=lambda c: c.order)


def forget(name: str) -> None:
    """Unregister a technique and what is registered under its name (a test that declared its own)."""
    TECHNIQUES.unregister(name)
    for registry in (PROPOSERS, CHOICES):
        if name in registry:
            registry.unregister(name)


SHOWN = 4  # candidates a measured-choice decision quotes; the rest are counted


def listing(items: list[str]) -> str:
    """`items` joined for a decision's reason: the first SHOWN, then how many more."""
    more = len(items) - SHOWN
    return "; ".join(items[:SHOWN]) + (f"; and {more} more (each candidate's record)" if more > 0 else "")


def step_records(candidates, technique: str) -> Iterator[tuple[str, dict]]:
    """(structure, record) of every `technique` step in the report's candidates, once per structure."""
    seen: set[str] = set()
    for c in candidates:
        if not c.steps:
            continue
        structure = c.structure or c.id.split("@")[0]  # reports written before candidates carried it
        for s in c.steps:
            rec = s.params.get("record") if isinstance(s.params, dict) else None
            if s.technique == technique and isinstance(rec, dict) and structure not in seen:
                seen.add(structure)
                yield structure, rec


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
