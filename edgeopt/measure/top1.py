"""Top-1: the share of predictions equal to their labels, the one count behind every classification accuracy
(PyTorch models, runtime sessions, the device agent). Works on numpy arrays and torch tensors alike and imports
neither, so the device's worker (no PyTorch) uses it too."""

from __future__ import annotations

from collections.abc import Iterable


def correct(scores, labels) -> tuple[int, int]:
    """(predictions equal to their label, predictions). `scores` are class scores, the top class along axis 1
    being the prediction (any trailing shape with one label per sample; (batch, classes, H, W) against
    (batch, H, W) masks), or predicted classes already, of the labels' shape."""
    if scores.ndim == labels.ndim + 1:
        scores = scores.argmax(1)
    elif scores.ndim > labels.ndim:
        scores = scores.reshape(len(labels), -1).argmax(1)
    return int((scores == labels).sum()), len(labels.reshape(-1))


def percent_correct(pairs: Iterable[tuple]) -> float:
    """Top-1 in %: predictions equal to their labels over (scores, labels) pairs, e.g. one per batch (see
    `correct`); 0.0 when there are none."""
    right = total = 0
    for scores, labels in pairs:
        r, n = correct(scores, labels)
        right, total = right + r, total + n
    return 100.0 * right / total if total else 0.0
