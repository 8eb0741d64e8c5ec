"""What structured pruning must keep or group per model family, found from module types and attributes
(never from a model's name), so that the families users deploy stay correct once pruned:

- attention with a fused `qkv` Linear and an integer `num_heads` (timm ViT/DeiT blocks): whole heads are
  removed (Torch-Pruning's head pruning), never single dimensions of a head, and the module's `num_heads`
  (and `attn_dim`) are set to what is left; `head_dim` and the softmax scale stay as trained;
- detection heads (a module with a `stride` and an integer `nl` holding ModuleList branches, as in YOLO's
  Detect/Segment): the last conv of every branch (boxes, classes, mask coefficients) and every conv outside
  the branches (the box-distribution decoder) keep their output channels;
- CSP blocks that `chunk` one conv's output in two halves (YOLO's C2f/C3k2): that conv is split into two
  convs, one per half, before pruning, so the halves cannot lose different channels (`chunk` needs equal
  halves; Torch-Pruning's own example for YOLOv8 does the same rewrite). The function is unchanged;
- segmentation heads need nothing here: the conv whose output reaches a model output through upsampling or
  an activation is found by `graph_surgery.output_layers`."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def qkv_attention(module: nn.Module) -> list[nn.Module]:
    """Attention modules with a fused qkv Linear (3 x heads x head_dim outputs) and an int `num_heads`."""
    out = []
    for m in module.modules():
        qkv, heads = getattr(m, "qkv", None), getattr(m, "num_heads", None)
        if isinstance(qkv, nn.Linear) and isinstance(heads, int) and heads > 0 \
                and qkv.out_features % (3 * heads) == 0 and not hasattr(m, "relative_position_bias_table"):
            out.append(m)
    return out


def head_schedule(attention: list[nn.Module], ratio_of, steps: int) -> dict[nn.Module, list[float]]:
    """qkv Linear -> per step (after a leading 0), the share of its current heads Torch-Pruning removes, so that
    floor(ratio x heads) heads go in all (at least one kept), spread evenly over the steps. Torch-Pruning
    removes ceil(share x current heads) at a step, so each share is set just under the wanted count."""
    out = {}
    for m in attention:
        h = m.num_heads
        total = min(math.floor(ratio_of(m.qkv) * h + 1e-9), h - 1)
        done, shares = 0, [0.0]  # indexed by Torch-Pruning's step counter, which counts from 1
        for k in range(1, steps + 1):
            upto = total * k // steps
            shares.append((upto - done - 1e-3) / (h - done) if upto > done else 0.0)
            done = upto
        out[m.qkv] = shares
    return out


def settle_heads(attention: list[nn.Module], num_heads: dict[nn.Module, int], names: dict) -> list[str]:
    """After pruning: each attention module's head count is what Torch-Pruning left on its qkv."""
    notes = []
    for m in attention:
        before, after = m.num_heads, num_heads.get(m.qkv, m.num_heads)
        head_dim = m.qkv.out_features // (3 * after)
        if after * head_dim * 3 != m.qkv.out_features:
            raise RuntimeError(f"qkv width {m.qkv.out_features} is not 3 x {after} heads")
        m.num_heads = after
        if hasattr(m, "head_dim"):
            m.head_dim = head_dim
        if hasattr(m, "attn_dim"):
            m.attn_dim = after * head_dim
        if after != before:
            notes.append(f"{names.get(m, 'attention')}: {before} -> {after} heads (head dim {head_dim})")
    return notes


def detection_head_outputs(module: nn.Module) -> list[nn.Module]:
    """Convs of detection heads whose output channels are the head's contract (see module doc)."""
    keep: list[nn.Module] = []
    for head in module.modules():
        if not (hasattr(head, "stride") and isinstance(getattr(head, "nl", None), int)):
            continue
        branches = [c for c in head.children() if isinstance(c, nn.ModuleList)]
        if not branches:
            continue
        inner: set[nn.Module] = set()
        for bl in branches:
            for entry in bl:
                convs = [q for q in entry.modules() if isinstance(q, nn.Conv2d)]
                if convs:
                    keep.append(convs[-1])
                    inner.update(convs[:-1])
        keep += [q for q in head.modules() if isinstance(q, nn.Conv2d) and q not in inner and q not in keep]
    return keep


class SplitHalves(nn.Module):
    """A CSP block whose first conv is two convs, one per half: cat([a(x), b(x), *m(...)]) -> cv2. Computes
    exactly what `cv2(cat(cv1(x).chunk(2) + [m(...)...]))` computed, with halves that can be pruned apart."""

    def __init__(self, first: nn.Module, second: nn.Module, blocks: nn.ModuleList, cv2: nn.Module):
        super().__init__()
        self.cv1a, self.cv1b, self.m, self.cv2 = first, second, blocks, cv2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1a(x), self.cv1b(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


def _half(conv_block: nn.Module, conv: nn.Conv2d, bn: nn.Module | None, sl: slice) -> nn.Module:
    part = copy.deepcopy(conv_block)
    c = part.conv if part is not conv else part
    with torch.no_grad():
        c.weight = nn.Parameter(conv.weight[sl].clone())
        c.bias = None if conv.bias is None else nn.Parameter(conv.bias[sl].clone())
        c.out_channels = c.weight.shape[0]
        if bn is not None:
            b = part.bn
            b.weight = nn.Parameter(bn.weight[sl].clone())
            b.bias = nn.Parameter(bn.bias[sl].clone())
            b.running_mean = bn.running_mean[sl].clone()
            b.running_var = bn.running_var[sl].clone()
            b.num_features = b.weight.shape[0]
    return part


def _chunk_block(m: nn.Module) -> bool:
    """A CSP block that chunks `cv1`'s output in two (it carries `c`, `cv1.conv`, `m`, `cv2`, `forward_split`)."""
    cv1 = getattr(m, "cv1", None)
    conv = getattr(cv1, "conv", None)
    return (isinstance(getattr(m, "c", None), int) and isinstance(conv, nn.Conv2d) and conv.groups == 1
            and conv.out_channels == 2 * m.c and isinstance(getattr(m, "m", None), nn.ModuleList)
            and isinstance(getattr(m, "cv2", None), nn.Module) and callable(getattr(m, "forward_split", None))
            and (getattr(cv1, "bn", None) is None or isinstance(cv1.bn, nn.BatchNorm2d)))


def split_chunked_blocks(model: nn.Module) -> list[str]:
    """Rewrite, in place, every chunked CSP block into `SplitHalves`. Returns the names rewritten."""
    done = []
    for name, m in list(model.named_modules()):
        if not name or not _chunk_block(m):
            continue
        conv, bn = m.cv1.conv, getattr(m.cv1, "bn", None)
        new = SplitHalves(_half(m.cv1, conv, bn, slice(0, m.c)), _half(m.cv1, conv, bn, slice(m.c, 2 * m.c)),
                          m.m, m.cv2)
        for attr in ("i", "f", "type", "np"):  # the layer index/wiring attributes a YOLO graph reads
            if hasattr(m, attr):
                setattr(new, attr, getattr(m, attr))
        new.train(m.training)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, new)
        done.append(name)
    return done
