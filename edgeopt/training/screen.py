"""Choosing the distillation kind and the fine-tuning rate by measurement: which of response / feature /
relation / response+feature recovers a compressed student best is model- and data-dependent (measured on T1
and digits, the order changes), and so is the rate (SGD at 0.01 suits a BatchNorm CNN; measured on
ConvNeXt-atto, trained with AdamW, it took every probe from 97 % to 0-45 %). Short runs on a subset of the
training data are compared on a held-out slice of it. The evaluation data is never touched: the slice comes
out of the training data."""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from torch import nn

from edgeopt.errors import ConfigError, DataError
from edgeopt.inputs.data.batches import split_item
from edgeopt.inputs.data.transforms import unaugmented
from edgeopt.inputs.feeding import run_model
from edgeopt.inputs.model_io import flatten_outputs

SCREEN_KINDS = ("response", "feature", "relation", "response+feature")
# The screen must stay a small fraction of the fine-tuning it precedes: each kind trains one epoch on at most
# SCREEN_BATCHES batches and is scored on at most HELD_OUT_BATCHES others (about one epoch in all on digits).
SCREEN_BATCHES = 8
HELD_OUT_BATCHES = 4
# The screen's verdict when every kind's probe scores below the student as it came (measured: least-squares
# reconstructed ConvNeXt-atto layers held the budget at 30 % pruned, one epoch of distillation at the default rate
# then lost 11 pp). A probe is a few steps: the fine-tuning that follows still trains with the best probe's kind
# and rate, and keeps the student unchanged only where it scores lower after it (retraining/finetune.py).
UNCHANGED = "unchanged"


def take_batches(data, n: int) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """The first `n` batches of any accepted training data (Batches, StreamBatches, a list) as (x, y) pairs."""
    out = []
    for item in (data.items if hasattr(data, "items") and not callable(data.items) else data):
        out.append(split_item(item))
        if len(out) >= n:
            break
    return out


def held_out_split(data, train_batches: int = SCREEN_BATCHES, held_batches: int = HELD_OUT_BATCHES
                   ) -> tuple[list, list]:
    """(probe-training batches, held-out batches) from the training data: the held-out slice is the last
    quarter of what is read (at least one batch), never the batches the probes train on. Both are read without
    augmentation: the probes are compared on the images evaluation sees, and each probe trains on the same."""
    with unaugmented(data):
        batches = take_batches(data, train_batches + held_batches)
    if len(batches) < 2:
        raise DataError("too little training data to hold a slice out: at least two batches are needed")
    held = max(1, min(held_batches, len(batches) // 4))
    return batches[:-held], batches[-held:]


class HeldOut:
    """The held-out slice and the teacher's outputs on it, computed once: every probe of a screen is scored
    against the same outputs, so the teacher runs once per screen, not once per probe."""

    def __init__(self, batches: list, teacher: nn.Module):
        self.batches = batches
        teacher.eval()
        with torch.no_grad():
            self.teacher = [flatten_outputs(run_model(teacher, x)) for x, _ in batches]
        from edgeopt.measure.accuracy import is_logits

        self.teacher_logits = all(is_logits(v) for v in self.teacher[0].values())  # class/dense logits only
        self.teacher_stacked = _stacked(self.teacher)  # what `fidelity` compares each probe with


def _stacked(outs: list[dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    """Every output over the batches: argmax of class/dense logits, else the values."""
    from edgeopt.measure.accuracy import is_logits

    parts: dict[str, list[np.ndarray]] = {}
    for out in outs:
        for k, v in out.items():
            parts.setdefault(k, []).append(v.argmax(1).numpy() if is_logits(v) else v.float().numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def _student_outputs(model: nn.Module, held: HeldOut) -> list[dict[str, torch.Tensor]]:
    with torch.no_grad():
        return [flatten_outputs(run_model(model, x)) for x, _ in held.batches]


def _is_classifier(outs: list[dict[str, torch.Tensor]]) -> bool:
    """One output of class logits (N, classes)."""
    first = outs[0]
    return len(first) == 1 and next(iter(first.values())).dim() == 2


def output_match(outs: list[dict[str, torch.Tensor]], held: HeldOut) -> float:
    """100 x (1 - the distillation loss's scaled squared error to the teacher's outputs) over the held-out
    batches, to 1e-4: the cosine of a raw detector head stays at 99.98 % whatever a probe did (YOLOv8n: every
    rate scored 99.98), while the error the fine-tuning minimises still tells the probes apart."""
    from edgeopt.training.losses import output_matching_loss

    total = sum(float(output_matching_loss({k: v.float() for k, v in s.items()}, {k: v.float() for k, v in t.items()}))
                for s, t in zip(outs, held.teacher, strict=True))
    return round(100.0 * (1.0 - total / len(outs)), 4)


def score(model: nn.Module, held: HeldOut) -> float:
    """Top-1 % on labelled batches; agreement % with the teacher's top-1 when unlabelled; for dense logits
    (segmenters) the per-pixel agreement with the teacher; for any other output structure (a detector's raw
    head, embeddings, several heads) `output_match`."""
    model.eval()
    outs = _student_outputs(model, held)
    if not _is_classifier(outs):
        if not held.teacher_logits:
            return output_match(outs, held)
        from edgeopt.measure.accuracy import fidelity

        return fidelity(_stacked(outs), held.teacher_stacked)
    from edgeopt.measure.top1 import percent_correct

    return percent_correct((next(iter(o.values())), y if y is not None else next(iter(t.values())).argmax(1))
                           for o, t, (_, y) in zip(outs, held.teacher, held.batches, strict=True))


def rate_name(optimizer: str, lr: float) -> str:
    """How a screened rate is named in a record: "0.01" for SGD's, "adamw 0.0001" for AdamW's."""
    return f"{lr:g}" if optimizer == "sgd" else f"{optimizer} {lr:g}"


def choose_kind(student: nn.Module, teacher: nn.Module, train_data, kinds: tuple[str, ...] = SCREEN_KINDS,
                lr: float = 0.01, seed: int = 0, rates: tuple[float, ...] = (), optimizer: str = "sgd",
                adamw_rates: tuple[float, ...] = (), **fit_kwargs) -> tuple[str, dict]:
    """(best kind, record). Each probe fine-tunes a copy of `student` for one epoch on the probe batches and is
    scored on the held-out slice. With `rates` (or `adamw_rates`), the first kind is probed at `lr` with
    `optimizer`, at each of `rates` with it, and with AdamW at each of `adamw_rates`, and the best setting (the
    record's `lr` and `optimizer`) is the one every other kind is probed at; ties go to the earlier (cheaper)
    kind and to the setting given first (not to the probe whose outputs came closest to the teacher's: that
    favours the rate that moves the student least; ConvNeXt-atto half pruned, every probe at 100 % on the slice,
    would have trained at 0.0001 and gained nothing, against 1 pp at 0.001). The record's `rates` name each
    rate, AdamW's as "adamw <rate>".
    UNCHANGED when the student as it came (the record's `start`) scores above every probe. A kind the model
    cannot use (no shared feature maps, no Linear classifier) is recorded with its reason."""
    from edgeopt.training.loop import fit

    t0 = time.perf_counter()
    probe, batches = held_out_split(train_data)
    held = HeldOut(batches, teacher)
    start = round(score(student, held), 4)
    skipped: dict[str, str] = {}

    def probe_score(kind: str, setting: tuple[str, float]) -> float | None:
        trial = copy.deepcopy(student)
        try:
            fit(trial, probe, teacher=teacher, epochs=1, lr=setting[1], seed=seed, kind=kind, forecast_end=False,
                optimizer=setting[0], **fit_kwargs)
        except ConfigError as e:
            skipped[kind] = str(e)
            return None
        return round(score(trial, held), 4)

    settings = [(optimizer, lr), *((optimizer, r) for r in rates), *(("adamw", r) for r in adamw_rates)]
    setting_scores: dict[tuple[str, float], float] = {}
    for setting in dict.fromkeys(settings) if len(settings) > 1 else ():
        got = probe_score(kinds[0], setting)
        if got is None:
            break
        setting_scores[setting] = got
    # max keeps the first of equal scores: the setting tried first
    chosen = max(setting_scores, key=setting_scores.get) if setting_scores else (optimizer, lr)
    scores: dict[str, float] = {kinds[0]: setting_scores[chosen]} if setting_scores else {}
    for kind in kinds:
        if kind not in scores and kind not in skipped:
            got = probe_score(kind, chosen)
            if got is not None:
                scores[kind] = got
    if not scores:
        raise ConfigError("no distillation kind could run on this model: " + "; ".join(skipped.values()))
    best = max(scores, key=lambda k: (scores[k], -kinds.index(k)))
    if start > scores[best]:
        best = UNCHANGED
    metric = (("fidelity_to_teacher" if held.teacher_logits else "output_match_to_teacher")
              if not _is_classifier(held.teacher) else
              "top1" if all(y is not None for _, y in batches) else "agreement_with_teacher")
    return best, {"chosen": best, "metric": metric, "held_out_samples": sum(len(x) for x, _ in batches),
                  "probe_samples": sum(len(x) for x, _ in probe), "start": start, "scores": scores,
                  "lr": chosen[1], "optimizer": chosen[0],
                  **({"rates": {rate_name(*r): v for r, v in setting_scores.items()}} if setting_scores else {}),
                  "seconds": round(time.perf_counter() - t0, 2),
                  **({"skipped": skipped} if skipped else {})}
