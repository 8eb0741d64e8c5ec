"""Unstructured pruning: global magnitude masks, iterative magnitude pruning (IMP) with rewinding, the
linear-mode-connectivity check, the 2:4 semi-structured pattern and the size on disk of sparse weights.

Masks ride on torch.nn.utils.prune (weight = weight_orig * mask in a forward pre-hook), so training keeps
pruned weights at zero; `make_permanent` bakes them in. Zeroed weights do not make dense kernels faster:
this pays off only for a size goal (sparse weights compress) or on hardware with sparse support (2:4 on
NVIDIA Ampere+ through TensorRT)."""

from __future__ import annotations

import copy
import io
import zlib

import torch
from torch import nn
from torch.nn.utils import prune as tprune

from edgeopt.errors import ConfigError

PRUNABLE = (nn.Conv2d, nn.Linear)


def prunable(model: nn.Module, exclude: tuple[str, ...] = ()) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE) and n not in exclude]


def _weight(m: nn.Module) -> torch.Tensor:
    return m.weight.detach()  # the effective (masked) weight when a mask is attached


def masks_from_scores(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Global: keep the (1 - sparsity) highest scores over all layers together; exact count."""
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"sparsity must be in [0, 1), got {sparsity}")
    flat = torch.cat([s.flatten().float() for s in scores.values()])
    n_prune = int(round(sparsity * flat.numel()))
    keep = torch.ones_like(flat, dtype=torch.bool)
    if n_prune:
        keep[torch.argsort(flat, stable=True)[:n_prune]] = False
    masks, i = {}, 0
    for name, s in scores.items():
        masks[name] = keep[i:i + s.numel()].reshape(s.shape).float()
        i += s.numel()
    return masks


def global_magnitude_masks(model: nn.Module, sparsity: float, exclude: tuple[str, ...] = ()) -> dict:
    return masks_from_scores({n: _weight(m).abs() for n, m in prunable(model, exclude)}, sparsity)


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Attach (or replace) masks in place."""
    mods = dict(model.named_modules())
    for name, mask in masks.items():
        m = mods[name]
        if tprune.is_pruned(m) and hasattr(m, "weight_mask"):
            m.weight_mask.copy_(mask)
        else:
            tprune.custom_from_mask(m, "weight", mask)
    return model


def make_permanent(model: nn.Module) -> nn.Module:
    for _, m in prunable(model):
        if hasattr(m, "weight_mask"):
            tprune.remove(m, "weight")
    return model


def sparsity(model: nn.Module) -> float:
    ws = [_weight(m) for _, m in prunable(model)]
    total = sum(w.numel() for w in ws)
    return sum(int((w == 0).sum()) for w in ws) / max(total, 1)


def dense_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A snapshot under the plain parameter names (weight, not weight_orig), for rewinding."""
    sd = {}
    for k, v in model.state_dict().items():
        if k.endswith("weight_mask"):
            continue
        sd[k.replace("weight_orig", "weight")] = v.detach().clone()
    return sd


def load_dense_state(model: nn.Module, snap: dict[str, torch.Tensor]) -> None:
    """Rewind: load a snapshot into a (possibly masked) model, keeping its masks."""
    own = model.state_dict()
    remapped = {(k[:-len("weight")] + "weight_orig" if k.endswith("weight") and
                 k[:-len("weight")] + "weight_orig" in own else k): v for k, v in snap.items()}
    model.load_state_dict({**own, **remapped})


# ---- 2:4 semi-structured sparsity (NVIDIA Ampere+ sparse tensor cores, used by TensorRT) -----------------
def semi_structured_masks(model: nn.Module, exclude: tuple[str, ...] = ()) -> tuple[dict, list[str]]:
    """In every group of 4 consecutive input weights keep the 2 largest. Conv weights are grouped along
    input channels (the layout TensorRT's sparse kernels use). Layers whose input size is not a multiple of
    4 are skipped, with the reason."""
    masks, skipped = {}, []
    for name, m in prunable(model, exclude):
        w = _weight(m)
        wt = w.permute(0, 2, 3, 1) if w.dim() == 4 else w  # (out, kh, kw, in): groups along in-channels
        if wt.shape[-1] % 4:
            skipped.append(f"{name}: {wt.shape[-1]} input channels, not a multiple of 4")
            continue
        g = wt.reshape(-1, 4).abs()
        keep = torch.zeros_like(g)
        keep.scatter_(1, g.topk(2, dim=1).indices, 1.0)
        keep = keep.reshape(wt.shape)
        masks[name] = keep.permute(0, 3, 1, 2) if w.dim() == 4 else keep
    return masks, skipped


def is_2_4(weight: torch.Tensor) -> bool:
    wt = weight.permute(0, 2, 3, 1) if weight.dim() == 4 else weight
    if wt.shape[-1] % 4:
        return False
    return bool(((wt.reshape(-1, 4) != 0).sum(1) <= 2).all())


# ---- size on disk -------------------------------------------------------------------------------------
def compressed_size(model: nn.Module) -> dict:
    """Bytes of the weights: dense fp32, the saved state dict deflated (zeros compress), and a bitmask
    sparse format (fp32 non-zeros + 1 bit per weight). Measured by serialising, not estimated."""
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("weight_mask")}
    buf = io.BytesIO()
    torch.save(make_permanent(copy.deepcopy(model)).state_dict() if any(
        k.endswith("weight_orig") for k in sd) else sd, buf)
    raw = buf.getvalue()
    ws = [_weight(m) for _, m in prunable(model)]
    other = sum(v.numel() for k, v in sd.items() if v.is_floating_point()) - sum(w.numel() for w in ws)
    nnz = sum(int((w != 0).sum()) for w in ws)
    total = sum(w.numel() for w in ws)
    return {"state_dict_bytes": len(raw), "deflate_bytes": len(zlib.compress(raw, 9)),
            "bitmask_sparse_bytes": 4 * (nnz + other) + (total + 7) // 8, "sparsity": round(1 - nnz / total, 4)}


def apply_unstructured(model: nn.Module, example: torch.Tensor, config, data=None) -> tuple[nn.Module, dict]:
    """Registry entry: global magnitude masks (or the 2:4 pattern), made permanent, on a copy."""
    model = copy.deepcopy(model)
    skipped: list[str] = []
    if config.pattern == "2:4":
        masks, skipped = semi_structured_masks(model)
    else:
        masks = global_magnitude_masks(model, config.sparsity)
    make_permanent(apply_masks(model, masks))
    record = {"pattern": config.pattern, "skipped": skipped, **compressed_size(model)}
    if config.pattern == "2:4":
        model.edgeopt_sparsity = "2:4"  # marks the model for TensorRT's sparse kernels (SPARSE_WEIGHTS flag)
    return model, record
