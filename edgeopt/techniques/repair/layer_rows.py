"""What a dense layer sees and produces on calibration data, as rows a least-squares problem can use: the
input patches (convs: k x k patches at sampled output positions, in F.unfold's order) and the output values at
the same positions, plus forward passes cut short at a layer and the order layers run in."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgeopt.inputs.feeding import run_model
from edgeopt.inputs.hooks import forward_hooks

MAX_ROWS = 4096  # sampled output positions per batch and layer: bounds the cost on large feature maps
MAX_KEPT_ROWS = 2 ** 23  # elements of a layer's input rows kept for the dual form before turning to A


class StopForward(Exception):
    """Raised from a hook to cut a forward pass short once the wanted layer has been seen."""


def dense_layer(m: nn.Module) -> bool:
    if isinstance(m, nn.Linear):
        return True
    return isinstance(m, nn.Conv2d) and m.groups == 1 and m.padding_mode == "zeros" and isinstance(m.padding,
                                                                                                   tuple)


def input_rows(m: nn.Module, x: torch.Tensor, gen_seed: int, rows: int = MAX_ROWS) -> torch.Tensor:
    """The layer's input as (rows, features) with a trailing 1 (bias); convs: sampled k x k patches, in
    F.unfold's row and column order. Only the sampled patches are gathered: unfolding a whole feature map
    first cost k*k times its size in memory and most of the reconstruction's time."""
    if isinstance(m, nn.Linear):
        xs = x.reshape(-1, x.shape[-1])
        idx = sample_rows(xs.shape[0], gen_seed, rows)
        xs = xs[idx] if idx is not None else xs
    else:
        xs = _patches(m, x, gen_seed, rows)
    return torch.cat([xs.double(), torch.ones(xs.shape[0], 1, dtype=torch.float64)], 1)


def _out_size(m: nn.Conv2d, h: int, w: int) -> tuple[int, int]:
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = m.kernel_size, m.stride, m.dilation, m.padding
    return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1


def _positions(n: int, oh: int, ow: int, gen_seed: int, rows: int):
    """(batch, row, column) of the sampled output positions, None when every position is kept."""
    idx = sample_rows(n * oh * ow, gen_seed, rows)
    if idx is None:
        return None
    b, r = idx // (oh * ow), idx % (oh * ow)
    return b, r // ow, r % ow


def _patches(m: nn.Conv2d, x: torch.Tensor, gen_seed: int, rows: int) -> torch.Tensor:
    n, c, h, w = x.shape
    oh, ow = _out_size(m, h, w)
    pos = _positions(n, oh, ow, gen_seed, rows)
    if pos is None:  # small maps: every patch
        cols = F.unfold(x, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    b, oi, oj = pos
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = m.kernel_size, m.stride, m.dilation, m.padding
    xp = F.pad(x, (pw, pw, ph, ph))
    ii = oi[:, None] * sh + torch.arange(kh)[None, :] * dh  # (rows, kh)
    jj = oj[:, None] * sw + torch.arange(kw)[None, :] * dw  # (rows, kw)
    got = xp[b[:, None, None], :, ii[:, :, None], jj[:, None, :]]  # (rows, kh, kw, c)
    return got.permute(0, 3, 1, 2).reshape(len(b), c * kh * kw)


def output_rows(m: nn.Module, y: torch.Tensor, gen_seed: int, rows: int = MAX_ROWS) -> torch.Tensor:
    if isinstance(m, nn.Linear):
        ys = y.reshape(-1, y.shape[-1])
        idx = sample_rows(ys.shape[0], gen_seed, rows)
        return (ys[idx] if idx is not None else ys).double()
    pos = _positions(y.shape[0], y.shape[2], y.shape[3], gen_seed, rows)
    if pos is None:
        return y.flatten(2).transpose(1, 2).reshape(-1, y.shape[1]).double()
    b, oi, oj = pos
    return y[b, :, oi, oj].double()


class NormalEquations:
    """A layer's least-squares rows X (and targets Y): kept as rows while they are fewer than the features
    (wide layers on small late maps: the n x n dual form is then exact and cheap), else accumulated as
    A = X^T X and B = X^T Y (float32 products summed in float64), or as the diagonal of A only when there
    are more than `max_gram` features. ||Y||^2 is kept either way."""

    def __init__(self, max_gram: int | None = None):
        self.max_gram = max_gram
        self.rows: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        self.n = 0
        self.a = self.b = self.square = None
        self.yy = 0.0

    def add(self, xs: torch.Tensor, ys: torch.Tensor | None = None) -> None:
        xs, ys = xs.float(), None if ys is None else ys.float()
        if ys is not None:
            self.yy += float(ys.double().pow(2).sum())
        if self.square is not None:
            self.square += xs.double().pow(2).sum(0)
            return
        if self.a is None:
            self.rows.append((xs, ys))
            self.n += xs.shape[0]
            d = xs.shape[1]
            if self.n < d and self.n * d <= MAX_KEPT_ROWS:
                return
            xs, ys = self.x(), self.y()
            self.rows = []
            if self.max_gram is not None and d > self.max_gram:
                self.square = xs.double().pow(2).sum(0)
                return
            self.a = torch.zeros(d, d, dtype=torch.float64)
            self.b = None if ys is None else torch.zeros(d, ys.shape[1], dtype=torch.float64)
        self.a += (xs.T @ xs).double()
        if ys is not None:
            self.b += (xs.T @ ys).double()

    def x(self) -> torch.Tensor:
        return torch.cat([r[0] for r in self.rows])

    def y(self) -> torch.Tensor | None:
        return None if not self.rows or self.rows[0][1] is None else torch.cat([r[1] for r in self.rows])


def solve_spd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A^-1 B for symmetric positive (semi-)definite A, batched or not: by Cholesky, and by least squares
    where Cholesky fails (A singular up to rounding). Never by LU: once OpenVINO or ONNX Runtime has run in
    the process, oneMKL's multi-threaded batched LU can return invalid pivots ("Parameter 6 was incorrect on
    entry to DLASWP") for well-conditioned matrices, while its Cholesky and least squares stay correct."""
    chol, info = torch.linalg.cholesky_ex(a)
    if not bool(info.any()):
        return torch.cholesky_solve(b, chol)
    return torch.linalg.lstsq(a, b).solution


def sample_rows(n: int, seed: int, rows: int) -> torch.Tensor | None:
    # the same seed on the original and the pruned side picks the same positions
    if n <= rows:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:rows]


def forward_until(model: nn.Module, layer: nn.Module, x: torch.Tensor, output: bool) -> torch.Tensor:
    """The layer's input (or output) on x; the forward pass stops right after it."""
    got: list[torch.Tensor] = []

    def pre(mod, args):
        if not output:
            got.append(args[0].detach())
            raise StopForward

    def post(mod, args, out):
        got.append(out.detach())
        raise StopForward

    try:
        with forward_hooks([(layer, post if output else pre)], pre=not output), torch.no_grad():
            run_model(model, x)
    except StopForward:
        pass
    if not got:
        raise RuntimeError("layer not reached in the forward pass")
    return got[0]


def forward_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    names = {m: n for n, m in model.named_modules()}
    order: list[str] = []

    def hook(mod, args):
        if names[mod] not in order:
            order.append(names[mod])

    with forward_hooks(((m, hook) for m in model.modules() if dense_layer(m)), pre=True), torch.no_grad():
        run_model(model, x)
    return order
