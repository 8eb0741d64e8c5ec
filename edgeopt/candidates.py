"""Building and checking one candidate: apply its model-stage steps, export at its precision, verify,
and evaluate accuracy on the runtime. Part of the pipeline (L4); failures become data, not crashes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeopt.analyze import count_macs, count_params
from edgeopt.backends import backend_for, export_verified
from edgeopt.data import Batches
from edgeopt.evaluate import predictions, score
from edgeopt.exporters import ExportResult
from edgeopt.planner import CandidateSpec
from edgeopt.report import Candidate
from edgeopt.runtimes import Session
from edgeopt.techniques import TECHNIQUES


@dataclass
class Built:
    """A model-stage structure (shared by all candidates with the same steps)."""

    model: nn.Module
    records: list[dict]
    params: int
    macs: int


def build_structure(model: nn.Module, example: torch.Tensor, spec: CandidateSpec,
                    calib: Batches | None) -> Built:
    current = model
    records = []
    for step in spec.steps:
        tech = TECHNIQUES.get(step.technique)
        config = tech.make_config({k: v for k, v in step.params.items() if v is not None})
        current, record = tech.apply_fn()(current, example, config, data=calib)
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
    from edgeopt.verify import verify_session

    result.info["verification"] = verify_session(session, built.model, example, spec.precision,
                                                 inputs=verify_inputs)
    return result, session


def evaluate_candidate(session_run, eval_batches: Batches, batch_size: int,
                       reference: np.ndarray | None) -> tuple[float, str]:
    preds = predictions(session_run, eval_batches, batch_size)
    return score(preds, eval_batches, reference)


def new_candidate(spec: CandidateSpec) -> Candidate:
    return Candidate(id=spec.id, steps=spec.steps, runtime=backend_for(spec.format).runtime,
                     precision=spec.precision, proposed_because=spec.reason)
