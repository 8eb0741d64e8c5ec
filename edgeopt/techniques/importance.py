"""Pruning criteria: which channels to remove. Torch-Pruning's own criteria where it has them (L1/L2 group
magnitude, BN scale, Taylor, FPGM, random); HRank (Lin et al. 2020) here, as a Torch-Pruning Importance
fed with feature-map ranks measured over a few batches of real inputs.

Also the Network Slimming penalty (L1 on BatchNorm gamma) for sparsity-regularised training, used when
retraining is allowed (the training loop itself belongs to the decision layer)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from edgeopt.errors import PruningError
from edgeopt.inputs.feeding import run_model
from edgeopt.inputs.model_io import Inputs
from edgeopt.registry import Registry

IMPORTANCE_NAMES = ("l2", "l1", "bn_scale", "taylor", "hrank", "fpgm", "random", "energy")
NEEDS_LABELS = ("taylor",)
NEEDS_INPUTS = ("hrank", "energy")


def _hrank_importance():
    import torch_pruning as tp

    class HRankImportance(tp.importance.GroupMagnitudeImportance):
        """Score of a channel = average rank of its output feature maps (stored on each conv as `_hrank`
        by `measure_hrank`); a group's score is the mean over its convs, as for the magnitude criteria."""

        @torch.no_grad()
        def __call__(self, group):
            imps, root_idxs = [], []
            for i, (dep, idxs) in enumerate(group):
                layer = dep.layer
                if (isinstance(layer, nn.Conv2d) and hasattr(layer, "_hrank")
                        and dep.pruning_fn == tp.prune_conv_out_channels):
                    imps.append(layer._hrank.to(layer.weight.device)[list(idxs)])
                    root_idxs.append(group[i].root_idxs)
            if not imps:  # a group without measured convs (e.g. only Linear layers): fall back to L2
                return super().__call__(group)
            return self._normalize(self._reduce(imps, root_idxs), self.normalizer)

    return HRankImportance()


def importances() -> Registry[Callable[[], object]]:
    import torch_pruning as tp

    reg: Registry[Callable[[], object]] = Registry("importance criterion")
    reg.register("l2", lambda: tp.importance.GroupMagnitudeImportance(p=2), aliases=("magnitude",))
    reg.register("l1", lambda: tp.importance.GroupMagnitudeImportance(p=1))
    reg.register("bn_scale", lambda: tp.importance.BNScaleImportance(), aliases=("slimming", "bn"))
    reg.register("taylor", lambda: tp.importance.GroupTaylorImportance())
    reg.register("hrank", _hrank_importance, aliases=("rank",))
    reg.register("fpgm", lambda: tp.importance.FPGMImportance())
    reg.register("random", lambda: tp.importance.RandomImportance())
    reg.register("energy", _energy_importance, aliases=("activation_energy",))
    return reg


def inputs_of(data) -> list[torch.Tensor]:
    """Batches given as tensors or (tensor, label) pairs -> the input tensors."""
    if not data:
        return []
    return [b[0] if isinstance(b, (tuple, list)) else b for b in data]


def taylor_grads(model: nn.Module, data, max_batches: int = 4) -> None:
    """First-order Taylor needs gradients of the loss: accumulate them over a few labelled batches."""
    if not data or not all(isinstance(b, (tuple, list)) and len(b) > 1 and b[1] is not None for b in data):
        raise PruningError("taylor importance needs a few labelled batches: pass data=[(x, y), ...]")
    model.zero_grad()
    for x, y in list(data)[:max_batches]:
        nn.functional.cross_entropy(model(x), y).backward()


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = (ra.norm() * rb.norm()).item()
    return 1.0 if den == 0 else float((ra * rb).sum().item() / den)


ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SiLU, nn.Hardswish, nn.GELU, nn.Mish,
               nn.Hardsigmoid, nn.Sigmoid, nn.Tanh)


class _ActivatedMaps:
    """Follows each conv's output through the BatchNorm and activation *modules* that consume it directly
    (same tensor, not modified in place in between) and hands the activated map to `record`. HRank ranks the
    maps the next layer sees: a raw conv output is almost always full rank, so it cannot tell channels apart,
    while BN+ReLU zeroes channels that never fire. A chain ends, un-activated, at anything else."""

    def __init__(self, record):
        self.record = record
        self.conv = self.tensor = self.value = None
        self.version = 0
        self.stage = ""

    def flush(self, activation: nn.Module | None = None) -> None:
        if self.conv is not None:
            # .forward, not __call__: calling the module would re-enter these hooks
            self.record(self.conv, activation.forward(self.value) if activation is not None else self.value)
        self.conv = self.tensor = self.value = None

    def _track(self, conv, out, stage):
        # a copy: later in-place ops (`out += identity`, inplace ReLU) must not change what is ranked
        self.conv, self.tensor, self.value = conv, out, out.detach().clone()
        self.version, self.stage = out._version, stage

    def pre_hook(self, mod, inp):
        x = inp[0] if inp else None
        direct = self.conv is not None and x is self.tensor and x._version == self.version
        if direct and isinstance(mod, nn.modules.batchnorm._BatchNorm) and self.stage == "conv":
            self.stage = "bn-pending"  # the BN's forward hook takes over
        elif direct and isinstance(mod, ACTIVATIONS):
            self.flush(mod)
        elif not isinstance(mod, nn.Conv2d):
            self.flush()

    def post_hook(self, mod, inp, out):
        if isinstance(mod, nn.Conv2d):
            self.flush()
            if out.dim() == 4:
                self._track(mod, out, "conv")
        elif isinstance(mod, nn.modules.batchnorm._BatchNorm) and self.stage == "bn-pending":
            self._track(self.conv, out, "bn")


def _rank_maps(out: torch.Tensor) -> torch.Tensor | None:
    """Average (over the batch) matrix rank of each channel's H x W map; None for 1x1 maps."""
    if out.dim() != 4 or min(out.shape[-2:]) <= 1:
        return None
    return torch.linalg.matrix_rank(out.float()).float().mean(0)


HRANK_MAX_IMAGES = 16


@torch.no_grad()
def measure_hrank(model: nn.Module, data, max_batches: int = 4) -> dict:
    """Store on every conv `_hrank`: the average matrix rank of each output channel's *activated* feature map
    (after its BatchNorm and activation, as in the HRank paper) over the batches. Returns how stable the
    per-channel ranking is across batches (HRank's claim): the Spearman correlation of each batch's ranks with
    the mean ranks, averaged and worst over layers."""
    batches = inputs_of(data)[:max_batches]
    if not batches:
        raise PruningError("hrank importance needs a few batches of real inputs: pass data=[x, ...]")
    # a feature map's rank barely moves from image to image (HRank's observation, checked by the Spearman
    # stability below): HRANK_MAX_IMAGES images bound the SVDs of large maps (resnet18 at 224: 9 s for 32)
    per = max(1, -(-HRANK_MAX_IMAGES // len(batches)))
    batches = [x[:per] if isinstance(x, (torch.Tensor, Inputs)) and len(x) > per else x for x in batches]
    per_layer: dict[nn.Module, list[torch.Tensor]] = {}

    def record(conv, act):
        ranks = _rank_maps(act)
        if ranks is not None:
            per_layer.setdefault(conv, []).append(ranks)

    tracker = _ActivatedMaps(record)
    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [h for m in leaves for h in (m.register_forward_pre_hook(tracker.pre_hook),
                                           m.register_forward_hook(tracker.post_hook))]
    try:
        for x in batches:
            run_model(model, x)
            tracker.flush()
    finally:
        for h in handles:
            h.remove()
    corr = []
    for m, ranks in per_layer.items():
        mean = torch.stack(ranks).mean(0)
        norms = m.weight.detach().flatten(1).norm(dim=1)
        m._hrank = mean + 1e-3 * norms / norms.max().clamp_min(1e-12)  # ties only, below any rank difference
        if len(ranks) > 1 and mean.std() > 0:
            corr.append(min(_spearman(r, mean) for r in ranks))
    return {"batches": len(batches), "layers_measured": len(per_layer), "maps": "after BatchNorm and activation",
            "mean_spearman": round(sum(corr) / len(corr), 4) if corr else None,
            "min_spearman": round(min(corr), 4) if corr else None,
            "stable": (min(corr) > 0.8) if corr else None}


def clear_hrank(model: nn.Module) -> None:
    for m in model.modules():
        if hasattr(m, "_hrank"):
            del m._hrank


# --- energy-based criterion ---------------------------------------------------------------------------
# A channel whose output feature maps carry little energy (mean squared activation) on real inputs
# contributes little to what the next layer sees, whatever its weights look like.


def _energy_importance():
    import torch_pruning as tp

    prunes_out = (tp.prune_conv_out_channels, tp.prune_batchnorm_out_channels, tp.prune_linear_out_channels)

    class EnergyImportance(tp.importance.GroupMagnitudeImportance):
        """Score of a channel = energy of its output maps, stored as `_energy` by `measure_energy` on the
        convs and the BatchNorms after them (after BN the scale is the one the next layer sees); a group's
        score is the mean over its measured layers."""

        @torch.no_grad()
        def __call__(self, group):
            imps, root_idxs = [], []
            for i, (dep, idxs) in enumerate(group):
                layer = dep.layer
                if hasattr(layer, "_energy") and dep.pruning_fn in prunes_out:
                    imps.append(layer._energy.to(layer.weight.device)[list(idxs)])
                    root_idxs.append(group[i].root_idxs)
            if not imps:  # nothing measured in this group: fall back to L2 magnitude
                return super().__call__(group)
            return self._normalize(self._reduce(imps, root_idxs), self.normalizer)

    return EnergyImportance()


@torch.no_grad()
def measure_energy(model: nn.Module, data, max_batches: int = 4) -> dict:
    """Store on every conv, BatchNorm and Linear `_energy`: the mean squared activation of each output
    channel over the batches. Returns how stable the per-channel ranking is across batches (Spearman
    correlation of each batch's energies with the mean, averaged and worst over layers)."""
    batches = inputs_of(data)[:max_batches]
    if not batches:
        raise PruningError("energy importance needs a few batches of real inputs: pass data=[x, ...]")
    per_layer: dict[nn.Module, list[torch.Tensor]] = {}

    def hook(mod, inp, out):
        if isinstance(out, torch.Tensor) and out.dim() >= 2:
            dims = [d for d in range(out.dim()) if d != 1]  # every axis but channels (NCHW / NC)
            per_layer.setdefault(mod, []).append(out.float().pow(2).mean(dim=dims))

    kinds = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    try:
        for x in batches:
            run_model(model, x)
    finally:
        for h in handles:
            h.remove()
    corr = []
    for m, energies in per_layer.items():
        mean = torch.stack(energies).mean(0)
        m._energy = mean
        if len(energies) > 1 and mean.std() > 0:
            corr.append(min(_spearman(e, mean) for e in energies))
    return {"batches": len(batches), "layers_measured": len(per_layer),
            "mean_spearman": round(sum(corr) / len(corr), 4) if corr else None,
            "min_spearman": round(min(corr), 4) if corr else None}


def clear_energy(model: nn.Module) -> None:
    for m in model.modules():
        if hasattr(m, "_energy"):
            del m._energy


def measure_for(importance: str, model: nn.Module, data) -> dict:
    """Measure what an input-driven criterion needs on `model`; returns the record entry."""
    if importance == "energy":
        return {"energy_stability": measure_energy(model, data)}
    return {"hrank_stability": measure_hrank(model, data)}


def slimming_penalty(model: nn.Module, strength: float = 1e-4) -> torch.Tensor:
    """Network Slimming: L1 penalty on BatchNorm scale factors, added to the task loss while training so
    that unimportant channels' gamma go to zero and `bn_scale` pruning removes them cheaply."""
    terms = [m.weight.abs().sum() for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]
    return strength * torch.stack(terms).sum() if terms else torch.zeros(())


def train_slimming(model: nn.Module, data, epochs: int = 1, strength: float = 1e-4, lr: float = 1e-3) -> dict:
    """Sparsity-regularised training (task loss + L1 on BN gamma) on labelled batches, in place."""
    if not data or not all(isinstance(b, (tuple, list)) and b[1] is not None for b in data):
        raise PruningError("slimming training needs labelled batches: pass data=[(x, y), ...]")
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    loss = torch.zeros(())
    for _ in range(epochs):
        for x, y in data:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y) + slimming_penalty(model, strength)
            loss.backward()
            opt.step()
    model.eval()
    return {"epochs": epochs, "strength": strength, "last_loss": float(loss.detach())}
