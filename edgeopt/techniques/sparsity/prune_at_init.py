"""Pruning at initialisation: score each weight of a freshly initialised model, keep the best globally,
then train once (much cheaper than iterative pruning; only when training from scratch is possible).

- SNIP (Lee et al. 2019): |w * dL/dw| on a labelled batch (connection sensitivity).
- GraSP (Wang et al. 2020): keep the weights whose removal would reduce gradient flow most;
  score = w * (H g), with H g the Hessian-gradient product (keep the highest).
- SynFlow (Tanaka et al. 2020): data-free; |w * dR/dw| with R the output sum of the network with |weights|
  on an all-ones input, pruned iteratively on an exponential schedule to avoid layer collapse."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from edgeopt.errors import ConfigError, DataError
from edgeopt.techniques.sparsity.unstructured import apply_masks, masks_from_scores, prunable

METHODS = ("snip", "grasp", "synflow")


def _batch(data) -> tuple[torch.Tensor, torch.Tensor | None]:
    items = data.items if hasattr(data, "items") else data
    items = list(items) if not isinstance(items, torch.Tensor) else [items]
    if not items:
        raise DataError("prune_at_init needs at least one batch")
    b = items[0]
    return (b[0], b[1]) if isinstance(b, (tuple, list)) else (b, None)


def _labelled(x, y, method):
    if y is None:
        raise DataError(f"{method} needs a labelled batch (x, y); synflow is data-free")
    return x, y


def snip_scores(model: nn.Module, x, y) -> dict[str, torch.Tensor]:
    layers = prunable(model)
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return {n: (m.weight.grad * m.weight).abs().detach() for n, m in layers}


def grasp_scores(model: nn.Module, x, y, temperature: float = 200.0) -> dict[str, torch.Tensor]:
    layers = prunable(model)
    weights = [m.weight for _, m in layers]
    g = torch.autograd.grad(F.cross_entropy(model(x) / temperature, y), weights)
    g = [t.detach() for t in g]
    gp = torch.autograd.grad(F.cross_entropy(model(x) / temperature, y), weights, create_graph=True)
    z = sum((a * b).sum() for a, b in zip(g, gp, strict=True))
    hg = torch.autograd.grad(z, weights)
    return {n: (w * h).detach() for (n, _), w, h in zip(layers, weights, hg, strict=True)}


def synflow_scores(model: nn.Module, shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    layers = prunable(model)
    signs = {}
    with torch.no_grad():
        for name, p in model.state_dict().items():
            if p.is_floating_point():
                signs[name] = torch.sign(p)
                p.abs_()
    model.zero_grad()
    model(torch.ones((1, *shape), dtype=torch.float64)).sum().backward()
    # masked layers train weight_orig (weight = weight_orig * mask): score the parameter itself
    params = {n: getattr(m, "weight_orig", m.weight) for n, m in layers}
    scores = {n: (p.grad * p).abs().detach().float() for n, p in params.items()}
    with torch.no_grad():
        for name, p in model.state_dict().items():
            if name in signs:
                p.mul_(signs[name])
    return scores


def prune_at_init(model: nn.Module, data, method: str = "snip", sparsity: float = 0.8,
                  iterations: int = 20) -> tuple[nn.Module, dict]:
    """Attach global masks of `sparsity` to `model` (in place) chosen by `method`; returns (model, record).
    `data`: batches of (x, y) (SNIP/GraSP use the first one; SynFlow only its shape)."""
    method = method.lower()
    if method not in METHODS:
        raise ConfigError(f"unknown prune-at-init method {method!r}: use one of {', '.join(METHODS)}")
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"sparsity must be in [0, 1), got {sparsity}")
    x, y = _batch(data)
    was_training = model.training
    if method == "synflow":
        # BN in eval mode (identity-like at init) and float64: products of |weights| overflow float32
        probe = copy.deepcopy(model).double().eval()
        for k in range(1, iterations + 1):
            s = 1.0 - (1.0 - sparsity) ** (k / iterations)
            masks = masks_from_scores(synflow_scores(probe, tuple(x.shape[1:])), s)
            apply_masks(probe, {n: m.double() for n, m in masks.items()})
    else:
        probe = copy.deepcopy(model).train()
        x, y = _labelled(x, y, method)
        scores = snip_scores(probe, x, y) if method == "snip" else grasp_scores(probe, x, y)
        masks = masks_from_scores(scores, sparsity)
    apply_masks(model, {n: m.float() for n, m in masks.items()})
    model.train(was_training)
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    return model, {"method": method, "sparsity": round(1 - kept / total, 4), "layers": len(masks)}


def apply_prune_at_init(model: nn.Module, example: torch.Tensor, config, data=None, teacher=None,
                        train_data=None, progress=None) -> tuple[nn.Module, dict]:
    """Registry entry (training from scratch): re-initialise a copy, mask it, train it once with
    edgeopt.training.fit, bake the masks in."""
    from edgeopt.techniques.sparsity.unstructured import make_permanent
    from edgeopt.training import fit

    data = train_data if train_data is not None else data  # the pipeline's training split
    if data is None or not getattr(data, "labelled", False):
        raise DataError("pruning at initialisation trains from scratch: it needs labelled training data")
    model = copy.deepcopy(model)
    torch.manual_seed(config.seed)
    for m in model.modules():
        if hasattr(m, "reset_parameters") and m is not model:
            m.reset_parameters()
    model, record = prune_at_init(model, data, config.method, config.sparsity)
    res = fit(model, data, epochs=config.epochs, lr=config.lr, seed=config.seed, progress=progress)
    make_permanent(model)
    return model.eval(), {**record, "epochs": res.epochs, "train_seconds": res.seconds}
