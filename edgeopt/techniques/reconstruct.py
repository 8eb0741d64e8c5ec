"""Retraining-free pruning: choose channels by the reconstruction error their removal causes, then re-solve
the layers that consumed them so that their outputs match the original model's.

Only unlabeled calibration inputs are needed. For every dense conv/linear (a "consumer"), the normal
equations of its input patches, A = X^T X, are accumulated over the calibration batches:
- importance (`recon`): the error a consumer's output gains when one input channel is removed and the rest
  are optimally re-weighted is, by the Optimal Brain Surgeon argument, tr(W_c [A^-1]_cc^-1 W_c^T) (block c =
  that channel's k x k taps). Summed over the consumers a channel feeds (through BN and residual adds, as
  the Torch-Pruning group couples them) it ranks channels by what reconstruction cannot recover, so
  redundant (correlated) channels go first rather than merely small ones.
- reconstruction: after the channels are cut, each consumer whose inputs shrank is re-solved, in forward
  order, by ridge least squares from the pruned network's own activations (upstream errors included) to the
  original layer's output (its kept output channels). A bias is added where the layer had none, so the mean
  shift of the removed channels is absorbed too."""

from __future__ import annotations

import copy
import hashlib
import time

import torch
from torch import nn

from edgeopt.inputs.feeding import run_model
from edgeopt.techniques.layer_rows import dense_layer, forward_order, forward_until, input_rows, output_rows

MAX_FULL_INVERSE = 6144  # above this many inputs a consumer's importance uses the diagonal of A only

# ---------------------------------------------------------------------------------------------- importance

_SCORES: dict = {}  # the last measurement: (fingerprint, batches, max_batches) -> layer name -> scores


def _fingerprint(model: nn.Module) -> str:
    h = hashlib.sha1()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        flat = t.detach().float().flatten()
        h.update(flat[:2048].numpy().tobytes())
        h.update(str(float(flat.double().sum())).encode())
    return h.hexdigest()


def _cached_scores(model: nn.Module, batches: list, max_batches: int) -> dict | None:
    hit = _SCORES.get("entry")
    if hit is None or hit["max_batches"] != max_batches or len(hit["batches"]) != len(batches[:max_batches]):
        return None
    # the same batch objects (kept alive by the entry, so their identity cannot be reused) and weights
    if not all(a is b for a, b in zip(hit["batches"], batches[:max_batches], strict=True)):
        return None
    return hit["scores"] if hit["fingerprint"] == _fingerprint(model) else None


@torch.no_grad()
def measure_scores(model: nn.Module, batches: list[torch.Tensor], max_batches: int = 8) -> int:
    """Store on every dense consumer `_recon_score`: per input feature (conv: per input channel), the
    output error its removal costs after optimal re-weighting of the others. Returns how many layers.
    A search measures the same original on the same calibration batches for every level and family: the
    last measurement is reused when the weights and the batch objects are the same."""
    layers = {n: m for n, m in model.named_modules() if dense_layer(m)}
    cached = _cached_scores(model, batches, max_batches)
    if cached is not None:
        for n, score in cached.items():
            layers[n]._recon_score = score.clone()
        return len(cached)
    grams: dict[nn.Module, torch.Tensor] = {}

    def hook(mod, args):
        xs = input_rows(mod, args[0].detach(), 0)[:, :-1]
        grams[mod] = grams.get(mod, 0) + xs.T @ xs

    handles = [m.register_forward_pre_hook(hook) for m in layers.values()]
    try:
        for x in batches[:max_batches]:
            run_model(model, x)
    finally:
        for h in handles:
            h.remove()
    names = {m: n for n, m in layers.items()}
    for m, a in grams.items():
        m._recon_score = _obs_scores(m, a).float()
    _SCORES["entry"] = {"fingerprint": _fingerprint(model), "batches": list(batches[:max_batches]),
                        "max_batches": max_batches, "scores": {names[m]: m._recon_score.clone() for m in grams}}
    return len(grams)


def _obs_scores(m: nn.Module, a: torch.Tensor) -> torch.Tensor:
    w = m.weight.detach().double().flatten(1)  # (out, in * k * k)
    taps = 1 if isinstance(m, nn.Linear) else m.kernel_size[0] * m.kernel_size[1]
    d = a.shape[0]
    lam = 1e-6 * a.diagonal().mean().clamp_min(1e-12)
    if d > MAX_FULL_INVERSE:  # no correlations: removing feature j costs ||W_j||^2 * E[x_j^2]
        per = (w ** 2).sum(0) * a.diagonal()
        return per.view(-1, taps).sum(1)
    inv = torch.linalg.inv(a + lam * torch.eye(d, dtype=a.dtype))
    c = d // taps
    blocks = torch.stack([inv[i * taps:(i + 1) * taps, i * taps:(i + 1) * taps] for i in range(c)])
    wc = w.view(w.shape[0], c, taps).transpose(0, 1)  # (c, out, taps)
    sol = torch.linalg.solve(blocks, wc.transpose(1, 2))  # (c, taps, out) = S_c^-1 W_c^T
    return (wc * sol.transpose(1, 2)).sum((1, 2)).clamp_min(0)


def clear_scores(model: nn.Module) -> None:
    for m in model.modules():
        if hasattr(m, "_recon_score"):
            del m._recon_score


def recon_importance():
    """Torch-Pruning importance: a group's channel scores are the summed `_recon_score` of the consumers
    whose input channels the group cuts; groups with no measured consumer fall back to L2 magnitude."""
    import torch_pruning as tp

    class ReconImportance(tp.importance.GroupMagnitudeImportance):
        @torch.no_grad()
        def __call__(self, group):
            n = len(group[0][1])
            total = torch.zeros(n)
            found = False
            for i, (dep, idxs) in enumerate(group):
                layer = dep.layer
                score = getattr(layer, "_recon_score", None)
                if score is None or dep.pruning_fn not in (tp.prune_conv_in_channels, tp.prune_linear_in_channels):
                    continue
                roots = group[i].root_idxs
                if any(r is None for r in roots) or max(idxs) >= score.numel():
                    continue
                total.scatter_add_(0, torch.tensor(roots), score[list(idxs)])
                found = True
            return total if found else super().__call__(group)

    return ReconImportance()


# ------------------------------------------------------------------------------------------ reconstruction

@torch.no_grad()
def _original_targets(orig: nn.Module, names: list[str], batches: list) -> dict[str, list[torch.Tensor]]:
    """Each layer's sampled output rows on each batch, from one forward pass of the original per batch (the
    rows only: whole feature maps of every layer would not fit for large models)."""
    mods = dict(orig.named_modules())
    got: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    current = [0]

    def hook(name):
        def fn(mod, args, out):
            if len(got[name]) == current[0]:  # a layer called twice: its first call, as the pruned side sees
                got[name].append(output_rows(mod, out.detach(), 1000 + current[0]))
        return fn

    handles = [mods[n].register_forward_hook(hook(n)) for n in names]
    try:
        for i, x in enumerate(batches):
            current[0] = i
            run_model(orig, x)
    finally:
        for h in handles:
            h.remove()
    return got


def _solve_layer(pruned: nn.Module, o_layer: nn.Module, p_layer: nn.Module, batches: list,
                 targets: list[torch.Tensor], kept_out: list[int] | None, alpha: float) -> dict:
    a = b = None
    yy = 0.0
    for i, x in enumerate(batches):
        xin = forward_until(pruned, p_layer, x, output=False)
        ys = targets[i] if kept_out is None else targets[i][:, kept_out]
        xs = input_rows(p_layer, xin, 1000 + i)
        a = xs.T @ xs if a is None else a + xs.T @ xs
        b = xs.T @ ys if b is None else b + xs.T @ ys
        yy += float((ys ** 2).sum())
    w0 = p_layer.weight.detach().double().flatten(1)
    b0 = p_layer.bias.detach().double() if p_layer.bias is not None else torch.zeros(w0.shape[0],
                                                                                       dtype=torch.float64)
    before = _err(torch.cat([w0, b0[:, None]], 1).T, a, b, yy)
    lam = alpha * a.diagonal()[:-1].mean().clamp_min(1e-12)
    reg = lam * torch.eye(a.shape[0], dtype=a.dtype)
    reg[-1, -1] = 0  # the bias is not shrunk
    sol = torch.linalg.solve(a + reg, b)
    after = _err(sol, a, b, yy)
    if after > before:  # ill-posed (too few samples): keep the plain pruned weights
        return {"error_before": before, "error_after": before, "kept": "pruned weights (solve did not help)"}
    with torch.no_grad():
        p_layer.weight.copy_(sol[:-1].T.reshape(p_layer.weight.shape).to(p_layer.weight.dtype))
        if p_layer.bias is None:
            p_layer.bias = nn.Parameter(sol[-1].to(p_layer.weight.dtype).clone())
        else:
            p_layer.bias.copy_(sol[-1].to(p_layer.bias.dtype))
    return {"error_before": before, "error_after": after}


def _err(w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, yy: float) -> float:
    """Relative squared error ||XW - Y||^2 / ||Y||^2 from the normal equations."""
    val = float((w * (a @ w)).sum() - 2 * (w * b).sum() + yy)
    return round(max(val, 0.0) / max(yy, 1e-12), 6)


def _fan_in(m: nn.Module) -> int:
    return m.in_features if isinstance(m, nn.Linear) else m.in_channels


def consumers(orig: nn.Module, pruned: nn.Module) -> list[str]:
    """Dense layers whose input width shrank."""
    o = dict(orig.named_modules())
    out = []
    for n, m in pruned.named_modules():
        om = o.get(n)
        if dense_layer(m) and type(om) is type(m):
            if _fan_in(m) < _fan_in(om):
                out.append(n)
    return out


def reconstruct(orig: nn.Module, pruned: nn.Module, batches: list[torch.Tensor],
                kept: dict[str, list[int]], alpha: float = 1e-4, max_batches: int = 8) -> dict:
    """Re-solve, in place, each consumer of pruned channels (see module doc). Returns the record."""
    t0 = time.monotonic()
    batches = batches[:max_batches]
    orig, pruned = orig.eval(), pruned.eval()
    todo = set(consumers(orig, pruned))
    order = [n for n in forward_order(pruned, batches[0]) if n in todo]
    o_mods, p_mods = dict(orig.named_modules()), dict(pruned.named_modules())
    targets = _original_targets(orig, order, batches)
    layers, skipped = [], []
    for name in order:
        o_layer, p_layer = o_mods[name], p_mods[name]
        width = o_layer.out_features if isinstance(o_layer, nn.Linear) else o_layer.out_channels
        new_width = p_layer.out_features if isinstance(p_layer, nn.Linear) else p_layer.out_channels
        kept_out = None
        if new_width != width:
            kept_out = kept.get(name)
            if kept_out is None or len(kept_out) != new_width:
                skipped.append(f"{name}: output channels changed without a known mapping")
                continue
        try:
            if len(targets[name]) != len(batches):
                raise RuntimeError("layer not reached in the original's forward pass")
            row = _solve_layer(pruned, o_layer, p_layer, batches, targets[name], kept_out, alpha)
        except (RuntimeError, ValueError) as e:  # e.g. a layer called twice with other shapes
            skipped.append(f"{name}: {type(e).__name__}: {str(e)[:120]}")
            continue
        layers.append({"layer": name, **row})
    return {"layers": layers, "skipped": skipped, "batches": len(batches), "alpha": alpha,
            "seconds": round(time.monotonic() - t0, 2)}


def snapshot(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).eval()
