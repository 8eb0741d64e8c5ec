"""Fine-tuning as a model-stage technique: distillation from the original model (teacher) into the compressed
one (student), response-based by default; `kind="auto"` first screens the rate (unless one was given) and the
kinds on short runs and trains with the pair that recovers most (edgeopt.training.screen). Where every probe
lowered the held-out score (a least-squares reconstructed model can start above what a few steps reach), the
best pair still trains and the result is kept only if it scores above the student as it came: the probes are a
few steps, the fine-tuning hundreds. The screen runs once per run: every later fine-tuning of the same teacher
on the same data takes its kind and rate, and is kept only if it scores above the student as it came on the
screen's held-out slice. Within a search's time budget a fine-tuning that would end too late runs the steps that
fit (at least half; the record says how many of how many planned). The precision it trains at is measured once
per run too (bfloat16 autocast where a step runs faster with it; edgeopt.training.mixed_precision). The loop
itself is `edgeopt.training.fit`."""

from __future__ import annotations

import copy
import weakref

import torch
from torch import nn

from edgeopt.errors import DataError
from edgeopt.techniques.retraining.fine_tune_technique import ADAMW_RATES, DEFAULT_LR, SCREENED_RATE_FACTORS


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
    precision = _precision(student, teacher, train_data, config)
    kind, screen = _kind(student, teacher, train_data, config, precision["precision"])
    optimizer = (screen or {}).get("optimizer") or config.optimizer or "sgd"
    lr = screen["lr"] if screen and "lr" in screen else config.lr or _default_lr(optimizer)
    judged = screen is not None and ("screened_before" in screen or screen.get("probes_below_start", False))
    before = copy.deepcopy(student) if judged else None
    res = fit(student, train_data, teacher=teacher, epochs=config.epochs, lr=lr, kind=kind,
              temperature=config.temperature, alpha=config.alpha, seed=config.seed, progress=progress,
              shorten_to_fit=True, optimizer=optimizer, precision=precision["precision"])
    # fewer steps than planned, to end within the search's time: not the structure the plan describes, and the
    # record says so (a later run with more time trains it whole)
    shortened = ({"steps": res.steps, "planned_steps": res.planned_steps, "shortened": res.shortened}
                 if res.shortened else {})
    # no probe of this student said training helps it (the choice was screened on another one, or every short probe
    # scored lower): the result is checked against the student as it came
    worse = _scored_lower(student, before, teacher, train_data) if before is not None else None
    if worse:
        student = before
    if masks:
        from edgeopt.techniques.sparsity.unstructured import make_permanent

        make_permanent(student)
    if worse:
        return student, {"epochs": 0, "seconds": res.seconds, "losses": [], "distillation": UNCHANGED,
                         "kind_screen": screen, "kept_unchanged": worse, **shortened,
                         "precision": precision["precision"], "precision_choice": precision}
    return student, {"epochs": res.epochs, "seconds": res.seconds, "lr": lr, "optimizer": optimizer, **shortened,
                     "precision": precision["precision"], "precision_choice": precision,
                     "losses": [round(v, 4) for v in res.losses],
                     "distillation": res.kind, "device": res.device, "world_size": res.world_size,
                     **({"kind_screen": screen} if screen else {}), **({"kept_sparsity": True} if masks else {}),
                     **({"mode": "eval (its training-mode outputs differ: BatchNorm statistics frozen)"}
                        if res.mode == "eval" else {})}


def _precision(student: nn.Module, teacher: nn.Module | None, train_data, config) -> dict:
    """The precision to train at: the config's, or with "auto" the measured choice (training/mixed_precision.py),
    made once per teacher and data like the screen (its timing is of the model's family and the batch, not of
    the level it was cut to)."""
    if config.precision != "auto":
        return {"precision": config.precision, "why": "given"}
    from edgeopt.training.loop import training_device
    from edgeopt.training.mixed_precision import choose_precision
    from edgeopt.training.screen import take_batches

    if teacher is not None and (earlier := _PRECISIONS.get(teacher)) is not None and earlier[0]() is train_data:
        return earlier[1]
    batches = take_batches(train_data, 1)
    if not batches:
        raise DataError("fine-tuning needs training data: the training split is empty")
    choice = choose_precision(student, teacher, batches[0][0], training_device())
    try:
        if teacher is not None:
            _PRECISIONS[teacher] = (weakref.ref(train_data), choice)
    except TypeError:  # data that cannot be referred to weakly (a plain list): measured every time
        pass
    return choice


def _kind(student: nn.Module, teacher: nn.Module | None, train_data, config, precision: str = "fp32"
          ) -> tuple[str | None, dict | None]:
    """The distillation kind to fine-tune with (never UNCHANGED: the best probe's, marked `probes_below_start`
    when every probe scored below the start), and the screen's record when it was chosen by measurement; its
    probes train at `precision`."""
    if teacher is None:
        return (None if config.kind in ("auto", "response") else config.kind), None
    if config.kind != "auto":
        return config.kind, None
    from edgeopt.training.screen import SCREEN_KINDS, UNCHANGED, choose_kind

    # the kind and the rate follow the model, its training and the data, not the level it was cut to: one screen
    # per run serves every later fine-tuning of the same teacher on the same data (YOLOv8n's depth1-ft ran 45 s
    # until its fine-tuning's forecast stopped it when it screened again, 11 s without)
    key = (config.lr, config.optimizer, config.seed, config.temperature, config.alpha)
    earlier = _earlier_screen(teacher, train_data, key)
    if earlier is not None:
        return earlier["best"], {"chosen": earlier["best"], "lr": earlier["lr"], "optimizer": earlier["optimizer"],
                                 "metric": earlier["metric"], "screened_before": (
            f"the kind and rate the run's first screen chose ({earlier['seconds']:.0f} s), not screened again")}
    try:
        # the rate (and for a LayerNorm model the optimizer) is screened too unless given: the right one follows
        # how the model was trained
        optimizer = config.optimizer or "sgd"
        lr = config.lr or _default_lr(optimizer)
        if config.lr is not None:
            rates: tuple[float, ...] = ()
        elif optimizer == "sgd":
            rates = tuple(lr * f for f in SCREENED_RATE_FACTORS)
        else:
            rates = tuple(r for r in ADAMW_RATES if r != lr)
        adamw = ADAMW_RATES if config.lr is None and config.optimizer is None and layer_normed(student) else ()
        kind, screen = choose_kind(student, teacher, train_data, lr=lr, seed=config.seed, rates=rates,
                                   optimizer=optimizer, adamw_rates=adamw, temperature=config.temperature,
                                   alpha=config.alpha, precision=precision)
    except DataError as e:  # too little data to hold a slice out: the default kind, with the reason
        return "response", {"chosen": "response", "skipped": str(e)}
    scores = screen["scores"]
    best = kind if kind != UNCHANGED else max(scores, key=lambda k: (scores[k], -SCREEN_KINDS.index(k)))
    if kind == UNCHANGED:
        # every kind's probe scored below the student as it came; a probe is one short epoch, a fine-tuning about
        # FINETUNE_STEPS steps, and recovery follows steps (ConvNeXt-atto half pruned and reconstructed lost 0.5 pp
        # more after 38 steps and its whole 1.5 pp drop back after 608): the best probe's kind and rate train,
        # and the result is judged against the student as it came, as a reused screen's choice is
        screen = {**screen, "chosen": best, "probes_below_start": True}
    try:
        choice = {"best": best, "lr": screen["lr"], "optimizer": screen.get("optimizer", "sgd"),
                  "metric": screen["metric"], "seconds": screen["seconds"]}
        _SCREENS[teacher] = (weakref.ref(train_data), key, choice)
    except TypeError:  # data that cannot be referred to weakly (a plain list): screened every time
        pass
    return best, screen


def _default_lr(optimizer: str) -> float:
    return DEFAULT_LR if optimizer == "sgd" else ADAMW_RATES[0]


def layer_normed(model: nn.Module) -> bool:
    """Normalised by LayerNorm or GroupNorm, with no BatchNorm: a model of the family trained with AdamW."""
    norms = {type(m).__name__ for m in model.modules()}
    return any("LayerNorm" in n or "GroupNorm" in n for n in norms) and not any("BatchNorm" in n for n in norms)


# teacher -> (its training data, (rate given, optimizer given, seed, temperature, alpha), the screen's best kind,
# rate and optimizer): the last screen of each live teacher, held weakly, so that a run's data is never kept
# beyond it
_SCREENS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# teacher -> (its training data, the measured training precision), held weakly as the screens are
_PRECISIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _earlier_screen(teacher: nn.Module, train_data, key: tuple) -> dict | None:
    """The choice of the last screen of `teacher` when it was made on this very data and settings."""
    data, was, choice = _SCREENS.get(teacher, (None, None, None))
    return choice if data is not None and data() is train_data and was == key else None


def _scored_lower(tuned: nn.Module, before: nn.Module, teacher: nn.Module, train_data) -> str | None:
    """Why the fine-tuned model is worse than it came (its score on a slice held out of the training data,
    as the screen scores), or None."""
    from edgeopt.training.screen import HeldOut, held_out_split, score

    try:
        _, batches = held_out_split(train_data)
    except DataError:  # too little data to hold a slice out: nothing to judge by
        return None
    held = HeldOut(batches, teacher)
    after, start = score(tuned, held), score(before, held)
    if after >= start:
        return None
    return (f"fine-tuning lowered its score ({after:.2f} vs {start:.2f} as it came, on a slice held out of the "
            f"training data)")


def _zero_masks(model: nn.Module) -> dict | None:
    """Attach masks that hold today's zero weights at zero during training (sparse structures)."""
    from edgeopt.techniques.sparsity.unstructured import apply_masks, prunable

    masks = {n: (m.weight.detach() != 0).float() for n, m in prunable(model)}
    if not any(bool((k == 0).any()) for k in masks.values()):
        return None
    apply_masks(model, masks)
    return masks
