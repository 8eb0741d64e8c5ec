"""The decision layer: deploy context + target profile + model summary -> Plan.

Pure: no backend imports, no measurement. Every candidate says why it was proposed and every technique left
out says why; ladders and thresholds come from decide/policy.py, precisions from decide/precisions.py, and the
model structures from the proposers the techniques register (edgeopt.techniques), called in their order with
one PlanningContext. Each planned step is a typed technique config (validated here, at planning time). The
search then proves or rejects each candidate by measurement — the planner proposes, it does not promise."""

from __future__ import annotations

from pydantic import BaseModel, Field, SerializeAsAny, field_validator

from edgeopt.config import DeployContext, ModelSummary
from edgeopt.decide import policy, serving
from edgeopt.decide.precisions import precision_pairs, qat_formats
from edgeopt.formats import format_of_runtime, layer_timing_runtimes, precisions_of_format
from edgeopt.report import Decision
from edgeopt.targets import TargetProfile
from edgeopt.targets.host import gpu_matches
from edgeopt.techniques import TECHNIQUES, TechniqueConfig, parse_step, proposers
from edgeopt.techniques.planning import PlanningContext, Structure, finetune_step


class CandidateSpec(BaseModel):
    id: str
    structure: str  # key of the model-stage steps: candidates sharing it share one pruned model
    # typed technique configs (discriminated on `technique`); dicts are validated on the way in
    steps: list[SerializeAsAny[TechniqueConfig]] = Field(default_factory=list)
    format: str  # backend (format) name: onnx, openvino, tensorrt
    precision: str = "fp32"
    reason: str = ""
    # structures of one family are ordered by `level` (more aggressive = higher); accuracy is expected to fall
    # with the level, which is what lets the search bisect instead of trying every level
    family: str | None = None
    level: float = 0.0
    # families of one screening group (e.g. "prune-criterion", "factorize-method") answer the same question;
    # the search measures them all at one common level and bisects only the best (policy.SCREEN_KEEP)
    screen: str | None = None

    @field_validator("steps", mode="before")
    @classmethod
    def _typed_steps(cls, steps):
        return [parse_step(s) for s in steps or []]


class Plan(BaseModel):
    candidates: list[CandidateSpec]
    baseline_id: str
    decisions: list[Decision] = Field(default_factory=list)
    measure_locally: bool = True
    notes: list[str] = Field(default_factory=list)
    qat_formats: list[str] = Field(default_factory=list)  # formats whose INT8 may be retried with QAT
    qat_epochs: int = 2

    def to_text(self) -> str:
        lines = [f"{len(self.candidates)} candidates (baseline: {self.baseline_id}); latency "
                 f"{'measured on this machine' if self.measure_locally else 'estimated (roofline)'}"]
        lines += [f"  - {c.id}: {c.reason}" for c in self.candidates]
        lines += ["decisions:"] + [f"  - {d.technique}: {d.decision} — {d.reason}" for d in self.decisions]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# runtime -> format and format -> precisions, read live from the formats table (a light import: the rows name
# their modules, nothing heavy is imported until a row is used)
FORMAT_OF_RUNTIME = format_of_runtime()
PRECISIONS_OF_FORMAT = precisions_of_format()


def runs_here(target: TargetProfile, local: TargetProfile) -> bool:
    """Whether latency measured on this machine stands for the target's."""
    if target.detected:
        return True
    if target.kind == local.kind == "gpu":  # a GPU target on a host with that GPU (local.arch: its device model)
        return gpu_matches(target, local.arch)
    return (target.kind == local.kind == "cpu" and target.arch == local.arch
            and set(target.isa_features) <= set(local.isa_features))


def _runtimes(context, target: TargetProfile, here: bool, installed_runtimes: list[str],
              precisions_of_format: dict, decisions: list[Decision], notes: list[str]) -> list[str]:
    """The runtimes, in the target's order of preference, whose artifacts are built and measured (or
    estimated, for a target that is not this machine)."""
    wanted = context.runtimes or target.runtimes
    runtimes: list[str] = []
    for rt in wanted:
        if rt not in FORMAT_OF_RUNTIME:
            decisions.append(Decision(technique=f"runtime:{rt}", decision="skipped", reason="unknown runtime"))
        elif here and rt not in installed_runtimes:
            decisions.append(Decision(technique=f"runtime:{rt}", decision="skipped",
                                      reason="not installed or no device for it on this machine"))
        else:
            runtimes.append(rt)
    if not here:
        # the artifacts are built here and deployed there; latency is estimated from the target profile
        first = runtimes[0] if runtimes else "onnxruntime"
        # TensorRT engines are specific to the GPU (and TensorRT version) they are built on: they are always
        # built on the device, from the ONNX exported here
        if (FORMAT_OF_RUNTIME.get(first) not in precisions_of_format or first not in installed_runtimes
                or first == "tensorrt"):
            notes.append(f"{first} artifacts are not built on this machine: exporting ONNX, from which "
                         f"{first} builds its engine on the device")
            first = "onnxruntime"
        runtimes = [first]
        notes.append(f"{target.name} is not this machine: latencies are roofline estimates" + (
            f" (its per-call overhead of {target.call_overhead_ms} ms is assumed, not measured)"
            if target.call_overhead_estimated else ""))
    if not runtimes:
        runtimes = ["onnxruntime"]
    return runtimes


def plan(context: DeployContext, target: TargetProfile, summary: ModelSummary, local: TargetProfile,
         installed_runtimes: list[str], has_calib_data: bool = False,
         precisions_of_format: dict[str, tuple[str, ...]] | None = None, has_train_data: bool = False,
         sensitivity: dict[str, float] | None = None, architectures: list[dict] | None = None,
         has_class_labels: bool | None = None, train_steps_per_epoch: int | None = None) -> Plan:
    """`sensitivity`: per-layer drops measured by `--sensitivity`; `architectures`: efficient families' latency
    measured beside the model; `has_class_labels`: class labels for a classifier (default: has_train_data);
    `train_steps_per_epoch`: the optimizer steps of one pass over the training split (sets the planned epochs)."""
    precisions_of_format = precisions_of_format or PRECISIONS_OF_FORMAT
    decisions: list[Decision] = []
    notes: list[str] = []
    if context.techniques:
        for t in context.techniques:
            TECHNIQUES.canonical(t)  # unknown technique names are errors, with did-you-mean
    here = runs_here(target, local)
    if here and target.kind == "gpu" and "tensorrt" not in installed_runtimes:
        # ONNX Runtime here runs on the CPU provider: timing it would pass a CPU's latency off as the GPU's
        here = False
        notes.append(f"this host has {target.name}'s GPU ({local.arch}) but TensorRT is not installed "
                     "(the `tensorrt` package): latencies are estimated, not timed on the CPU")
    elif here and target.kind == "gpu" and not target.detected:
        notes.append(f"{target.name} is measured on this host's GPU ({local.arch})")
    elif here and not target.detected:
        notes.append(f"{target.name} is measured on this machine ({local.description}), whose ISA is a "
                     "superset of the target's: treat speedups as an upper bound")

    runtimes = _runtimes(context, target, here, installed_runtimes, precisions_of_format, decisions, notes)

    pairs = precision_pairs(context, target, runtimes, precisions_of_format, decisions, FORMAT_OF_RUNTIME,
                            calibrated=has_calib_data or context.calib_random)
    timing = next((r for r in runtimes if r in layer_timing_runtimes()), None) if here else None
    epochs = policy.planned_epochs(getattr(context, "epochs", None), train_steps_per_epoch if has_train_data else None)
    ctx = PlanningContext(
        context=context, target=target, summary=summary, has_calib_data=has_calib_data,
        has_train_data=has_train_data,
        has_class_labels=has_train_data if has_class_labels is None else has_class_labels,
        sensitivity=sensitivity, architectures=architectures, runtimes=tuple(runtimes), here=here,
        pairs=tuple(pairs), format_of_runtime=FORMAT_OF_RUNTIME, timing_runtime=timing,
        epochs=epochs, finetune=finetune_step(context, has_train_data, decisions, epochs, train_steps_per_epoch))
    if (served := serving.decision(context, target.kind)) is not None:  # the load planned for, what it changes
        decisions.append(Decision(technique="serving", decision="applied", reason=served))
    proposed: list[Structure] = []
    for p in proposers():
        proposal = p.fn(ctx)
        proposed += proposal.structures
        decisions += proposal.decisions
    # the search takes the families in this order, and a time budget may end it before the last
    structures = [Structure("original", [], "unchanged model"), *(s for s in proposed if s.early),
                  *(s for s in proposed if not s.early)]
    qat = qat_formats(context, pairs, has_train_data, decisions)

    candidates: list[CandidateSpec] = []
    for s in structures:
        for fmt, prec, pwhy in pairs:
            candidates.append(CandidateSpec(id=f"{s.name}@{fmt}-{prec}", structure=s.name, steps=s.steps,
                                            format=fmt, precision=prec, reason=f"{s.why}; {pwhy}",
                                            family=s.family, level=s.level,
                                            screen=s.screen or policy.SCREEN_GROUP_OF.get(s.family)))
    kind = policy.budget_kind(context.max_accuracy_drop)
    decisions.append(Decision(
        technique="search", decision="applied",
        reason=f"{kind} accuracy budget ({context.max_accuracy_drop} pp): families answering the same "
               "question (pruning criterion, factorization method) are screened at one common level, the best "
               f"{policy.SCREEN_KEEP} kept; each family's ratio/energy is bisected against accuracy measured on "
               "held-out data; survivors are exported at every precision and measured on the runtime" + (
                   f"; stop early once p50 <= {policy.MARGIN:.0%} of {context.latency_budget_ms} ms"
                   if context.latency_budget_ms else "") + (
                   f"; stop early once size <= {policy.MARGIN:.0%} of {context.size_budget_mb} MB"
                   if context.size_budget_mb else "")))
    return Plan(candidates=candidates, baseline_id=candidates[0].id, decisions=decisions, measure_locally=here,
                notes=notes, qat_formats=qat, qat_epochs=epochs)

