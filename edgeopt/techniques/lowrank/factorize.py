"""Low-rank factorization, physical and exportable: a k x k Conv2d becomes 1x1 -> k x k core -> 1x1
(Tucker-2, Kim et al. 2016, via tensorly) or 1x1 -> depthwise kx1 -> depthwise 1xk -> 1x1 (CP, Lebedev
et al. 2015); a Linear becomes two Linears (truncated SVD). Layers where it cannot reduce MACs (1x1,
grouped/depthwise, small layers, ranks too high) are skipped with the reason. The input model is never
modified: a copy is factorized."""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from edgeopt.errors import ConfigError
from edgeopt.inputs.hooks import forward_hooks
from edgeopt.inputs.model_io import Inputs, model_outputs
from edgeopt.techniques.lowrank.ranks import (
    cp_macs,
    energy_rank,
    kept_energy,
    not_faster,
    rank_for_macs,
    tucker_macs,
    vbmf_rank,
)

METHODS = ("tucker", "cp", "svd")


# CP-ALS costs tensor size x rank per mode and sweep: a 128x128x3x3 conv at rank 100 fits in seconds on 2
# cores, a 512x512x3x3 one at rank 230 took minutes per layer, more than the rest of a search together.
CP_MAX_FIT = 2.5e8
# HOOI sweeps after the HOSVD start (tensorly runs the sweeps' SVDs with LAPACK whatever `svd` says): on a
# trained resnet18 512x512x3x3 conv at ranks 300 the fit error was 0.684 for HOSVD alone, 0.668 after one
# sweep and 0.665 after three, at 0.4 / 1.4 / 3.3 s
TUCKER_ITERATIONS = 1


def _shapes(model: nn.Module, example: Inputs, io: dict | None = None) -> dict[nn.Module, tuple[int, int]]:
    """(input H*W, output H*W) of every conv; 1 for Linears (per token counts are the same ratio). `io`, when
    given, receives each conv's (input shape, output H, W)."""
    hw: dict[nn.Module, tuple[int, int]] = {}

    def hook(m, inp, out):
        if m not in hw:
            x = inp[0]
            if io is not None and isinstance(m, nn.Conv2d):
                io[m] = (tuple(x.shape), tuple(out.shape[-2:]))
            hw[m] = ((x.shape[-2] * x.shape[-1], out.shape[-2] * out.shape[-1]) if isinstance(m, nn.Conv2d)
                     else (int(np.prod(x.shape[1:-1])) or 1,) * 2)

    layers = (m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    with forward_hooks((m, hook) for m in layers), torch.no_grad():
        example.call(model)
    return hw


def _svd_parts(mat: torch.Tensor):
    """(u, s, vh) of a 2-D weight through the eigendecomposition of its smaller Gram matrix, in float64.
    A LAPACK SVD of VGG's 4096x25088 classifier takes minutes on 2 cores; the Gram route ~10 s, and the
    squared condition number is harmless for the leading singular vectors a truncation keeps. (numpy, not
    torch: torch's threaded kernels stall badly on a loaded 2-core machine.)"""
    return gram_svd(mat.detach().double().numpy())


def gram_svd(w: np.ndarray, n_eigenvecs: int | None = None, **_):
    """The truncated SVD of `_svd_parts` on a numpy matrix, in tensorly's SVD-function signature (Tucker's
    unfoldings are as wide as 512 x 4608: LAPACK's full SVD was most of a Tucker fit)."""
    wide = w.shape[0] <= w.shape[1]
    evals, evecs = np.linalg.eigh(w @ w.T if wide else w.T @ w)
    order = np.argsort(evals)[::-1][:n_eigenvecs]
    s = np.sqrt(np.clip(evals[order], 0.0, None))
    evecs = evecs[:, order]
    inv = np.where(s > s[0] * 1e-12, 1.0 / np.maximum(s, 1e-300), 0.0)
    if wide:
        return evecs, s, (evecs.T @ w) * inv[:, None]
    return (w @ evecs) * inv[None, :], s, evecs.T


def _svals(mat: torch.Tensor) -> np.ndarray:
    w = mat.detach().double().numpy()
    g = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    return np.sqrt(np.clip(np.linalg.eigvalsh(g)[::-1], 0.0, None))


def _choose(mat: torch.Tensor, energy: float | None, rank_method: str, svals: np.ndarray | None = None) -> int:
    if rank_method == "vbmf":
        return vbmf_rank(mat.detach().double().numpy())
    return energy_rank(_svals(mat) if svals is None else svals, energy)


def _tucker(conv: nn.Conv2d, r_in: int, r_out: int) -> nn.Sequential:
    import tensorly as tl
    from tensorly.decomposition import partial_tucker

    tl.set_backend("numpy")
    w = conv.weight.detach().double().numpy()
    (core, (u_out, u_in)), _ = partial_tucker(w, rank=[r_out, r_in], modes=[0, 1], init="svd",
                                                  n_iter_max=TUCKER_ITERATIONS, svd=gram_svd, random_state=0)
    first = nn.Conv2d(conv.in_channels, r_in, 1, bias=False)
    mid = nn.Conv2d(r_in, r_out, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                    dilation=conv.dilation, bias=False, padding_mode=conv.padding_mode)
    last = nn.Conv2d(r_out, conv.out_channels, 1, bias=conv.bias is not None)
    first.weight.data = torch.from_numpy(np.ascontiguousarray(u_in.T)).float()[:, :, None, None]
    mid.weight.data = torch.from_numpy(np.ascontiguousarray(core)).float()
    last.weight.data = torch.from_numpy(np.ascontiguousarray(u_out)).float()[:, :, None, None]
    if conv.bias is not None:
        last.bias.data = conv.bias.detach().clone()
    return nn.Sequential(first, mid, last)


def _cp(conv: nn.Conv2d, rank: int) -> nn.Sequential:
    import tensorly as tl
    from tensorly.decomposition import parafac

    tl.set_backend("numpy")
    w = conv.weight.detach().double().numpy()
    # seeded: where the rank exceeds a mode's size, the SVD initialisation fills the rest at random
    weights, (a_out, a_in, a_h, a_w) = parafac(w, rank=rank, init="svd", n_iter_max=30, normalize_factors=False,
                                               random_state=0)
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    first = nn.Conv2d(conv.in_channels, rank, 1, bias=False)
    vert = nn.Conv2d(rank, rank, (kh, 1), stride=(sh, 1), padding=(ph, 0), groups=rank, bias=False)
    horz = nn.Conv2d(rank, rank, (1, kw), stride=(1, sw), padding=(0, pw), groups=rank, bias=False)
    last = nn.Conv2d(rank, conv.out_channels, 1, bias=conv.bias is not None)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).float()  # noqa: E731
    first.weight.data = t(a_in.T)[:, :, None, None]
    vert.weight.data = t(a_h.T)[:, None, :, None]
    horz.weight.data = t(a_w.T)[:, None, None, :]
    last.weight.data = t(a_out * weights[None, :])[:, :, None, None]
    if conv.bias is not None:
        last.bias.data = conv.bias.detach().clone()
    return nn.Sequential(first, vert, horz, last)


def _svd(lin: nn.Linear, rank: int, parts=None) -> nn.Sequential:
    u, s, vh = (torch.from_numpy(np.ascontiguousarray(a)) for a in (parts or _svd_parts(lin.weight)))
    sq = s[:rank].sqrt()
    a = nn.Linear(lin.in_features, rank, bias=False)
    b = nn.Linear(rank, lin.out_features, bias=lin.bias is not None)
    a.weight.data = (sq[:, None] * vh[:rank]).float()
    b.weight.data = (u[:, :rank] * sq[None, :]).float()
    if lin.bias is not None:
        b.bias.data = lin.bias.detach().clone()
    return nn.Sequential(a, b)


def _plan_conv(conv, hw, method, energy, macs_reduction, rank_method):
    """(ranks, macs_before, macs_after, energy kept) or a skip reason."""
    cin, cout = conv.in_channels, conv.out_channels
    kh, kw = conv.kernel_size
    if conv.groups > 1:
        return "grouped/depthwise conv: already cheap per channel, not factorized"
    if kh * kw == 1:
        return "1x1 conv: Tucker-2 of a channel mixer does not reduce MACs"
    hw_in, hw_out = hw
    before = hw_out * cout * cin * kh * kw
    w = conv.weight.detach()
    if method == "cp" and (conv.dilation != (1, 1) or conv.padding_mode != "zeros"):
        return "dilated/non-zero-padded conv: CP path not implemented for it"
    if method == "tucker":
        m_out, m_in = w.flatten(1), w.transpose(0, 1).flatten(1)
        s_out, s_in = _svals(m_out), _svals(m_in)
        if macs_reduction is not None:
            f = lambda r: tucker_macs(cin, cout, kh * kw, max(1, round(r * cin / cout)), r, hw_in, hw_out)  # noqa: E731
            r_out = rank_for_macs(f, cout, (1 - macs_reduction) * before)
            r_in = max(1, round(r_out * cin / cout))
        else:
            r_out, r_in = _choose(m_out, energy, rank_method, s_out), _choose(m_in, energy, rank_method, s_in)
        after = tucker_macs(cin, cout, kh * kw, r_in, r_out, hw_in, hw_out)
        kept = min(kept_energy(s_out, r_out), kept_energy(s_in, r_in))
        ranks = [r_in, r_out]
    else:
        hw_mid = hw_out * conv.stride[1]  # after the vertical conv only the rows are strided
        m_out = w.flatten(1)
        if macs_reduction is not None:
            f = lambda r: cp_macs(cin, cout, kh, kw, r, hw_in, hw_mid, hw_out)  # noqa: E731
            rank = rank_for_macs(f, min(cin, cout) * max(kh, kw), (1 - macs_reduction) * before)
        else:
            rank = max(_choose(m_out, energy, rank_method), _choose(w.transpose(0, 1).flatten(1), energy,
                                                                      rank_method))
        after = cp_macs(cin, cout, kh, kw, rank, hw_in, hw_mid, hw_out)
        kept, ranks = None, [rank]
        fit = w.numel() * rank * 4  # one ALS sweep: a tensor-times-Khatri-Rao product per mode
        if fit > CP_MAX_FIT:
            return (f"CP at rank {rank} is too costly to fit (about {fit / 1e9:.1f} G multiply-adds per ALS "
                    f"sweep, limit {CP_MAX_FIT / 1e9:.2f} G): Tucker-2 factorizes this layer in seconds")
    if after >= before:
        return f"rank {ranks} would not reduce MACs ({after:,} >= {before:,})"
    return ranks, before, after, kept


def factorize(model: nn.Module, example, method: str = "tucker", energy: float | None = 0.9,
              macs_reduction: float | None = None, layers: list[str] | None = None, rank_method: str = "energy",
              min_params: int = 4096, table=None) -> tuple[nn.Module, dict]:
    """Return (factorized copy, record per layer: ranks, MACs before/after, energy kept, error; skipped).
    `example`: a tensor, a tuple of tensors or a dict name -> tensor. Every output keeps its shape
    (each layer keeps its channel counts). `table`: a LatencyTable (edgeopt.measure.latency_table) whose runtime
    decides: a Tucker layer whose three convs are not measured faster than the original conv is kept.

    NumPy's decompositions run on one BLAS thread: a multi-threaded eigh gives other last bits for a
    288-wide Gram matrix than a single-threaded one, so the same layer factorized in a process with another
    thread count (a Ray worker runs with one) became another model after fine-tuning. Weight matrices are
    small; one thread costs little."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        return _factorize(model, example, method, energy, macs_reduction, layers, rank_method, min_params, table)


def _factorize(model: nn.Module, example, method: str, energy: float | None, macs_reduction: float | None,
               layers: list[str] | None, rank_method: str, min_params: int, table) -> tuple[nn.Module, dict]:
    if method not in METHODS:
        raise ConfigError(f"factorize method must be one of {', '.join(METHODS)}, got {method!r}")
    if rank_method not in ("energy", "vbmf"):
        raise ConfigError(f"rank selection must be energy or vbmf, got {rank_method!r}")
    if macs_reduction is not None and not 0 < macs_reduction < 1:
        raise ConfigError(f"macs_reduction must be in (0, 1), got {macs_reduction}")
    if macs_reduction is None and rank_method == "energy" and not (energy and 0 < energy <= 1):
        raise ConfigError(f"energy must be in (0, 1], got {energy}")
    work = copy.deepcopy(model).eval()
    named = dict(work.named_modules())
    if layers:
        unknown = [n for n in layers if n not in named]
        if unknown:
            raise ConfigError(f"unknown layer(s) {', '.join(unknown)}; see the model's named_modules()")
    example = Inputs.of(example, model)
    io: dict = {}
    hw = _shapes(work, example, io)
    done, skipped = [], []
    for name, m in list(named.items()):
        if layers and name not in layers or not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        if m not in hw:
            skipped.append(f"{name}: not run on the example input")
            continue
        structural = isinstance(m, nn.Conv2d) and (m.groups > 1 or m.kernel_size == (1, 1))
        if m.weight.numel() < min_params and not structural:
            skipped.append(f"{name}: small layer ({m.weight.numel():,} weights < {min_params:,}): no gain")
            continue
        if isinstance(m, nn.Conv2d):
            if method == "svd":
                skipped.append(f"{name}: conv layer, svd method factorizes Linear layers only")
                continue
            plan = _plan_conv(m, hw[m], method, energy, macs_reduction, rank_method)
            if isinstance(plan, str):
                skipped.append(f"{name}: {plan}")
                continue
            ranks, before, after, kept = plan
            # decided before decomposing: a CP layer not measured faster costs no ALS fit at all
            slower = not_faster(table, m, io[m], ranks, method) if table is not None else None
            if slower:
                skipped.append(f"{name}: {slower}")
                continue
            new = _tucker(m, *ranks) if method == "tucker" else _cp(m, ranks[0])
            kind = method
        else:
            tokens = hw[m][0]
            before = tokens * m.in_features * m.out_features
            parts = _svd_parts(m.weight)
            svals = parts[1]
            if macs_reduction is not None:
                rank = rank_for_macs(lambda r, t=tokens, w=m.in_features + m.out_features: t * r * w,
                                     min(m.in_features, m.out_features), (1 - macs_reduction) * before)
            else:
                rank = _choose(m.weight, energy, rank_method, svals)
            after = tokens * rank * (m.in_features + m.out_features)
            if after >= before:
                skipped.append(f"{name}: rank {rank} would not reduce MACs ({after:,} >= {before:,})")
                continue
            kept, ranks, new, kind = kept_energy(svals, rank), [rank], _svd(m, rank, parts), "svd"
        err = _rel_error(m, new, example, hw[m])
        parent, _, attr = name.rpartition(".")
        setattr(work.get_submodule(parent) if parent else work, attr, new)
        done.append({"layer": name, "kind": kind, "ranks": ranks, "macs_before": before, "macs_after": after,
                     "energy_kept": None if kept is None else round(kept, 4), "weight_rel_error": err})
    work.eval()
    shapes = {k: tuple(v.shape) for k, v in model_outputs(model.eval(), example).items()}
    new_shapes = {k: tuple(v.shape) for k, v in model_outputs(work, example).items()}
    if new_shapes != shapes:  # a factorized layer keeps its channels: this would be a bug, never shipped
        raise ConfigError(f"factorization changed the output shapes {shapes} -> {new_shapes}")
    return work, {"method": method, "energy": energy if macs_reduction is None and rank_method == "energy" else None,
                  "macs_reduction": macs_reduction, "rank_method": rank_method, "layers_changed": len(done),
                  "layers": done, "skipped": skipped, "latency_checked_on": table.runtime if table else None}


def _rel_error(old: nn.Module, new: nn.Sequential, example, hw) -> float:
    """Relative error of the factorized layer's response on a random input (its own reconstruction error)."""
    g = torch.Generator().manual_seed(0)
    if isinstance(old, nn.Conv2d):
        side = max(old.kernel_size[0], int(math.sqrt(hw[0])) if hw[0] else 8)
        x = torch.randn(1, old.in_channels, min(side, 16), min(side, 16), generator=g)
    else:
        x = torch.randn(4, old.in_features, generator=g)
    with torch.no_grad():
        ref, got = old(x), new(x)
    return round(float((got - ref).norm() / ref.norm().clamp_min(1e-12)), 5)


def apply_factorize(model: nn.Module, example: torch.Tensor, config, data=None) -> tuple[nn.Module, dict]:
    """Technique entry point (registry)."""
    table = None
    if config.lut_runtime:
        from edgeopt.measure.latency_table import LatencyTable

        table = LatencyTable(runtime=config.lut_runtime)
    return factorize(model, example, method=config.method, energy=config.energy,
                     macs_reduction=config.macs_reduction, layers=config.layers, rank_method=config.rank_method,
                     min_params=config.min_params, table=table)
