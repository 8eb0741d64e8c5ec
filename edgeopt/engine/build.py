"""Building and checking one candidate: apply its model-stage steps, export at its precision, verify,
and evaluate accuracy on the runtime. Part of the engine (L4). `Builder` bundles these verbs with the run's
data for the search (which a unit test replaces with a fake)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeopt.decide import policy
from edgeopt.decide.plan import CandidateSpec
from edgeopt.engine.cache import files_digest
from edgeopt.formats import backend_for, export_verified
from edgeopt.formats.base import ExportResult, Session
from edgeopt.formats.onnx_source import OnnxSource
from edgeopt.inputs.analyze import count_macs, count_params
from edgeopt.inputs.data import Batches, DataSplits
from edgeopt.measure.accuracy import predictions, prefix_bound, score, torch_predictions
from edgeopt.report import Candidate, Step
from edgeopt.techniques import apply_step


@dataclass
class Built:
    """A model-stage structure (shared by all candidates with the same steps). `source`: its fp32 ONNX graph,
    exported once on the first export and converted into every precision and runtime of the structure."""

    model: nn.Module
    records: list[dict]
    params: int
    macs: int
    source: OnnxSource | None = None

    def onnx_source(self, example) -> OnnxSource:
        if self.source is None or self.source.model is not self.model:
            self.source = OnnxSource(self.model, example)
        return self.source


def build_structure(model: nn.Module, example: torch.Tensor, spec: CandidateSpec, calib: Batches | None,
                    train: Batches | None = None, progress=None, teacher: nn.Module | None = None) -> Built:
    """Apply the spec's model-stage steps to a copy. Retraining steps get the original model as teacher
    (`teacher`, default `model`) and the training data (never the evaluation data)."""
    teacher = model if teacher is None else teacher
    current = model
    records = []
    for config in spec.steps:  # typed configs, validated when planned
        current, record = apply_step(current, example, config, data=calib, teacher=teacher, train_data=train,
                                     progress=progress)
        records.append({"technique": config.technique, **record})
    return Built(current, records, count_params(current), count_macs(current, example))


def artifact_stem(cid: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", cid)


def export_candidate(built: Built, example: torch.Tensor, spec: CandidateSpec, artifacts_dir: Path,
                     threads: int | None, calib, verify_inputs: list[torch.Tensor] | None,
                     options: dict | None = None, name: str | None = None) -> tuple[ExportResult, Session]:
    """Export the structure at the spec's format and precision from its shared ONNX graph, load and verify it
    on `verify_inputs` (a few batches at the run's batch size). result.info["seconds"] splits the time."""
    out = artifacts_dir / artifact_stem(name or spec.id)
    options = {**(options or {}), "source": built.onnx_source(example)}
    return export_verified(built.model, example, spec.format, out, precision=spec.precision, calib=calib,
                           threads=threads, options=options, verify_inputs=verify_inputs)


def evaluate_candidate(session, eval_batches: Batches, batch_size: int,
                       reference: dict | np.ndarray | None) -> tuple[float, str]:
    """The held-out metric on the runtime: `session` is a Session (every named output is scored) or a
    callable array -> first output."""
    preds = predictions(session, eval_batches, batch_size)
    return score(preds, eval_batches, reference)


def report_step(config) -> Step:
    """A planned step as the report shows it: the technique and the parameters it ran with."""
    return Step(technique=config.technique, params=config.model_dump(exclude={"technique"}, exclude_none=True))


def new_candidate(spec: CandidateSpec) -> Candidate:
    return Candidate(id=spec.id, structure=spec.structure, format=spec.format,
                     steps=[report_step(st) for st in spec.steps], runtime=backend_for(spec.format).runtime,
                     precision=spec.precision, proposed_because=spec.reason)


# Candidate fields a cache entry restores (latency is always re-measured, never cached).
CACHED_FIELDS = ("status", "reason", "failure", "params", "macs", "size_bytes", "size_compressed_bytes", "artifact",
                 "precision_executed", "accuracy", "metric", "exporter", "verification", "steps", "accuracy_control")


def artifact_digest(cand: Candidate, out_dir: Path) -> dict[str, str] | None:
    """sha256 of every file of the candidate's artifact (an .xml and its .bin), None when one is missing."""
    if cand.artifact is None:
        return None
    return files_digest(backend_for(cand.runtime).artifact_files(out_dir / cand.artifact), out_dir)


def to_cache(cand: Candidate, out_dir: Path | None = None) -> dict:
    """The entry to cache; with `out_dir`, an ok candidate's entry records its artifact's file hashes, which a
    restore checks (a file rewritten since, e.g. by a run of another model, is rebuilt, never reused)."""
    entry = cand.model_dump(mode="json", include=set(CACHED_FIELDS))
    if out_dir is not None and cand.status == "ok":
        entry["artifact_sha256"] = artifact_digest(cand, out_dir)
    return entry


def from_cache(cand: Candidate, entry: dict, out_dir: Path, threads: int | None
               ) -> tuple[bool, Session | None]:
    """Restore a finished candidate; an ok one gets its artifact reloaded for latency measurement.
    (False, None) when the artifact is gone, outside the out dir, or its files are not byte for byte the ones
    the entry recorded: the candidate is then rebuilt."""
    session = None
    fields = {k: v for k, v in entry.items() if k in CACHED_FIELDS}
    if entry.get("status") == "ok":
        path = out_dir / str(entry.get("artifact"))
        recorded = entry.get("artifact_sha256")
        if not recorded or not path.resolve().is_relative_to(out_dir.resolve()):
            return False, None
        probe = cand.model_copy(update={"artifact": str(entry.get("artifact"))})
        if artifact_digest(probe, out_dir) != recorded:
            return False, None
        session = backend_for(cand.runtime).load(path, precision=cand.precision, threads=threads)
    restored = Candidate.model_validate({"id": cand.id, **fields})
    for k in CACHED_FIELDS:
        if k in fields:
            setattr(cand, k, getattr(restored, k))
    cand.from_cache = True
    return True, session


def export_options(config, target=None) -> dict | None:
    """Options every candidate's export gets from the run config (a dynamic batch axis) and the target (the
    TensorRT version of a target whose engines TensorRT builds from the ONNX: see formats.target_export_options)."""
    from edgeopt.formats import target_export_options

    dynamic = config.output.dynamic_batch or config.deploy.serves_batches  # a throughput goal serves batches
    options = {**({"dynamic_batch": True} if dynamic else {}),
               **(target_export_options(target) if target is not None else {})}
    return options or None


@dataclass(frozen=True)
class Screened:
    """A structure's PyTorch accuracy on the selection split, from `seen` of its `total` samples: fewer when
    the samples seen already put the whole split below the accuracy the caller asked about (the verdict is
    then certain; the accuracy is that of the samples seen, an estimate of the rest)."""

    accuracy: float
    seen: int
    total: int

    @property
    def partial(self) -> bool:
        return self.seen < self.total

    @property
    def best_whole(self) -> float:
        """The most the whole split can score: the samples not seen all right."""
        return (self.accuracy * self.seen + 100.0 * (self.total - self.seen)) / self.total if self.total else \
            self.accuracy


@dataclass
class Builder:
    """The verbs the search needs, bound to one run's model, data and output folder."""

    net: nn.Module
    example: torch.Tensor
    splits: DataSplits
    eval_b: Batches
    batch: int
    reference: dict | None  # the original model's outputs by name, for fidelity when there are no labels
    out_dir: Path
    threads: int | None
    calib_random: bool = False
    progress: Callable[[str], None] | None = None
    export_options: dict | None = None  # every export gets these (e.g. a dynamic batch axis)
    _calibration: object = field(default=None, init=False, repr=False)

    def build(self, start: nn.Module, spec: CandidateSpec) -> Built:
        def tick(epoch: int, epochs: int, loss: float) -> None:
            if self.progress is not None:
                self.progress(f"fine-tuning {spec.structure}: epoch {epoch}/{epochs}, loss {loss:.3f}")

        return build_structure(start, self.example, spec, self.splits.calib, self.splits.train, tick,
                               teacher=self.net)

    def cut_widths(self, cut) -> dict[str, int]:
        """Every layer's width (output channels) after the uniform channel cut `cut` (a prune config) of the
        original: a dry run with a cheap criterion, since such a cut's widths do not depend on which channels
        it picks (about a second on the benchmark's models)."""
        from edgeopt.techniques.pruning.prune import channel_table, prune

        work, _ = prune(self.net, self.example, ratio=cut.ratio, importance="l1", scope=cut.scope,
                        round_to=cut.round_to, max_layer_ratio=cut.max_layer_ratio, timeout_s=cut.timeout_s)
        return channel_table(work)

    def torch_accuracy(self, model: nn.Module) -> float:
        return score(torch_predictions(model, self.eval_b, self.batch), self.eval_b, self.reference)[0]

    def torch_screen(self, model: nn.Module, floor: float) -> Screened:
        """The PyTorch accuracy of a screening, which only asks whether it reaches `floor`: for a metric that
        is a mean over samples, evaluation stops as soon as even a perfect rest could not lift the whole split
        to `floor` (a structure far over the budget costs a chunk of the split, not all of it)."""
        total = len(self.eval_b) if isinstance(self.eval_b, Batches) else 0
        bound = prefix_bound(self.eval_b, self.reference) if total else None
        if bound is None:
            return Screened(self.torch_accuracy(model), total, total)
        preds = torch_predictions(model, self.eval_b, self.batch, settled=lambda p: bound(p)[1] < floor)
        seen = len(next(iter(preds.values())))
        if seen >= total:
            return Screened(score(preds, self.eval_b, self.reference)[0], total, total)
        return Screened(bound(preds)[0], seen, total)

    @property
    def labelled(self) -> bool:
        return self.eval_b.labelled

    def export(self, built: Built, spec: CandidateSpec, max_drop_pp: float | None = None, name: str | None = None
               ) -> tuple[ExportResult, Session]:
        """`max_drop_pp`: INT8 with accuracy control (NNCF, OpenVINO), layers kept in float until the drop
        measured on the labelled evaluation data (at most policy.ACCURACY_CONTROL_MAX_SAMPLES) fits it.
        `name`: the artifact's file stem under OUT/artifacts (default: the spec's id)."""
        options = dict(self.export_options) if self.export_options else None
        if max_drop_pp is not None:
            items, n = [], 0
            for x, y in self.eval_b.items:
                if n >= policy.ACCURACY_CONTROL_MAX_SAMPLES:
                    break
                items.append((x, y))
                n += len(x)
            options = {**(options or {}), "eval_data": Batches(items), "max_accuracy_drop": max_drop_pp}
        verify_inputs = self.splits.calib.inputs()[:1] if self.splits.calib is not None else None
        if verify_inputs and verify_inputs[0].shape[0] != self.batch:
            verify_inputs = [verify_inputs[0][:self.batch]] if verify_inputs[0].shape[0] >= self.batch else None
        calib = self.calibration() if spec.precision == "int8" else self.splits.calib
        return export_candidate(built, self.example, spec, self.out_dir / "artifacts", self.threads, calib,
                                verify_inputs, options, name)

    def calibration(self):
        """The INT8 calibration batches, resolved once for the run and shared by every INT8 artifact of every
        structure (the structures keep the original's inputs); the raw data when it cannot be resolved here, so
        that each export says why."""
        if self._calibration is None:
            from edgeopt.formats.calibration import resolve_calibration
            from edgeopt.inputs.model_io import Inputs

            calib = self.splits.calib
            if calib is None and self.calib_random:
                calib = "random"  # asked for explicitly; the report says so (see pipeline)
            try:
                self._calibration = resolve_calibration(calib, Inputs.of(self.example, self.net), "int8")
            except Exception:
                return calib
        return self._calibration

    def evaluate(self, session: Session) -> tuple[float, str]:
        return evaluate_candidate(session, self.eval_b, self.batch, self.reference)

    def restore(self, cand: Candidate, entry: dict) -> tuple[bool, Session | None]:
        return from_cache(cand, entry, self.out_dir, self.threads)
