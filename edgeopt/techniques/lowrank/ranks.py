"""Rank selection for low-rank factorization: by energy kept (sum of squared singular values), by
VBMF (empirical variational Bayesian matrix factorization, Nakajima et al. 2013 — the noise level is
estimated from the matrix itself, no hyper-parameter), or by a target MAC reduction; and whether the
factors at the chosen ranks are measured faster than the layer on a runtime (latency table)."""

from __future__ import annotations

import numpy as np
from torch import nn


def energy_rank(s: np.ndarray, energy: float) -> int:
    """Smallest rank whose singular values keep `energy` of the squared Frobenius norm."""
    e = np.cumsum(s.astype(np.float64) ** 2)
    if e[-1] <= 0:
        return 1
    return int(min(len(s), np.searchsorted(e / e[-1], energy - 1e-12) + 1))


def kept_energy(s: np.ndarray, rank: int) -> float:
    e = (s.astype(np.float64) ** 2)
    return float(e[:rank].sum() / e.sum()) if e.sum() > 0 else 1.0


def _tau(x, alpha):
    return 0.5 * (x - (1 + alpha) + np.sqrt((x - (1 + alpha)) ** 2 - 4 * alpha))


def _evb_objective(sigma2, L, M, s, residual, xubar):
    H = len(s)
    alpha = L / M
    x = s ** 2 / (M * sigma2)
    z1, z2 = x[x > xubar], x[x <= xubar]
    tz1 = _tau(z1, alpha)
    return (np.sum(z2 - np.log(z2)) + np.sum(z1 - tz1) + np.sum(np.log((tz1 + 1) / z1))
            + alpha * np.sum(np.log(tz1 / alpha + 1)) + residual / (M * sigma2) + (L - H) * np.log(sigma2))


def vbmf_rank(matrix: np.ndarray) -> int:
    """Rank estimated by analytic empirical VBMF (noise variance found by a bounded 1-D search)."""
    from scipy.optimize import minimize_scalar

    Y = matrix.astype(np.float64)
    if Y.shape[0] > Y.shape[1]:
        Y = Y.T
    L, M = Y.shape
    s = np.linalg.svd(Y, compute_uv=False)
    alpha = L / M
    tauubar = 2.5129 * np.sqrt(alpha)
    xubar = (1 + tauubar) * (1 + alpha / tauubar)
    eh_ub = int(min(np.ceil(L / (1 + alpha)) - 1, L)) - 1
    if eh_ub + 1 >= len(s) or eh_ub < 0:
        return max(1, energy_rank(s, 0.9))  # too small a matrix for the noise estimate
    upper = np.sum(s ** 2) / (L * M)
    lower = max(s[eh_ub + 1] ** 2 / (M * xubar), np.mean(s[eh_ub + 1:] ** 2) / M)
    if not lower < upper:
        return max(1, energy_rank(s, 0.9))
    sigma2 = minimize_scalar(_evb_objective, args=(L, M, s, 0.0, xubar), bounds=[lower, upper],
                             method="bounded").x
    threshold = np.sqrt(M * sigma2 * (1 + tauubar) * (1 + alpha / tauubar))
    return max(1, int(np.sum(s > threshold)))


def tucker_macs(cin: int, cout: int, k: int, r_in: int, r_out: int, hw_in: int, hw_out: int) -> int:
    """1x1 (cin->r_in) at the input resolution, k x k core (r_in->r_out), 1x1 (r_out->cout)."""
    return hw_in * cin * r_in + hw_out * r_in * r_out * k + hw_out * r_out * cout


def cp_macs(cin: int, cout: int, kh: int, kw: int, rank: int, hw_in: int, hw_mid: int, hw_out: int) -> int:
    """1x1 (cin->R), depthwise kh x 1, depthwise 1 x kw, 1x1 (R->cout)."""
    return hw_in * cin * rank + hw_mid * rank * kh + hw_out * rank * kw + hw_out * rank * cout


def rank_for_macs(macs_of_rank, max_rank: int, budget: float) -> int:
    """Largest rank (1..max_rank) whose MACs stay within `budget` (MACs are monotone in the rank)."""
    lo, hi = 1, max_rank
    if macs_of_rank(1) > budget:
        return 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if macs_of_rank(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def not_faster(table, conv: nn.Conv2d, io, ranks, method: str = "tucker") -> str | None:
    """Why the factorized layer is kept as it is on the table's runtime, or None when measured faster. Tucker-2:
    1x1 (in -> r_in), k x k (r_in -> r_out), 1x1 (r_out -> out); CP: 1x1 (in -> r), depthwise k x 1 and 1 x k
    (r), 1x1 (r -> out)."""
    from edgeopt.measure.latency_table import signature

    shape, out_hw = io
    one = nn.Conv2d(1, 1, 1)
    orig = table.entry(signature(conv, shape), conv.in_channels, conv.out_channels)
    if method == "cp":
        r = ranks[0]
        (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
        vert = nn.Conv2d(r, r, (kh, 1), stride=(sh, 1), padding=(ph, 0), groups=r, bias=False)
        horz = nn.Conv2d(r, r, (1, kw), stride=(1, sw), padding=(0, pw), groups=r, bias=False)
        mid_h = (shape[2] + 2 * ph - kh) // sh + 1
        parts = [table.entry(signature(one, shape), conv.in_channels, r),
                 table.entry(signature(vert, (shape[0], r, *shape[2:])), r, r),
                 table.entry(signature(horz, (shape[0], r, mid_h, shape[3])), r, r),
                 table.entry(signature(one, (shape[0], r, *out_hw)), r, conv.out_channels)]
    else:
        r_in, r_out = ranks
        parts = [table.entry(signature(one, shape), conv.in_channels, r_in),
                 table.entry(signature(conv, shape), r_in, r_out),
                 table.entry(signature(one, (shape[0], r_out, *out_hw)), r_out, conv.out_channels)]
    # each conv timed alone pays one call's fixed cost; inside the model they pay it once
    new = sum(parts) - (len(parts) - 1) * table.entry({"kind": "null"}, 0, 0)
    if new < orig:
        return None
    return f"ranks {list(ranks)} not faster on {table.runtime}: {new:.4f} ms measured >= {orig:.4f} ms"
