"""Distillation losses. Response-based (Hinton et al. 2015): KL divergence between temperature-softened
teacher and student outputs, scaled by T^2 so its gradients keep their size as T changes, mixed with the
hard-label cross-entropy when labels exist."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hinton_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None,
                temperature: float = 4.0, alpha: float = 0.7) -> torch.Tensor:
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, dim=1), F.softmax(teacher_logits / t, dim=1),
                    reduction="batchmean") * (t * t)
    if labels is None:
        return soft  # no labels: pure distillation
    return alpha * soft + (1.0 - alpha) * F.cross_entropy(student_logits, labels)


# Feature-based (FitNets, Romero et al. 2015; attention transfer, Zagoruyko & Komodakis 2017). The student's
# map goes through a learned 1x1 adapter before MSE, because pruning changed its channel count; attention
# transfer compares channel-pooled spatial maps, so it needs no adapter.
def _match_spatial(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    if fs.dim() == 4 and fs.shape[-2:] != ft.shape[-2:]:
        fs = F.interpolate(fs, size=ft.shape[-2:], mode="bilinear", align_corners=False)
    return fs


def attention_map(f: torch.Tensor) -> torch.Tensor:
    """Spatial attention: mean of squared activations over channels, flattened and L2-normalised."""
    a = f.pow(2).mean(1) if f.dim() == 4 else f.pow(2)
    return F.normalize(a.flatten(1), dim=1)


def attention_transfer_loss(fs: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    return (attention_map(_match_spatial(fs, ft)) - attention_map(ft)).pow(2).mean()


def feature_mse_loss(fs_adapted: torch.Tensor, ft: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(_match_spatial(fs_adapted, ft), ft)


# Relation-based (RKD, Park et al. 2019): transfer the geometry of the batch's penultimate embeddings, not
# the embeddings themselves, so student and teacher widths may differ.
def _pairwise_distances(e: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(e, e).clamp_min(1e-12)
    return d / d[d > 1e-6].mean().clamp_min(1e-6)  # scale-free: normalise by the mean distance


def rkd_distance_loss(es: torch.Tensor, et: torch.Tensor) -> torch.Tensor:
    es, et = es.flatten(1), et.flatten(1)
    with torch.no_grad():
        dt = _pairwise_distances(et)
    return F.smooth_l1_loss(_pairwise_distances(es), dt)


def _angles(e: torch.Tensor) -> torch.Tensor:
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # (n, n, d): unit vectors i->j
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()  # cosines of the angle at each anchor


def rkd_angle_loss(es: torch.Tensor, et: torch.Tensor) -> torch.Tensor:
    es, et = es.flatten(1), et.flatten(1)
    with torch.no_grad():
        at = _angles(et)
    return F.smooth_l1_loss(_angles(es), at)


def rkd_loss(es: torch.Tensor, et: torch.Tensor, w_dist: float = 1.0, w_angle: float = 2.0) -> torch.Tensor:
    """The paper's weighting: distance 1, angle 2."""
    return w_dist * rkd_distance_loss(es, et) + w_angle * rkd_angle_loss(es, et)


# Any other output structure (a detector's boxes and scores, a segmenter's dense logits, several heads):
# each output tensor of the student is matched to the teacher's by mean squared error, divided by the
# teacher output's mean square when that is above 1 (per channel, where the output has channels) so that
# heads of large scale (boxes in pixels) do not drown the others, while small outputs keep plain MSE
# (dividing by a tiny power made the steps explode). This is logit matching (Ba & Caruana 2014), which
# needs no assumption about what a tensor means. Labels add cross-entropy on the output they fit first
# (class logits (N, C) with labels (N,), dense logits (N, C, H, W) with masks (N, H, W)).
IGNORE_INDEX = 255  # the usual "void" value in segmentation masks


def fits_labels(out: torch.Tensor, y: torch.Tensor) -> bool:
    """Class scores on axis 1 and one integer target per remaining position."""
    if out.dim() != y.dim() + 1 or out.shape[0] != y.shape[0] or tuple(out.shape[2:]) != tuple(y.shape[1:]):
        return False
    return not torch.is_floating_point(y) or bool((y == y.round()).all())


def labelled_output(outs: dict[str, torch.Tensor], y: torch.Tensor | None) -> torch.Tensor | None:
    """The first output the labels fit (a segmenter's "out" before its "aux"), or None."""
    if y is None:
        return None
    return next((o for o in outs.values() if fits_labels(o, y)), None)


def task_loss(outs: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    out = labelled_output(outs, y)
    if out is None:
        raise ValueError("no output fits the labels")
    return F.cross_entropy(out, y.long(), ignore_index=IGNORE_INDEX)


def _matching(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Scaled squared error of one output; channel by channel (axis 1) where there are channels, so that a head
    holding box coordinates in pixels beside class scores in 0..1 (YOLO's (N, 4 + classes, anchors)) does not
    let the boxes drown the scores."""
    if t.dim() < 3:
        return (s - t).pow(2).mean() / t.pow(2).mean().clamp_min(1.0)
    axes = [0, *range(2, t.dim())]
    return ((s - t).pow(2).mean(axes) / t.pow(2).mean(axes).clamp_min(1.0)).mean()


def output_matching_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor],
                         y: torch.Tensor | None = None, alpha: float = 0.7) -> torch.Tensor:
    soft = torch.stack([_matching(student[k], teacher[k]) for k in teacher]).mean()
    if labelled_output(student, y) is None:
        return soft
    return alpha * soft + (1.0 - alpha) * task_loss(student, y)
