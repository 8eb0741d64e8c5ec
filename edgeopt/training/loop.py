"""The fine-tuning loop: SGD with momentum (or AdamW), cosine learning-rate decay, optional teacher (distillation:
response-, feature- and relation-based, alone or combined). Runs on the GPU when one is present, else on
the CPU; under `torchrun` it runs with DistributedDataParallel (see ddp.py)."""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from edgeopt.errors import ConfigError, DataError, TimeBudgetError, WontFitError
from edgeopt.inputs.data.epochs import TrainFeed
from edgeopt.inputs.feeding import run_model
from edgeopt.inputs.model_io import flatten_outputs
from edgeopt.timeout import current_fit_by, deadline_passed
from edgeopt.training import ddp
from edgeopt.training.features import Capture, DistillStudent, make_adapters, match_layers
from edgeopt.training.losses import (
    attention_transfer_loss,
    feature_mse_loss,
    hinton_loss,
    labelled_output,
    output_matching_loss,
    rkd_loss,
    task_loss,
)
from edgeopt.training.mixed_precision import PRECISIONS, autocast
from edgeopt.training.modes import training_mode

KINDS = ("response", "feature", "relation")
# Steps timed before the forecast of a fine-tuning's end (the first step, slower by its allocations, left out):
# few enough that a fine-tuning that cannot end before the deadline stops seconds in, not when the deadline cuts
# it (measured: YOLOv8n's prune-recon30-ft ran 104 s of a 300-s budget before the deadline ended it).
FORECAST_STEPS = 3
# The least share of its planned steps a fine-tuning that cannot end in time is shortened to (its cosine schedule
# then ends at the shortened length); below it, it stops and the time goes to cheaper work. Recovery follows
# steps (ConvNeXt-atto half pruned and reconstructed, 1.51 pp below the original: 38 steps left it 2.02 pp below,
# 209 steps 1.01, 608 steps 0.00), so a run of half its planned steps still recovers much of what the whole does.
MIN_FIT_SHARE = 0.5


@dataclass
class FitResult:
    epochs: int
    seconds: float
    losses: list[float] = field(default_factory=list)  # mean loss per epoch
    kind: str = "response"
    device: str = "cpu"
    world_size: int = 1
    feature_layers: list[str] = field(default_factory=list)
    # per epoch: seconds spent waiting for the next batch (decoding and feeding), and the epoch's seconds
    data_seconds: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    mode: str = "train"  # "eval": trained in evaluation mode (its training-mode outputs differ; training/modes.py)
    steps: int = 0  # optimizer steps run
    planned_steps: int = 0
    shortened: str | None = None  # why fewer steps ran than planned (the time left), when they did


def parse_kind(kind, has_teacher: bool) -> tuple[str, ...]:
    """"response", "feature+relation", ["response", "feature"], "none" -> normalised tuple of kinds."""
    if kind is None:
        return ("response",) if has_teacher else ()
    parts = kind if isinstance(kind, (list, tuple)) else str(kind).replace(",", "+").split("+")
    parts = [p.strip().lower() for p in parts if p.strip()]
    if parts in ([], ["none"]):
        return ()
    bad = [p for p in parts if p not in KINDS]
    if bad:
        raise ConfigError(f"unknown distillation kind {bad[0]!r}: use {', '.join(KINDS)} or a '+' combination")
    if not has_teacher:
        raise ConfigError(f"{'+'.join(parts)} distillation needs a teacher model")
    return tuple(k for k in KINDS if k in parts)


def training_device() -> torch.device:
    """Where a fine-tuning in this process trains: its rank's GPU under torchrun, the GPU, else the CPU."""
    rank, world_size = ddp.world()
    if world_size > 1:
        return ddp.device_for(rank)
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


# optimizer -> weight decay when none is given: SGD's usual 5e-4 for BatchNorm CNNs; AdamW's decay is decoupled
# from the gradient's scale, and 0.05 is the recipe vision transformers and ConvNeXts are trained with (Touvron
# et al. 2021, "Training data-efficient image transformers"; Liu et al. 2022, "A ConvNet for the 2020s")
OPTIMIZERS = {"sgd": 5e-4, "adamw": 0.05}


def make_optimizer(name: str, params, lr: float, weight_decay: float | None = None) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum 0.9, or AdamW, at `lr`, with `weight_decay` (the optimizer's usual one when
    None)."""
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}: use {' or '.join(OPTIMIZERS)}")
    wd = OPTIMIZERS[name] if weight_decay is None else weight_decay
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd, nesterov=True)


def fit(student: nn.Module, train_data, teacher: nn.Module | None = None, epochs: int = 3, lr: float = 0.01,
        temperature: float = 4.0, alpha: float = 0.7, weight_decay: float | None = None, seed: int = 0,
        progress: Callable[[int, int, float], None] | None = None, *, kind=None,
        feature_layers: list[str] | None = None, feature_distance: str = "at", beta: float | None = None,
        gamma: float = 1.0, start_epoch: int = 0,
        regularizer: Callable[[nn.Module], torch.Tensor] | None = None, forecast_end: bool = True,
        shorten_to_fit: bool = False, optimizer: str = "sgd", precision: str = "fp32") -> FitResult:
    """Train `student` in place on batches of (x, y) or x (a list, Batches, or a streamed Dataset), reshuffled
    sample by sample every epoch from `seed`; under torchrun each rank reads its own shard.

    Without a teacher: cross-entropy (labels required). With one, `kind` picks the distillation: "response"
    (Hinton KD mixed with cross-entropy, the default), "feature" (intermediate maps,
    `feature_distance` "at" = attention transfer or "mse" through 1x1 adapters, weight `beta`),
    "relation" (RKD distance+angle on the penultimate embeddings, weight `gamma`), or a combination
    "response+feature". Kinds without "response" keep the hard-label cross-entropy as the task loss (soft
    targets if unlabelled). `start_epoch` starts the cosine schedule part-way (rewinding to epoch k).
    `regularizer(student) -> scalar` is added to every step's loss (e.g. Network Slimming's L1 on BN scales).
    `forecast_end`: under a deadline, forecast the end from the first steps and stop there when the rest cannot
    end in time (edgeopt/timeout.py: current_fit_by; a short probe leaves it to the deadline check: its forecast
    would speak of the probe, not of the fine-tuning). `shorten_to_fit`: rather than stop, run the steps that can
    end in time, the cosine schedule ending there, when they are at least MIN_FIT_SHARE of the run (`shortened`
    says so; a fine-tuning, whose result follows its steps, not a training from scratch). `optimizer`: "sgd"
    (Nesterov momentum) or "adamw", `weight_decay` its usual one when None (OPTIMIZERS). `precision`: "fp32", or
    "bf16" (forward passes and losses under bfloat16 autocast, weights and optimizer state kept in fp32)."""
    feed = TrainFeed(train_data, seed)
    if teacher is None and not feed.labelled:
        raise DataError("fine-tuning without a teacher needs labelled training data (x, y)")
    if feature_distance not in ("mse", "at"):
        raise ConfigError(f"feature_distance must be 'mse' or 'at', got {feature_distance!r}")
    if not 0 <= start_epoch < max(epochs, 1):
        raise ConfigError(f"start_epoch must be in [0, epochs), got {start_epoch}")
    kinds = parse_kind(kind, teacher is not None)
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown training precision {precision!r}: use {' or '.join(PRECISIONS)}")
    if beta is None:
        beta = 1.0 if feature_distance == "mse" else 20.0  # measured on digits: stronger weights hurt
    torch.manual_seed(seed)
    rank, world_size = ddp.world()
    dev = training_device()
    example = feed.example()  # one batch: layer matching and adapter initialisation
    names: list[str] = []
    if "feature" in kinds:
        names = match_layers(student, teacher, example, feature_layers)
    adapters = (make_adapters(student, teacher, names, example)
                if "feature" in kinds and feature_distance == "mse" else None)
    mode = training_mode(student, example)
    if mode.mode == "none":
        raise DataError(f"this model cannot be fine-tuned by distillation: {mode.reason}")
    unit = DistillStudent(student, names, adapters, embedding="relation" in kinds).to(dev).train()
    if mode.mode == "eval":
        unit.eval()
    t_capture = None
    if teacher is not None:
        teacher = copy.deepcopy(teacher).to(dev).eval()
        t_capture = Capture(teacher, names, embedding="relation" in kinds)
    model = ddp.wrap(unit, dev, world_size)
    steps = feed.steps(world_size)
    if not steps:
        raise DataError(f"{feed.n} samples cannot be shared among {world_size} processes")
    opt = make_optimizer(optimizer, model.parameters(), lr, weight_decay)
    # the run's steps from `start_epoch` on (a list: a forecast may shorten them), after `offset` steps already
    # run before it; the cosine decay is written out so that a run can start part-way through it (weight
    # rewinding) and end early (shortened to fit the time left)
    offset = start_epoch * steps
    length = [max(1, epochs * steps - offset)]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s + offset, offset + length[0]) / (offset + length[0]))))
    result = FitResult(epochs=epochs, seconds=0.0, device=str(dev), world_size=world_size,
                       kind="+".join(kinds) if kinds else "none", feature_layers=names, mode=mode.mode,
                       planned_steps=length[0])
    t0 = time.perf_counter()
    forecast = _EndForecast(length[0], shorten_to_fit) if world_size == 1 and forecast_end else None
    with unit.capture, t_capture if t_capture is not None else nullcontext():
        for epoch in range(start_epoch, epochs):
            if result.steps >= length[0]:  # shortened to fit the time left
                break
            total, n, waited, t_epoch = 0.0, 0, [0.0], time.perf_counter()
            for x, y in _timed(feed.epoch(epoch, rank, world_size), waited):
                if result.steps >= length[0]:
                    break
                x = x.to(dev, non_blocking=True)
                y = y.to(dev) if isinstance(y, torch.Tensor) else None  # box lists: teacher only
                t_out = None
                with autocast(dev, precision):
                    out, feats, emb = model(x)
                    if teacher is not None:
                        with torch.no_grad():
                            t_out = run_model(teacher, x)
                outputs = (out, feats, emb, t_out, *((t_capture.feats, t_capture.embedding)
                                                     if t_capture is not None else ({}, None)))
                if precision == "bf16":  # the losses in fp32: a softmax or a squared difference in bfloat16
                    outputs = _fp32(outputs)  # loses the small differences distillation learns from
                loss = _loss(y, *outputs, kinds, names, feature_distance, temperature, alpha, beta, gamma)
                loss = loss + regularizer(student) if regularizer is not None else loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach())
                n += 1
                result.steps += 1
                # a search's deadline (edgeopt/timeout.py), checked between steps: a fine-tuning no forecast saw
                # coming (the first one after quick reconstruction builds) ends at the --time-budget, not past it.
                # Alone only: under torchrun one rank stopping would leave the others waiting in an all-reduce
                if world_size == 1 and deadline_passed():
                    raise TimeBudgetError(f"the time ran out while fine-tuning (epoch {epoch + 1} of {epochs}, "
                                          f"step {n} of {steps})")
                if forecast is not None and (fitted := forecast.step()) is not None:
                    length[0], result.shortened = fitted
            result.losses.append(ddp.mean_across(total / max(n, 1), world_size))
            result.data_seconds.append(round(waited[0], 3))
            result.epoch_seconds.append(round(time.perf_counter() - t_epoch, 3))
            if progress:
                progress(epoch + 1, epochs, result.losses[-1])
    student.to("cpu").eval()
    result.seconds = round(time.perf_counter() - t0, 2)
    return result


class _EndForecast:
    """Whether a fine-tuning of `total` steps can end in time (edgeopt/timeout.py: current_fit_by), judged after
    FORECAST_STEPS steps past the first from the median of their times (one slow step, such as a first backward's
    allocations, does not decide it). Raises WontFitError when it cannot, unless `shorten`: then `step()` returns
    (steps, why) with the steps that end in time when they are at least MIN_FIT_SHARE of the run, and checks that
    length again at every later step from the mean step time so far, shortening it further where the steps
    slowed (a run that reached its deadline would be lost whole)."""

    def __init__(self, total: int, shorten: bool = False):
        self.total, self.length, self.shorten = total, total, shorten
        self.done, self.t_first, self.t_last, self.times = 0, 0.0, 0.0, []

    def step(self) -> tuple[int, str] | None:
        now = time.perf_counter()
        self.done += 1
        if self.done > 1:
            self.times.append(now - self.t_last)
        else:
            self.t_first = now
        self.t_last = now
        fit_by = current_fit_by()
        if fit_by is None or self.done <= FORECAST_STEPS:
            return None
        left = fit_by - now
        if self.done == FORECAST_STEPS + 1:
            per_step = statistics.median(self.times)
        elif self.shorten:
            per_step = (now - self.t_first) / (self.done - 1)
        else:
            return None
        need = per_step * (self.length - self.done)
        if need <= left:
            return None
        fitting = self.done + int(max(left, 0.0) / per_step)
        if not self.shorten or (self.length == self.total and fitting < MIN_FIT_SHARE * self.total):
            raise WontFitError(f"fine-tuning would take about {need:.0f} s more ({self.total - self.done} steps "
                               f"at {per_step:.2f} s), {max(left, 0):.0f} s left", need_s=per_step * self.total)
        self.length = fitting
        return fitting, (f"{fitting} of its {self.total} planned steps, to end within the time left (the rest "
                         f"would have taken about {need:.0f} s at {per_step:.2f} s a step, {max(left, 0):.0f} s "
                         "left)")


def _timed(batches, waited: list[float]):
    """Yield from `batches`, adding the time spent waiting for each one to waited[0]."""
    it = iter(batches)
    while True:
        t = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        waited[0] += time.perf_counter() - t
        yield item


def _fp32(tree):
    """Every bfloat16 tensor in `tree` (nested dicts, lists, tuples) as float32."""
    if isinstance(tree, torch.Tensor):
        return tree.float() if tree.dtype == torch.bfloat16 else tree
    if isinstance(tree, dict):
        return {k: _fp32(v) for k, v in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # a named tuple
        return type(tree)(*(_fp32(v) for v in tree))
    if isinstance(tree, (list, tuple)):
        return type(tree)(_fp32(v) for v in tree)
    return tree


def _loss(y, out, feats, emb, t_out, t_feats, t_emb, kinds, names, feature_distance, temperature, alpha,
          beta, gamma) -> torch.Tensor:
    """The step's loss from the student's outputs (`feats`, `emb`: its captured maps and embedding) and, with a
    teacher, the teacher's (`t_out` its outputs, None without one)."""
    classes = isinstance(out, torch.Tensor) and out.dim() == 2  # one class-logit output: the classic losses
    if t_out is None:
        if classes:
            return nn.functional.cross_entropy(out, y)
        outs = flatten_outputs(out)
        if labelled_output(outs, y) is None:
            raise DataError("fine-tuning without a teacher needs labels that fit one of the model's outputs "
                            f"({', '.join(outs)}): class labels (N,) or masks (N, H, W)")
        return task_loss(outs, y)
    if not classes:
        loss = output_matching_loss(flatten_outputs(out), flatten_outputs(t_out), y, alpha)
    elif "response" in kinds or y is None:
        loss = hinton_loss(out, t_out, y, temperature, alpha)
    else:
        loss = nn.functional.cross_entropy(out, y)
    if "feature" in kinds:
        dist = feature_mse_loss if feature_distance == "mse" else attention_transfer_loss
        loss = loss + beta * sum(dist(feats[n], t_feats[n]) for n in names) / len(names)
    if "relation" in kinds:
        loss = loss + gamma * rkd_loss(emb, t_emb)
    return loss
