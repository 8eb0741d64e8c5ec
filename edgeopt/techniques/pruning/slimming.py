"""Network Slimming (Liu et al. 2017, "Learning efficient convolutional networks through network slimming"):
sparsity training with an L1 penalty on the BatchNorm scale factors (gamma), so that the channels the
network can do without drift towards gamma = 0, then BN-scale pruning removes them physically.

Here the given (trained) model is fine-tuned with the penalty for a few epochs (distilling from itself, the
teacher, so no labels are needed), then pruned by `bn_scale` at `ratio` (global scope, as in the paper: one
threshold over all gammas). The distillation fine-tuning that recovers accuracy afterwards is the planner's
next step (a FineTuneConfig), as for every other structure."""

from __future__ import annotations

import copy
import hashlib

import torch
from torch import nn

from edgeopt.errors import ConfigError, DataError

# The sparsity-trained weights do not depend on the prune ratio: the planner's family tries several ratios
# of one (model, training) pair, so the last trained model is kept and reused (one entry: memory stays flat).
_LAST: dict[str, nn.Module] = {}


def batchnorms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]


def slimming_penalty(model: nn.Module, strength: float = 1e-4) -> torch.Tensor:
    """The L1 penalty on BatchNorm scale factors, added to the task loss while training so that unimportant
    channels' gamma go to zero and `bn_scale` pruning removes them cheaply."""
    terms = [m.weight.abs().sum() for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]
    return strength * torch.stack(terms).sum() if terms else torch.zeros(())


def gamma_stats(model: nn.Module, eps: float = 1e-2) -> dict:
    """The mean |gamma| and the share of gammas under `eps` (channels slimming made cheap to remove)."""
    g = torch.cat([m.weight.detach().abs().flatten() for m in batchnorms(model)])
    return {"mean_abs_gamma": round(float(g.mean()), 4), "share_below_0.01": round(float((g < eps).float().mean()), 4)}


def _key(model: nn.Module, config) -> str:
    h = hashlib.sha1(config.model_dump_json(exclude={"ratio", "scope", "round_to"}).encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().float().cpu().flatten()[:1024].numpy().tobytes())
        h.update(str(float(t.float().sum())).encode())
    return h.hexdigest()


def sparsity_train(model: nn.Module, train_data, epochs: int = 2, strength: float = 1e-4, lr: float = 0.01,
                   seed: int = 0, teacher: nn.Module | None = None, progress=None) -> tuple[nn.Module, dict]:
    """A copy of `model` trained with `strength * sum|gamma|` added to the loss (response distillation from
    `teacher`, default the model itself, mixed with cross-entropy when the data is labelled)."""
    from edgeopt.training import fit

    if not batchnorms(model):
        raise ConfigError("network slimming needs BatchNorm layers (it sparsifies their scales); this model has "
                          "none: use structured pruning with another criterion")
    if train_data is None:
        raise DataError("network slimming trains with an L1 penalty on BatchNorm scales: it needs training data")
    student = copy.deepcopy(model)
    before = gamma_stats(student)
    res = fit(student, train_data, teacher=teacher if teacher is not None else model, epochs=epochs, lr=lr,
              seed=seed, progress=progress, regularizer=lambda m: slimming_penalty(m, strength))
    return student.eval(), {"epochs": epochs, "strength": strength, "train_seconds": res.seconds,
                            "gamma_before": before, "gamma_after": gamma_stats(student)}


def apply_slimming(model: nn.Module, example: torch.Tensor, config, data=None, teacher=None, train_data=None,
                   progress=None) -> tuple[nn.Module, dict]:
    """Registry entry: sparsity training (cached across ratios), then BN-scale pruning at `config.ratio`."""
    from edgeopt.techniques.pruning.prune import prune

    if not batchnorms(model):
        raise ConfigError("network slimming needs BatchNorm layers (it sparsifies their scales); this model has "
                          "none: use structured pruning with another criterion")
    key = _key(model, config)
    reused = key in _LAST
    if reused:
        trained, record = _LAST[key]
    else:
        trained, record = sparsity_train(model, train_data, epochs=config.epochs, strength=config.strength,
                                         lr=config.lr, seed=config.seed, teacher=teacher, progress=progress)
        _LAST.clear()
        _LAST[key] = (trained, record)
    small, pruned = prune(trained, example, ratio=config.ratio, importance="bn_scale", scope=config.scope,
                          round_to=config.round_to, max_layer_ratio=config.max_layer_ratio)
    return small, {**record, "sparsity_training_reused": reused, "pruning": pruned}
