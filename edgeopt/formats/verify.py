"""Compare an exported model's outputs with the PyTorch model's on fresh inputs, output by output.

Tolerances depend on the precision: fp32 must match closely; reduced precisions are judged by relative
error and top-1 agreement, since their point is to trade exactness for speed. Each output is judged on its
own scale (its error relative to its own largest value), so a small auxiliary output is not drowned by a
large one; agreement is counted on outputs that look like class logits (batch, classes) or dense logits
(batch, classes, H, W: per-pixel argmax). Per-image box sets (torchvision's `[{"boxes", "labels", "scores"}, ...]`,
flattened to `<image>.boxes`, ...) are judged as sets, not element by element: a detector's boxes may come out
in another order, or one more or fewer near its score threshold, from float differences that change nothing;
each image's boxes are matched to PyTorch's (measure/detection.py: same class, IoU >= 0.5, score agreement)
and the mean agreement must reach the precision's minimum (fp32: BOX_AGREEMENT_FP32)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

# The tolerances are policy: they live with the other thresholds in decide/policy.py, a leaf module that
# imports nothing and so may be read from this layer without importing the decision layer.
import edgeopt.decide.policy as policy
from edgeopt.errors import VerificationError
from edgeopt.formats.base import Session
from edgeopt.inputs.model_io import Inputs, flatten_outputs

# fp32's box-set agreement: reordered or near-threshold boxes (score differences of float rounding) still agree
BOX_AGREEMENT_FP32 = 0.98


def _argmax(a: np.ndarray, single: bool) -> np.ndarray | None:
    """Predicted class per sample (or per pixel); None for outputs that are not logits."""
    if single and a.ndim >= 2:  # one output: as always, argmax over everything but the batch
        return a.reshape(len(a), -1).argmax(1)
    if a.ndim == 2 and a.shape[1] > 1:
        return a.argmax(1)
    if a.ndim == 4 and a.shape[1] > 1:
        return a.argmax(1).reshape(-1)
    return None


def match_outputs(got: dict[str, np.ndarray], ref: dict[str, torch.Tensor], runtime: str) -> dict[str, np.ndarray]:
    """The runtime's outputs under the PyTorch names (by name, else by position when only the names differ)."""
    if set(got) == set(ref):
        return got
    if len(got) == len(ref):
        return dict(zip(ref, got.values(), strict=True))
    raise VerificationError(f"{runtime} returns {len(got)} outputs ({', '.join(got)}), PyTorch {len(ref)} "
                            f"({', '.join(ref)})")


def _reference(model: nn.Module, x: Inputs, memo: dict | None) -> dict[str, torch.Tensor]:
    """PyTorch's outputs on `x`; with `memo` (one per model), each input batch is run once for every artifact
    verified against it."""
    key = None
    if memo is not None:
        import hashlib

        h = hashlib.sha1()
        for name, t in zip(x.names, x.tensors, strict=True):
            h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.detach().contiguous().cpu().numpy().tobytes())
        key = h.hexdigest()
        if key in memo:
            return memo[key]
    with torch.no_grad():
        ref = flatten_outputs(x.call(model))
    if memo is not None:
        memo[key] = ref
    return ref


def verify_session(session: Session, model: nn.Module, example, precision: str,
                   n_inputs: int | None = None, inputs: list | None = None, seed: int = 1234,
                   labels: list[torch.Tensor] | None = None, references: dict | None = None) -> dict:
    """Raise VerificationError when the runtime's outputs do not match; return the error figures.

    `example` is a tensor, tuple or dict of tensors; `inputs` (optional) are batches of the same form.
    fp32 is judged on a few inputs by max error; reduced precisions on enough inputs (24 by default) for
    top-1 agreement to mean something. With `labels` (one tensor per input batch) and one output, the
    accuracy of both the runtime and PyTorch is reported too. `references`: a dict kept with the model, in which
    PyTorch's outputs are remembered by input, so that the artifacts of one structure run the model once."""
    base = Inputs.of(example, model)
    gen = torch.Generator().manual_seed(seed)
    if n_inputs is None:
        fp32 = policy.tolerance(session.precision_executed) == policy.TOLERANCES["fp32"]
        n_inputs = policy.VERIFY_INPUTS_FP32 if fp32 else policy.VERIFY_INPUTS_REDUCED
    xs = [Inputs.of(x, model) if not isinstance(x, torch.Tensor) or base.single else base.like([x])
          for x in inputs] if inputs else [base.fresh(gen) for _ in range(n_inputs)]
    if labels is not None and len(labels) != len(xs):
        raise VerificationError(f"{len(labels)} label batches for {len(xs)} input batches")
    per: dict[str, dict] = {}
    agree = total = right_rt = right_pt = samples = 0
    boxes: list[float] = []  # per-image agreement of box sets
    model.eval()
    for i, x in enumerate(xs):
        ref = _reference(model, x, references)
        got = session.run_named(x.numpy())
        box_names = _box_sets(ref, got, x.batch, boxes)
        ref = {k: v for k, v in ref.items() if k not in box_names}
        got = match_outputs({k: v for k, v in got.items() if k not in box_names}, ref, session.runtime)
        single = len(ref) == 1
        samples += x.batch
        for name, r in ref.items():
            r, g = r.float().numpy(), np.asarray(got[name])
            if g.shape != r.shape:
                what = "output" if single else f"output {name!r}"
                raise VerificationError(f"{session.runtime} {what} shape {g.shape} != PyTorch {r.shape}")
            if not np.isfinite(g).all():
                raise VerificationError(f"{session.runtime} produced NaN/Inf in output {name!r}")
            diff = float(np.abs(g - r).max()) if g.size else 0.0
            st = per.setdefault(name, {"max_abs_error": 0.0, "max_rel_error": 0.0})
            st["max_abs_error"] = max(st["max_abs_error"], diff)
            st["max_rel_error"] = max(st["max_rel_error"], diff / max(float(np.abs(r).max()) if r.size else 0, 1e-6))
            pg, pr = _argmax(g, single), _argmax(r, single)
            if pr is not None:
                agree += int((pg == pr).sum())
                total += pr.size
                if labels is not None and single:
                    y = labels[i].numpy().reshape(-1)
                    right_rt += int((pg == y).sum())
                    right_pt += int((pr == y).sum())
    result = _judge(session, per, (agree, total, samples), right_rt, right_pt, labels, len(xs))
    if boxes:
        box_agreement = float(np.mean(boxes))
        result["box_agreement"] = box_agreement
        max_rel, min_agree = policy.tolerance(session.precision_executed)
        need = BOX_AGREEMENT_FP32 if min_agree >= 1.0 else min_agree
        if box_agreement < need:
            raise VerificationError(
                f"{session.runtime} ({session.precision_executed}) detections differ from PyTorch: box agreement "
                f"{box_agreement:.0%} over {len(boxes)} images (min {need:.0%})")
    return result


def _box_sets(ref: dict, got: dict, batch: int, agreements: list[float]) -> set[str]:
    """The names of per-image box-set outputs (`<image>.boxes`, ...) in `ref`; each image's agreement of the
    runtime's boxes with PyTorch's is appended to `agreements`. Empty when the model has none."""
    from edgeopt.measure.detection import DETECTIONS, group_per_image, image_agreement

    grouped = group_per_image({k: v.float().numpy() if isinstance(v, torch.Tensor) else v for k, v in ref.items()},
                              batch)
    if DETECTIONS not in grouped:
        return set()
    names = set(ref) - set(grouped)
    if not names <= set(got):
        raise VerificationError(f"runtime outputs ({', '.join(sorted(got))}) lack PyTorch's per-image box outputs "
                                f"({', '.join(sorted(names - set(got)))})")
    theirs = group_per_image({k: np.asarray(got[k]) for k in names}, batch)[DETECTIONS]
    agreements += [image_agreement(r, g) for r, g in zip(grouped[DETECTIONS], theirs, strict=True)]
    return names


def _judge(session: Session, per: dict, counts: tuple[int, int, int], right_rt: int, right_pt: int,
           labels, n: int) -> dict:
    agree, total, samples = counts
    agreement = agree / total if total else 1.0
    max_rel, min_agree = policy.tolerance(session.precision_executed)
    rel = max((s["max_rel_error"] for s in per.values()), default=0.0)
    result = {"max_abs_error": max((s["max_abs_error"] for s in per.values()), default=0.0), "max_rel_error": rel,
              "top1_agreement": agreement, "precision": session.precision_executed, "inputs": n}
    if len(per) > 1:
        result["outputs"] = per
    if labels is not None and total and len(per) == 1:
        result["accuracy"], result["accuracy_pytorch"] = right_rt / total, right_pt / total
    worst = max(per, key=lambda k: per[k]["max_rel_error"], default="")
    where = f" (output {worst!r})" if len(per) > 1 else ""
    # top-1 agreement is only meaningful over enough samples (not pixels: neighbours flip together);
    # a single flip among 4 random inputs is noise
    if rel > max_rel or (total and samples >= policy.AGREEMENT_MIN_SAMPLES and agreement < min_agree):
        raise VerificationError(
            f"{session.runtime} ({session.precision_executed}) outputs differ from PyTorch: max relative "
            f"error {rel:.2e}{where} (limit {max_rel:.0e}), top-1 agreement {agreement:.0%} (min {min_agree:.0%})")
    return result
