"""Building and checking one candidate: apply its model-stage steps, export at its precision, verify,
and evaluate accuracy on the runtime. Part of the pipeline (L4); failures become data, not crashes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeopt.decide.plan import CandidateSpec
from edgeopt.formats import backend_for, export_verified
from edgeopt.formats.base import ExportResult, Session
from edgeopt.inputs.analyze import count_macs, count_params
from edgeopt.inputs.data import Batches
from edgeopt.measure.accuracy import predictions, score
from edgeopt.report import Candidate
from edgeopt.techniques import TECHNIQUES


@dataclass
class Built:
    """A model-stage structure (shared by all candidates with the same steps)."""

    model: nn.Module
    records: list[dict]
    params: int
    macs: int


def build_structure(model: nn.Module, example: torch.Tensor, spec: CandidateSpec, calib: Batches | None,
                    train: Batches | None = None, progress=None, teacher: nn.Module | None = None) -> Built:
    """Apply the spec's model-stage steps to a copy. Retraining steps get the original model as teacher
    (`teacher`, default `model`) and the training data (never the evaluation data)."""
    teacher = model if teacher is None else teacher
    current = model
    records = []
    for step in spec.steps:
        tech = TECHNIQUES.get(step.technique)
        config = tech.make_config({k: v for k, v in step.params.items() if v is not None and k != "record"})
        extra = {"teacher": teacher, "train_data": train, "progress": progress} if tech.needs_retraining else {}
        current, record = tech.apply_fn()(current, example, config, data=calib, **extra)
        records.append({"technique": step.technique, **record})
    return Built(current, records, count_params(current), count_macs(current, example))


def artifact_stem(cid: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", cid)


def export_candidate(built: Built, example: torch.Tensor, spec: CandidateSpec, artifacts_dir: Path,
                     threads: int | None, calib: Batches | None, verify_inputs: list[torch.Tensor] | None
                     ) -> tuple[ExportResult, Session]:
    out = artifacts_dir / artifact_stem(spec.id)
    result, session = export_verified(built.model, example, spec.format, out, precision=spec.precision,
                                      calib=calib, threads=threads, verify=False)
    from edgeopt.formats.verify import verify_session

    result.info["verification"] = verify_session(session, built.model, example, spec.precision,
                                                 inputs=verify_inputs)
    return result, session


def evaluate_candidate(session, eval_batches: Batches, batch_size: int,
                       reference: dict | np.ndarray | None) -> tuple[float, str]:
    """The held-out metric on the runtime: `session` is a Session (every named output is scored) or a
    callable array -> first output."""
    preds = predictions(session, eval_batches, batch_size)
    return score(preds, eval_batches, reference)


def new_candidate(spec: CandidateSpec) -> Candidate:
    return Candidate(id=spec.id, steps=[st.model_copy(deep=True) for st in spec.steps],
                     runtime=backend_for(spec.format).runtime,
                     precision=spec.precision, proposed_because=spec.reason)


# Candidate fields a cache entry restores (latency is always re-measured, never cached).
CACHED_FIELDS = ("status", "reason", "params", "macs", "size_bytes", "size_compressed_bytes", "artifact",
                 "precision_executed", "accuracy", "metric", "exporter", "verification", "steps")


def to_cache(cand: Candidate) -> dict:
    return cand.model_dump(mode="json", include=set(CACHED_FIELDS))


def from_cache(cand: Candidate, entry: dict, out_dir: Path, threads: int | None
               ) -> tuple[bool, Session | None]:
    """Restore a finished candidate; an ok one gets its artifact reloaded for latency measurement.
    (False, None) when the artifact is gone: the candidate is then rebuilt."""
    session = None
    if entry.get("status") == "ok":
        path = out_dir / str(entry.get("artifact"))
        if not path.is_file():
            return False, None
        session = backend_for(cand.runtime).load(path, precision=cand.precision, threads=threads)
    restored = Candidate.model_validate({"id": cand.id, **entry})
    for k in CACHED_FIELDS:
        if k in entry:
            setattr(cand, k, getattr(restored, k))
    cand.from_cache = True
    return True, session
