"""Iterative magnitude pruning with rewinding (lottery tickets) and the linear-mode-connectivity check.

- rewind="init":  Frankle & Carbin 2019: after each pruning round, reset the surviving weights to their
  initial values and retrain the full schedule.
- rewind="epoch": Frankle et al. 2020 (weight rewinding): reset to the weights of epoch k and retrain the
  rest of the schedule (epochs - k); stabilises tickets on larger nets.
- rewind="lr":    Renda et al. 2020: keep the trained weights, replay the whole learning-rate schedule.
- rewind="auto":  Frankle et al. 2020 (linear mode connectivity): the earliest epoch k (0, 1, ...) from which
  two copies trained with different data orders end in one linearly connected basin (error barrier under
  LMC_BARRIER_PP) is the rewinding point: k = 0 -> "init", k > 0 -> "epoch" k, none -> "lr".
The trainer is passed in (edgeopt.training.fit in practice) so techniques stay independent of training."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from edgeopt.errors import ConfigError

# the linear-mode-connectivity threshold lives with the technique's declaration, which quotes it in decisions
from edgeopt.techniques.sparsity.imp_technique import LMC_BARRIER_PP
from edgeopt.techniques.sparsity.unstructured import (
    apply_masks,
    dense_state,
    global_magnitude_masks,
    load_dense_state,
    sparsity,
)

REWINDS = ("init", "epoch", "lr", "auto")

# Candidate rewinding epochs: the paper finds stability early in training (a few % of it); probing more than
# the first epochs would cost more training than the choice saves.
REWIND_CANDIDATES = (0, 1)


@dataclass
class IMPResult:
    rewind: str
    rewind_epoch: int
    rounds: list[dict] = field(default_factory=list)  # per round: sparsity, accuracy
    lmc: dict | None = None  # rewind="auto": the error barrier measured at each candidate epoch

    @property
    def final_sparsity(self) -> float:
        return self.rounds[-1]["sparsity"] if self.rounds else 0.0


def imp(model: nn.Module, train_data, train_fn: Callable, target_sparsity: float = 0.8, rounds: int = 3,
        epochs: int = 3, rewind: str = "lr", rewind_epoch: int = 1, eval_fn: Callable | None = None,
        exclude: tuple[str, ...] = (), **train_kwargs) -> tuple[nn.Module, IMPResult]:
    """Prune `model` (a copy) to `target_sparsity` in `rounds` global-magnitude rounds, each pruning the
    same fraction of the remaining weights, with the chosen rewinding. `train_fn(model, data, epochs=...,
    start_epoch=..., progress=...)` trains in place. For rewind="init"/"epoch" the model is trained densely
    first (from the weights given: its initialisation); for "lr" the given (trained) weights are pruned
    directly. Masks stay attached: call unstructured.make_permanent to bake them in."""
    if rewind not in REWINDS:
        raise ConfigError(f"unknown rewinding {rewind!r}: use one of {', '.join(REWINDS)}")
    if rewind == "epoch" and not 0 < rewind_epoch < epochs:
        raise ConfigError(f"rewind_epoch must be in (0, {epochs}), got {rewind_epoch}")
    lmc = None
    if rewind == "auto":
        if eval_fn is None:
            raise ConfigError("rewind='auto' measures linear mode connectivity: it needs held-out data to evaluate")
        rewind, rewind_epoch, lmc = choose_rewind(model, train_data, train_fn, eval_fn, epochs, **train_kwargs)
    model = copy.deepcopy(model)
    result = IMPResult(rewind, rewind_epoch if rewind == "epoch" else 0, lmc=lmc)
    snap = dense_state(model)  # epoch 0 (initialisation)
    if rewind in ("init", "epoch"):
        def keep_epoch(epoch, _total, _loss):
            nonlocal snap
            if rewind == "epoch" and epoch == rewind_epoch:
                snap = dense_state(model)
        train_fn(model, train_data, epochs=epochs, progress=keep_epoch, **train_kwargs)
        result.rounds.append({"round": 0, "sparsity": 0.0, "top1": eval_fn(model) if eval_fn else None})
    keep_per_round = (1.0 - target_sparsity) ** (1.0 / rounds)
    for r in range(1, rounds + 1):
        s = 1.0 - keep_per_round ** r
        apply_masks(model, global_magnitude_masks(model, s, exclude))
        start = 0
        if rewind in ("init", "epoch"):
            load_dense_state(model, snap)
            start = result.rewind_epoch
        train_fn(model, train_data, epochs=epochs, start_epoch=start, **train_kwargs)
        result.rounds.append({"round": r, "sparsity": round(sparsity(model), 4),
                              "top1": eval_fn(model) if eval_fn else None})
    return model, result


@dataclass
class LMCResult:
    alphas: list[float]
    errors: list[float]  # top-1 error % along the path
    barrier: float  # max error on the path minus the mean of the endpoints' errors
    stable: bool


def _interpolate(a: dict, b: dict, t: float) -> dict:
    return {k: (1 - t) * a[k] + t * b[k] if a[k].is_floating_point() else a[k] for k in a}


def linear_mode_connectivity(model: nn.Module, train_data, train_fn: Callable, eval_fn: Callable,
                             epochs: int = 2, seeds: tuple[int, int] = (1, 2), points: int = 5,
                             recalibrate: Callable | None = None, threshold: float = 2.0,
                             **train_kwargs) -> LMCResult:
    """Train two copies from `model`'s weights with different data orders (seeds), evaluate the linear
    interpolation between them. A barrier under `threshold` error points means the network is stable from
    this point: the earliest such epoch is the k to rewind to. `recalibrate(model)` may re-estimate
    BatchNorm statistics at each interpolated point (interpolated running stats are not the true ones)."""
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    train_fn(a, train_data, epochs=epochs, seed=seeds[0], **train_kwargs)
    train_fn(b, train_data, epochs=epochs, seed=seeds[1], **train_kwargs)
    sa, sb = a.state_dict(), b.state_dict()
    probe = copy.deepcopy(model)
    alphas = [i / (points - 1) for i in range(points)]
    errors = []
    for t in alphas:
        probe.load_state_dict(_interpolate(sa, sb, t))
        if recalibrate is not None:
            recalibrate(probe)
        errors.append(round(100.0 - eval_fn(probe), 2))
    barrier = round(max(errors) - (errors[0] + errors[-1]) / 2, 2)
    return LMCResult(alphas, errors, barrier, barrier < threshold)


def choose_rewind(model: nn.Module, train_data, train_fn: Callable, eval_fn: Callable, epochs: int,
                  candidates: tuple[int, ...] = REWIND_CANDIDATES, probe_epochs: int = 1,
                  threshold: float = LMC_BARRIER_PP, **train_kwargs) -> tuple[str, int, dict]:
    """(rewind, rewind_epoch, record): the earliest candidate epoch whose two probe runs (`probe_epochs`
    each, different data orders) have an error barrier under `threshold`. Epoch 0 is `model` as given; later
    epochs are snapshots of a dense run of `epochs`, trained only when epoch 0 is not stable. BatchNorm
    statistics are re-estimated at every interpolated point (interpolated running stats are not real ones)."""
    from edgeopt.techniques.repair.bn_recal import recalibrate_bn

    inputs = [b[0] if isinstance(b, (tuple, list)) else b
              for b in (train_data.items if hasattr(train_data, "items") else train_data)][:10]
    candidates = tuple(k for k in candidates if k == 0 or k < epochs)
    barriers: dict[str, dict] = {}
    snaps: dict[int, dict] = {}
    for k in candidates:
        if k > 0 and not snaps:
            dense = copy.deepcopy(model)

            def keep(epoch, _total, _loss, dense=dense):
                if epoch in candidates:
                    snaps[epoch] = dense_state(dense)
            train_fn(dense, train_data, epochs=epochs, progress=keep, **train_kwargs)
        start = copy.deepcopy(model)
        if k > 0:
            load_dense_state(start, snaps[k])
        res = linear_mode_connectivity(start, train_data, train_fn, eval_fn, epochs=probe_epochs,
                                       recalibrate=lambda m: recalibrate_bn(m, inputs), threshold=threshold,
                                       **train_kwargs)
        barriers[str(k)] = {"barrier_pp": res.barrier, "errors": res.errors, "stable": res.stable}
        if res.stable:
            rewind = "init" if k == 0 else "epoch"
            return rewind, k, {"chosen_epoch": k, "threshold_pp": threshold, "barriers": barriers}
    return "lr", 0, {"chosen_epoch": None, "threshold_pp": threshold, "barriers": barriers,
                     "fallback": "no candidate epoch was stable: learning-rate rewinding"}


def apply_imp(model: nn.Module, example: torch.Tensor, config, data=None, teacher=None, train_data=None,
              progress=None) -> tuple[nn.Module, dict]:
    """Registry entry: IMP with rewinding, fine-tuned with edgeopt.training.fit on labelled data
    (`train_data` from the pipeline; `data` when called on its own)."""
    from edgeopt.errors import DataError
    from edgeopt.techniques.sparsity.unstructured import compressed_size, make_permanent
    from edgeopt.training import fit

    data = train_data if train_data is not None else data
    if data is None or not getattr(data, "labelled", False):
        raise DataError("iterative magnitude pruning retrains: it needs labelled training data")
    eval_fn = None
    if config.rewind == "auto":  # the LMC check is scored on a slice held out of the training data
        from edgeopt.training import top1
        from edgeopt.training.screen import held_out_split

        probe, held = held_out_split(data, train_batches=len(data.items) - 1)
        data, eval_fn = probe, (lambda m: top1(m, held))
    pruned, res = imp(model, data, fit, target_sparsity=config.sparsity, rounds=config.rounds,
                      epochs=config.epochs, rewind=config.rewind, rewind_epoch=config.rewind_epoch,
                      eval_fn=eval_fn)
    make_permanent(pruned)
    return pruned, {"rewind": res.rewind, "rewind_epoch": res.rewind_epoch, "rounds": res.rounds,
                    **({"rewind_auto": res.lmc} if res.lmc else {}), **compressed_size(pruned)}
