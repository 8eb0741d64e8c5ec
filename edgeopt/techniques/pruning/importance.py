"""Pruning criteria: which channels to remove. Torch-Pruning's own criteria where it has them (L1/L2 group
magnitude, BN scale, FPGM, random); the data-driven ones here, as objects that measure on calibration data
and keep what they measured (Taylor: gradients of the loss; HRank (Lin et al. 2020): feature-map ranks;
energy: mean squared activations). Like Torch-Pruning's `Importance` objects, a criterion is called on a
group and returns one score per channel; nothing is ever stored on the model's modules."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from edgeopt.errors import PruningError
from edgeopt.inputs.feeding import run_model
from edgeopt.inputs.hooks import forward_hooks
from edgeopt.inputs.model_io import Inputs
from edgeopt.registry import Registry

IMPORTANCE_NAMES = ("l2", "l1", "bn_scale", "taylor", "hrank", "fpgm", "random", "energy")
NEEDS_LABELS = ("taylor",)
NEEDS_INPUTS = ("hrank", "energy")


def inputs_of(data) -> list[torch.Tensor]:
    """Batches given as tensors or (tensor, label) pairs -> the input tensors."""
    if not data:
        return []
    return [b[0] if isinstance(b, (tuple, list)) else b for b in data]


def measured(criterion) -> bool:
    """Whether the criterion measures on data (and must be measured before it is called)."""
    return callable(getattr(criterion, "measure", None))


class MeasuredImportance:
    """Base of the criteria measured on data: per-layer channel scores kept in `scores`, by each layer's name
    in the model measured. By name, not by module: pruning block by block puts a block back as a copy when
    its attempt fails, and the copy's layers have the same names (and the scores measured before the attempt,
    see `saved`/`put_back`). Layers without scores fall back to the group's L2 magnitude.

    `measure(model, data) -> dict` fills the scores (the dict is what the record reports); measuring again
    (after a pruning step, on the channels left) replaces the scores of the layers measured again."""

    every_step = False  # measured again before the first pruning step too (Taylor); these from the second on

    def __init__(self):
        import torch_pruning as tp

        self.magnitude = tp.importance.GroupMagnitudeImportance(p=2)
        self.scores: dict[str, torch.Tensor] = {}
        self.model: nn.Module | None = None
        self._names: dict[nn.Module, str] = {}
        self._stale = False

    def measure(self, model: nn.Module, data) -> dict:
        raise NotImplementedError

    def keep(self, model: nn.Module, per_layer: dict[nn.Module, torch.Tensor]) -> None:
        """Store what was measured on `model`'s layers, by name."""
        self.model = model
        self._names = {m: n for n, m in model.named_modules()}
        self._stale = False
        self.scores.update({self._names[m]: s for m, s in per_layer.items()})

    def score(self, layer: nn.Module) -> torch.Tensor | None:
        if self._stale and self.model is not None:  # a block was put back: its layers are new objects
            self._names = {m: n for n, m in self.model.named_modules()}
            self._stale = False
        name = self._names.get(layer)
        return None if name is None else self.scores.get(name)

    def saved(self, prefix: str) -> dict[str, torch.Tensor]:
        """The scores of the layers under the block `prefix` (before an attempt to prune it)."""
        return {n: s for n, s in self.scores.items() if n == prefix or n.startswith(prefix + ".")}

    def put_back(self, prefix: str, saved: dict[str, torch.Tensor]) -> None:
        """The block was put back as it was before the attempt: so are its layers' scores."""
        for n in list(self.saved(prefix)):
            del self.scores[n]
        self.scores.update(saved)
        self._stale = True

    def _mean_over_layers(self, group, applies: Callable) -> torch.Tensor:
        """A group's score: the mean over its measured layers (as for the magnitude criteria)."""
        imps, root_idxs = [], []
        for i, (dep, idxs) in enumerate(group):
            layer = dep.layer
            score = self.score(layer)
            if score is not None and applies(layer, dep.pruning_fn):
                imps.append(score.to(layer.weight.device)[list(idxs)])
                root_idxs.append(group[i].root_idxs)
        if not imps:  # a group without measured layers (e.g. only Linear layers for HRank): L2 magnitude
            return self.magnitude(group)
        return self.magnitude._normalize(self.magnitude._reduce(imps, root_idxs), self.magnitude.normalizer)


class TaylorImportance:
    """First-order Taylor (Torch-Pruning's group Taylor criterion): it reads the gradients of the loss that
    `measure` accumulates over a few labelled batches (on the parameters' own `.grad`, which pruning clears)."""

    every_step = True  # the gradients of the weights as they are before each step

    def __init__(self, max_batches: int = 4):
        import torch_pruning as tp

        self.taylor = tp.importance.GroupTaylorImportance()
        self.max_batches = max_batches

    def measure(self, model: nn.Module, data) -> dict:
        if not data or not all(isinstance(b, (tuple, list)) and len(b) > 1 and b[1] is not None for b in data):
            raise PruningError("taylor importance needs a few labelled batches: pass data=[(x, y), ...]")
        model.zero_grad()
        for x, y in list(data)[: self.max_batches]:
            nn.functional.cross_entropy(model(x), y).backward()
        return {}

    def __call__(self, group):
        return self.taylor(group)


def importances() -> Registry[Callable[[], object]]:
    import torch_pruning as tp

    reg: Registry[Callable[[], object]] = Registry("importance criterion")
    reg.register("l2", lambda: tp.importance.GroupMagnitudeImportance(p=2), aliases=("magnitude",))
    reg.register("l1", lambda: tp.importance.GroupMagnitudeImportance(p=1))
    reg.register("bn_scale", lambda: tp.importance.BNScaleImportance(), aliases=("slimming", "bn"))
    reg.register("taylor", TaylorImportance)
    reg.register("hrank", HRankImportance, aliases=("rank",))
    reg.register("fpgm", lambda: tp.importance.FPGMImportance())
    reg.register("random", lambda: tp.importance.RandomImportance())
    reg.register("energy", EnergyImportance, aliases=("activation_energy",))
    return reg


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = (ra.norm() * rb.norm()).item()
    return 1.0 if den == 0 else float((ra * rb).sum().item() / den)


def _stability(per_layer: dict[nn.Module, list[torch.Tensor]]) -> tuple[dict[nn.Module, torch.Tensor], list]:
    """The mean per-channel measure of each layer over the batches, and per layer the worst Spearman
    correlation of one batch's measures with the mean (how stable the per-channel ranking is)."""
    means, corr = {}, []
    for m, values in per_layer.items():
        mean = means[m] = torch.stack(values).mean(0)
        if len(values) > 1 and mean.std() > 0:
            corr.append(min(_spearman(v, mean) for v in values))
    return means, corr


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


class HRankImportance(MeasuredImportance):
    """Score of a channel = average rank of its *activated* output feature maps (after its BatchNorm and
    activation, as in the HRank paper) over a few batches; a group's score is the mean over its convs."""

    def __init__(self, max_batches: int = 4):
        super().__init__()
        self.max_batches = max_batches

    @torch.no_grad()
    def measure(self, model: nn.Module, data) -> dict:
        """Rank every conv's channels; the record says how stable the per-channel ranking is across batches
        (HRank's claim): the Spearman correlation of each batch's ranks with the mean ranks, averaged and
        worst over layers."""
        batches = inputs_of(data)[: self.max_batches]
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
        with forward_hooks(((m, tracker.pre_hook) for m in leaves), pre=True), \
                forward_hooks((m, tracker.post_hook) for m in leaves):
            for x in batches:
                run_model(model, x)
                tracker.flush()
        means, corr = _stability(per_layer)
        ranks = {}
        for m, mean in means.items():
            norms = m.weight.detach().flatten(1).norm(dim=1)
            ranks[m] = mean + 1e-3 * norms / norms.max().clamp_min(1e-12)  # ties only, below any rank difference
        self.keep(model, ranks)
        return {"hrank_stability": {
            "batches": len(batches), "layers_measured": len(per_layer), "maps": "after BatchNorm and activation",
            "mean_spearman": round(sum(corr) / len(corr), 4) if corr else None,
            "min_spearman": round(min(corr), 4) if corr else None, "stable": (min(corr) > 0.8) if corr else None}}

    @torch.no_grad()
    def __call__(self, group):
        import torch_pruning as tp

        return self._mean_over_layers(
            group, lambda layer, fn: isinstance(layer, nn.Conv2d) and fn == tp.prune_conv_out_channels)


# A channel whose output feature maps carry little energy (mean squared activation) on real inputs
# contributes little to what the next layer sees, whatever its weights look like.


class EnergyImportance(MeasuredImportance):
    """Score of a channel = energy of its output maps, measured on the convs, Linears and the BatchNorms
    after them (after BN the scale is the one the next layer sees); a group's score is the mean over its
    measured layers."""

    def __init__(self, max_batches: int = 4):
        super().__init__()
        self.max_batches = max_batches

    @torch.no_grad()
    def measure(self, model: nn.Module, data) -> dict:
        """The mean squared activation of each output channel over the batches; the record says how stable
        the per-channel ranking is across batches (Spearman correlation of each batch's energies with the
        mean, averaged and worst over layers)."""
        batches = inputs_of(data)[: self.max_batches]
        if not batches:
            raise PruningError("energy importance needs a few batches of real inputs: pass data=[x, ...]")
        per_layer: dict[nn.Module, list[torch.Tensor]] = {}

        def hook(mod, inp, out):
            if isinstance(out, torch.Tensor) and out.dim() >= 2:
                dims = [d for d in range(out.dim()) if d != 1]  # every axis but channels (NCHW / NC)
                per_layer.setdefault(mod, []).append(out.float().pow(2).mean(dim=dims))

        kinds = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)
        with forward_hooks((m, hook) for m in model.modules() if isinstance(m, kinds)):
            for x in batches:
                run_model(model, x)
        means, corr = _stability(per_layer)
        self.keep(model, means)
        return {"energy_stability": {
            "batches": len(batches), "layers_measured": len(per_layer),
            "mean_spearman": round(sum(corr) / len(corr), 4) if corr else None,
            "min_spearman": round(min(corr), 4) if corr else None}}

    @torch.no_grad()
    def __call__(self, group):
        import torch_pruning as tp

        prunes_out = (tp.prune_conv_out_channels, tp.prune_batchnorm_out_channels, tp.prune_linear_out_channels)
        return self._mean_over_layers(group, lambda layer, fn: fn in prunes_out)
