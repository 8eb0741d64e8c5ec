"""Retraining-free pruning, second half: after channels are cut (chosen by the `recon` criterion or any
other), re-solve the layers that consumed them so that their outputs match the original model's.

Only unlabeled calibration inputs are needed. Each dense conv/linear whose inputs shrank is re-solved, in
forward order, by ridge least squares from the pruned network's own activations (upstream errors included)
to the original layer's output (its kept output channels). A bias is added where the layer had none, so the
mean shift of the removed channels is absorbed too.

All calibration batches go through the pruned network together in one forward pass, each consumer solved by
a hook just before it runs (so the layers after it see its solved weights): the same least-squares problems
as cutting a pass short at every consumer, for the cost of one pass instead of one per layer. Above
`ONE_PASS_ELEMENTS` input values the leading batches that fit are used (each gives many rows per layer, so a
few batches fewer barely change a solve, while a pass per consumer costs about half a forward per layer and
batch: 41 s against 7 s on a YOLOv8n at 160 px); only when fewer than half of them fit does each consumer
get its own passes over all of them."""

from __future__ import annotations

import time

import torch
from torch import nn

from edgeopt.errors import TimeBudgetError, first_line
from edgeopt.inputs.feeding import join_batches, run_model
from edgeopt.inputs.hooks import forward_hooks
from edgeopt.inputs.model_io import Inputs
from edgeopt.techniques.pruning.memo import LastMeasurement
from edgeopt.techniques.repair.layer_rows import (
    NormalEquations,
    dense_layer,
    forward_order,
    forward_until,
    input_rows,
    output_rows,
    solve_spd,
)
from edgeopt.timeout import deadline_passed


@torch.no_grad()
def _original_targets(orig: nn.Module, names: list[str], batches: list) -> dict[str, list]:
    """Each layer's sampled output rows on each batch, with the leading size of its output there (the batch,
    or batch x tokens; a sequence-first layer shows the sequence length), from one forward pass of the
    original per batch (the rows only: whole feature maps of every layer would not fit for large models)."""
    mods = dict(orig.named_modules())
    got: dict[str, list] = {n: [] for n in names}
    current = [0]

    def hook(name):
        def fn(mod, args, out):
            if len(got[name]) == current[0]:  # a layer called twice: its first call, as the pruned side sees
                got[name].append((output_rows(mod, out.detach(), 1000 + current[0]).float(), int(out.shape[0])))
        return fn

    with forward_hooks((mods[n], hook(n)) for n in names):
        for i, x in enumerate(batches):
            current[0] = i
            run_model(orig, x)
    return got


_TARGETS = LastMeasurement()  # the original's output rows per layer, for one set of weights and batch objects
MAX_CACHED_TARGETS = 2 ** 27  # float32 values kept across builds


def _targets(orig: nn.Module, names: list[str], batches: list) -> dict[str, list]:
    """`_original_targets`, reused across the builds of a search (every level re-solves consumers of the
    same original on the same calibration batches): only layers not seen yet cost a forward pass."""
    rows = _TARGETS.of(orig, batches)
    missing = [n for n in names if n not in rows]
    if missing:
        rows.update(_original_targets(orig, missing, batches))
    out = {n: rows[n] for n in names}
    if sum(t.numel() for layer in rows.values() for t, _ in layer) > MAX_CACHED_TARGETS:
        _TARGETS.clear()
    return out


# input values of the calibration batches joined for the one-pass solve: 8 x 32 images of 3 x 160 x 160 fit
# (a YOLOv8n peaks at 1.7 GB); a ResNet-50 at 224 px would peak at 6.2 GB
# with 8 x 32 images, so it joins the first 6 of its 8 batches
ONE_PASS_ELEMENTS = 2 ** 25


def _joinable_share(batches: list) -> list:
    """The leading batches one joined pass can hold: all of them when they fit, else as many as fit when that
    is at least half of them, else all of them (then solved pass by pass)."""
    total, n = 0, 0
    for x in batches:
        size = x.numel() if isinstance(x, torch.Tensor) else sum(t.numel() for t in x.tensors) \
            if isinstance(x, Inputs) else 0
        if total + size > ONE_PASS_ELEMENTS:
            break
        total, n = total + size, n + 1
    return batches[:n] if 2 * n >= len(batches) and n > 0 else batches


def _rows_of(layer: nn.Module, xin: torch.Tensor, target: torch.Tensor, kept_out, i: int):
    ys = target if kept_out is None else target[:, kept_out]
    return input_rows(layer, xin, 1000 + i), ys


def _current(p_layer: nn.Module) -> torch.Tensor:
    """The layer's weights and bias as one (inputs + 1, outputs) matrix, as the solve returns them."""
    w0 = p_layer.weight.detach().double().flatten(1)
    b0 = p_layer.bias.detach().double() if p_layer.bias is not None else torch.zeros(w0.shape[0],
                                                                                       dtype=torch.float64)
    return torch.cat([w0, b0[:, None]], 1).T


def _solve_primal(sys_: NormalEquations, w0: torch.Tensor, alpha: float) -> tuple[torch.Tensor, float, float]:
    a, b, yy = sys_.a, sys_.b, sys_.yy
    before = _err(w0, a, b, yy)
    lam = alpha * a.diagonal()[:-1].mean().clamp_min(1e-12)
    reg = lam * torch.ones(a.shape[0], dtype=a.dtype)
    reg[-1] = 0  # the bias is not shrunk
    lhs = a + torch.diag(reg)
    sol = solve_spd(lhs, b)
    # ||XW - Y||^2 at the ridge solution, from (A + R) W = B: yy - tr(W^T B) - tr(W^T R W)
    after = yy - float((sol * b).sum()) - float((reg[:, None] * sol * sol).sum())
    return sol, before, round(max(after, 0.0) / max(yy, 1e-12), 6)


def _solve_dual(sys_: NormalEquations, w0: torch.Tensor, alpha: float) -> tuple[torch.Tensor, float, float]:
    """The same ridge problem from the n x n kernel of the rows: centring gives the unshrunk bias. The
    products run in float32 (they are most of the cost), the solve in float64."""
    x, y = sys_.x()[:, :-1], sys_.y()
    n, d = x.shape
    yy = max(sys_.yy, 1e-12)

    def err(w: torch.Tensor, b: torch.Tensor) -> float:
        return round(float((x @ w.float() + b.float() - y).double().pow(2).sum()) / yy, 6)

    before = err(w0[:-1], w0[-1])
    lam = alpha * (x.double().pow(2).sum() / d).clamp_min(1e-12)
    xm, ym = x.double().mean(0), y.double().mean(0)
    xc = x - xm.float()
    k = (xc @ xc.T).double() + lam * torch.eye(n, dtype=torch.float64)
    coef = solve_spd(k, y.double() - ym)
    w = (xc.T @ coef.float()).double()
    sol = torch.cat([w, (ym - xm @ w)[None, :]])
    return sol, before, err(w, sol[-1])


def _solve(p_layer: nn.Module, sys_: NormalEquations, alpha: float) -> dict:
    w0 = _current(p_layer)
    sol, before, after = (_solve_primal if sys_.a is not None else _solve_dual)(sys_, w0, alpha)
    if after > before:  # ill-posed (too few samples): keep the plain pruned weights
        return {"error_before": before, "error_after": before, "kept": "pruned weights (solve did not help)"}
    with torch.no_grad():
        p_layer.weight.copy_(sol[:-1].T.reshape(p_layer.weight.shape).to(p_layer.weight.dtype))
        if p_layer.bias is None:
            p_layer.bias = nn.Parameter(sol[-1].to(p_layer.weight.dtype).clone())
        else:
            p_layer.bias.copy_(sol[-1].to(p_layer.bias.dtype))
    return {"error_before": before, "error_after": after}


def _solve_layer(pruned: nn.Module, p_layer: nn.Module, batches: list, targets: list[torch.Tensor],
                 kept_out: list[int] | None, alpha: float) -> dict:
    """One consumer from its own passes: the pruned network run up to it on every batch."""
    sys_ = NormalEquations()
    for i, x in enumerate(batches):
        xin = forward_until(pruned, p_layer, x, output=False)
        sys_.add(*_rows_of(p_layer, xin, targets[i][0], kept_out, i))
    return _solve(p_layer, sys_, alpha)


def _err(w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, yy: float) -> float:
    """Relative squared error ||XW - Y||^2 / ||Y||^2 from the normal equations."""
    val = float((w * (a @ w)).sum() - 2 * (w * b).sum() + yy)
    return round(max(val, 0.0) / max(yy, 1e-12), 6)


def _one_pass(pruned: nn.Module, jobs: dict[str, tuple], batches: list, targets: dict, alpha: float,
              layers: list, skipped: list) -> list[str] | None:
    """Solve every consumer in `jobs` (name -> (layer, kept output channels)) in one forward pass of all
    batches joined. Returns the consumers left to solve pass by pass (their input is not laid out batch
    first, e.g. a sequence-first Linear); None (nothing changed) when the batches cannot be joined."""
    if not jobs:
        return []
    x = join_batches(batches, ONE_PASS_ELEMENTS)
    if x is None:
        return None
    pending = {layer: (name, kept_out) for name, (layer, kept_out) in jobs.items()}
    deferred: list[str] = []

    def hook(mod, args):
        name, kept_out = pending.pop(mod, (None, None))
        if name is None:  # not a consumer, or solved already (a layer called twice: its first call)
            return
        _check_deadline(layers)
        xin = args[0].detach()
        leads = [lead for _, lead in targets[name]]
        if xin.shape[0] != sum(leads):  # the batches are not stacked along this layer's first axis
            deferred.append(name)
            return
        try:
            sys_ = NormalEquations()
            for i, chunk in enumerate(xin.split(leads)):
                sys_.add(*_rows_of(mod, chunk, targets[name][i][0], kept_out, i))
            layers.append({"layer": name, **_solve(mod, sys_, alpha)})
        except (RuntimeError, ValueError) as e:
            skipped.append(f"{name}: {first_line(e, 120)}")

    with forward_hooks(((layer, hook) for layer, _ in jobs.values()), pre=True), torch.no_grad():
        run_model(pruned, x)
    skipped.extend(f"{name}: layer not reached in the pruned model's forward pass" for name, _ in pending.values())
    return deferred


def _check_deadline(layers: list) -> None:
    """Stop between two layer solves once the run's deadline has passed: a solve takes up to a few seconds
    (a 4608-wide conv input), and a model has dozens: the smp Unet's re-solve took 23 s on 2 cores."""
    if deadline_passed():
        raise TimeBudgetError(f"the time ran out while re-solving layers ({len(layers)} solved)")


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
                kept: dict[str, list[int]], alpha: float = 1e-4, max_batches: int = 8,
                names: list[str] | None = None) -> dict:
    """Re-solve, in place, each consumer of pruned channels (see module doc), or the dense layers `names`.
    Returns the record."""
    t0 = time.monotonic()
    batches = _joinable_share(batches[:max_batches])
    orig, pruned = orig.eval(), pruned.eval()
    todo = set(consumers(orig, pruned) if names is None else names)
    order = [n for n in forward_order(pruned, batches[0]) if n in todo]
    o_mods, p_mods = dict(orig.named_modules()), dict(pruned.named_modules())
    targets = _targets(orig, order, batches)
    layers, skipped = [], []
    jobs: dict[str, tuple] = {}
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
        if len(targets[name]) != len(batches):
            skipped.append(f"{name}: RuntimeError: layer not reached in the original's forward pass")
            continue
        jobs[name] = (p_layer, kept_out)
    deferred = _one_pass(pruned, jobs, batches, targets, alpha, layers, skipped)
    for name, (p_layer, kept_out) in (jobs if deferred is None else {n: jobs[n] for n in deferred}).items():
        _check_deadline(layers)
        try:
            layers.append({"layer": name, **_solve_layer(pruned, p_layer, batches, targets[name], kept_out,
                                                         alpha)})
        except (RuntimeError, ValueError) as e:  # e.g. a layer called twice with other shapes
            skipped.append(f"{name}: {first_line(e, 120)}")
    return {"layers": layers, "skipped": skipped, "batches": len(batches), "alpha": alpha,
            "one_pass": deferred is not None, "seconds": round(time.monotonic() - t0, 2)}
