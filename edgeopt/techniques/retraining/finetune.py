"""Fine-tuning as a model-stage technique: distillation from the original model (teacher) into the compressed
one (student), response-based by default; `kind="auto"` first screens the rate (unless one was given) and the
kinds on short runs and keeps the pair that recovers most (edgeopt.training.screen), or keeps the model
unchanged when every probe lowers its held-out score (a least-squares reconstructed model can start above
what fine-tuning reaches). The loop itself is `edgeopt.training.fit`."""

from __future__ import annotations

import copy

import torch
from torch import nn

from edgeopt.errors import DataError
from edgeopt.techniques.retraining.fine_tune_technique import DEFAULT_LR, SCREENED_RATE_FACTORS


def apply_finetune(model: nn.Module, example: torch.Tensor, config, data=None, teacher: nn.Module | None = None,
                   train_data=None, progress=None) -> tuple[nn.Module, dict]:
    """Return (fine-tuned copy, record). `train_data` must be labelled or come with a teacher; it must never
    be the held-out evaluation data (the pipeline guarantees that)."""
    from edgeopt.training import fit
    from edgeopt.training.screen import UNCHANGED

    if train_data is None:
        raise DataError("fine-tuning needs training data: pass --data (an image folder, module:function or "
                        "digits) with a training split, or use --no-retrain")
    student = copy.deepcopy(model)
    masks = _zero_masks(student) if config.keep_sparsity else None
    kind, screen = _kind(student, teacher, train_data, config)
    if kind == UNCHANGED:  # every kind's probe scored below the student as it came: training would lower it
        return student, {"epochs": 0, "seconds": screen["seconds"], "losses": [], "distillation": UNCHANGED,
                         "kind_screen": screen,
                         "kept_unchanged": f"every distillation probe scored below the model as it came "
                                           f"({max(screen['scores'].values()):.2f} vs {screen['start']:.2f} "
                                           f"{screen['metric']} on a slice held out of the training data)"}
    lr = screen["lr"] if screen and "lr" in screen else config.lr or DEFAULT_LR
    res = fit(student, train_data, teacher=teacher, epochs=config.epochs, lr=lr, kind=kind,
              temperature=config.temperature, alpha=config.alpha, seed=config.seed, progress=progress)
    if masks:
        from edgeopt.techniques.sparsity.unstructured import make_permanent

        make_permanent(student)
    return student, {"epochs": res.epochs, "seconds": res.seconds, "lr": lr,
                     "losses": [round(v, 4) for v in res.losses],
                     "distillation": res.kind, "device": res.device, "world_size": res.world_size,
                     **({"kind_screen": screen} if screen else {}), **({"kept_sparsity": True} if masks else {}),
                     **({"mode": "eval (its training-mode outputs differ: BatchNorm statistics frozen)"}
                        if res.mode == "eval" else {})}


def _kind(student: nn.Module, teacher: nn.Module | None, train_data, config) -> tuple[str | None, dict | None]:
    """The distillation kind to fine-tune with, and the screen's record when it was chosen by measurement."""
    if teacher is None:
        return (None if config.kind in ("auto", "response") else config.kind), None
    if config.kind != "auto":
        return config.kind, None
    from edgeopt.training.screen import choose_kind

    try:
        # the rate is screened too unless it was given: the right one follows how the model was trained
        rates = () if config.lr is not None else tuple(DEFAULT_LR * f for f in SCREENED_RATE_FACTORS)
        return choose_kind(student, teacher, train_data, lr=config.lr or DEFAULT_LR, seed=config.seed, rates=rates,
                           temperature=config.temperature, alpha=config.alpha)
    except DataError as e:  # too little data to hold a slice out: the default kind, with the reason
        return "response", {"chosen": "response", "skipped": str(e)}


def _zero_masks(model: nn.Module) -> dict | None:
    """Attach masks that hold today's zero weights at zero during training (sparse structures)."""
    from edgeopt.techniques.sparsity.unstructured import apply_masks, prunable

    masks = {n: (m.weight.detach() != 0).float() for n, m in prunable(model)}
    if not any(bool((k == 0).any()) for k in masks.values()):
        return None
    apply_masks(model, masks)
    return masks
