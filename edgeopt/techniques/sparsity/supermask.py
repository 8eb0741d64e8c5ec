"""Supermasks: masks that make a network with random, never-trained weights perform far above chance.

Two ways to find them, both on the conv and Linear weights, the same fraction kept in every layer:
- "edge_popup" (Ramanujan et al. 2020): the weights stay frozen at their random init; a score per weight is
  trained instead, the forward pass uses the weights whose |score| is in the layer's top-k (straight-through
  gradient to the scores).
- "large_final" / "magnitude_increase" (Zhou et al. 2019): train the weights normally, keep those with the
  largest final magnitude |w_f|, or the largest increase |w_f| - |w_i|; the mask is applied to the *initial*
  weights, which is what makes it a supermask.

The result is a copy of the model holding its initial weights with zeros where masked; BatchNorm statistics
are re-estimated on the training inputs for the masked weights."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from edgeopt.errors import ConfigError, DataError

METHODS = ("edge_popup", "large_final", "magnitude_increase")


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _top_mask(score: torch.Tensor, keep: float) -> torch.Tensor:
    k = max(1, int(round(keep * score.numel())))
    mask = torch.zeros(score.numel(), device=score.device)
    mask[score.flatten().topk(k).indices] = 1.0
    return mask.view_as(score)


class _TopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, magnitude, keep):
        return _top_mask(magnitude, keep)

    @staticmethod
    def backward(ctx, grad):  # straight-through: the scores get the gradient the mask would
        return grad, None


class _EdgePopup(nn.Module):
    """Parametrization weight -> weight * top-k(|scores|); only the scores train."""

    def __init__(self, weight: torch.Tensor, keep: float):
        super().__init__()
        self.keep = keep
        self.scores = nn.Parameter(torch.empty_like(weight))
        nn.init.kaiming_uniform_(self.scores, a=math.sqrt(5))

    def forward(self, w):
        return w * _TopK.apply(self.scores.abs(), self.keep)  # the gradient flows on through abs


def _items(data) -> list:
    items = data.items if hasattr(data, "items") else list(data or [])
    if not items or not all(isinstance(b, (tuple, list)) and len(b) > 1 and b[1] is not None for b in items):
        raise DataError("supermask search trains on labelled batches: pass data=[(x, y), ...]")
    return items


def _edge_popup(model: nn.Module, items: list, keep: float, epochs: int, lr: float) -> dict[str, torch.Tensor]:
    from torch.nn.utils import parametrize

    work = copy.deepcopy(model)
    for p in work.parameters():
        p.requires_grad_(False)
    pops = {}
    for name, m in _layers(work):
        pops[name] = _EdgePopup(m.weight.detach(), keep)
        parametrize.register_parametrization(m, "weight", pops[name])
        m.parametrizations.weight.original.requires_grad_(False)
    opt = torch.optim.SGD([p.scores for p in pops.values()], lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs * len(items)))
    work.train()
    for _ in range(epochs):
        for x, y in items:
            opt.zero_grad()
            nn.functional.cross_entropy(work(x), y).backward()
            opt.step()
            sched.step()
    return {n: _top_mask(p.scores.detach().abs(), keep) for n, p in pops.items()}


def _by_training(model: nn.Module, items: list, keep: float, epochs: int, lr: float, method: str):
    from edgeopt.training import fit

    trained = copy.deepcopy(model)
    fit(trained, items, epochs=epochs, lr=lr)
    init = dict(_layers(model))
    masks = {}
    for name, m in _layers(trained):
        final, start = m.weight.detach().abs(), init[name].weight.detach().abs()
        masks[name] = _top_mask(final if method == "large_final" else final - start, keep)
    return masks, trained


def supermask(model: nn.Module, data, sparsity: float = 0.5, epochs: int = 3, method: str = "edge_popup",
              lr: float | None = None, eval_data=None, seed: int = 0) -> tuple[nn.Module, dict]:
    """Return (copy of `model` with its own (initial) weights, zeros where masked, record)."""
    if method not in METHODS:
        raise ConfigError(f"unknown supermask method {method!r}: use one of {', '.join(METHODS)}")
    if not 0.0 < sparsity < 1.0:
        raise ConfigError(f"supermask sparsity must be in (0, 1), got {sparsity}")
    if epochs < 1:
        raise ConfigError(f"supermask search needs at least one epoch, got {epochs}")
    items = _items(data)
    if not _layers(model):
        raise ConfigError("supermask: the model has no Conv2d or Linear layer to mask")
    torch.manual_seed(seed)
    keep = 1.0 - sparsity
    record: dict = {"method": method, "sparsity": sparsity, "epochs": epochs}
    if method == "edge_popup":
        masks = _edge_popup(model, items, keep, epochs, lr or 0.1)
    else:
        masks, trained = _by_training(model, items, keep, epochs, lr or 0.05, method)
        if eval_data is not None:
            from edgeopt.training import top1

            record["trained_dense_top1"] = top1(trained, eval_data)
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for name, m in _layers(masked):
            m.weight.mul_(masks[name])
    from edgeopt.techniques.repair.bn_recal import recalibrate_bn

    record["bn_recalibrated"] = recalibrate_bn(masked, [x for x, _ in items])
    total = sum(m.weight.numel() for _, m in _layers(masked))
    zeros = sum(int((m.weight == 0).sum()) for _, m in _layers(masked))
    record["measured_sparsity"] = round(zeros / total, 4)
    if eval_data is not None:
        from edgeopt.training import top1

        record["init_top1"] = top1(model, eval_data)  # the same random weights without a mask
        record["top1"] = top1(masked, eval_data)
    return masked.eval(), record


def apply_supermask(model: nn.Module, example: torch.Tensor, config, data=None, teacher=None, train_data=None,
                    progress=None) -> tuple[nn.Module, dict]:
    """Registry entry: the mask is searched on the labelled training data."""
    return supermask(model, train_data if train_data is not None else data, sparsity=config.sparsity,
                     epochs=config.epochs, method=config.method, lr=config.lr, seed=config.seed)
