"""Accuracy of a runnable model on evaluation batches: top-1 with labels, or fidelity (top-1 agreement
with the original model) without. Artifacts have a static batch size, so batches are re-chunked."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from edgeopt.inputs.data import Batches


def predictions(run: Callable[[np.ndarray], np.ndarray], batches: Batches, batch_size: int) -> np.ndarray:
    """Top-1 class for every evaluation sample, running `run` on fixed-size chunks (last one padded). The
    batches are read one at a time (a streamed held-out set is never held in memory whole)."""
    preds, pending = [], None
    for x in batches.inputs():
        x = x.detach().cpu().numpy().astype(np.float32, copy=False)
        pending = x if pending is None else np.concatenate([pending, x])
        while len(pending) >= batch_size:
            preds.append(_top1(run, pending[:batch_size], batch_size))
            pending = pending[batch_size:]
    if pending is not None and len(pending):
        n = len(pending)
        chunk = np.concatenate([pending, np.zeros((batch_size - n, *pending.shape[1:]), np.float32)])
        preds.append(_top1(run, chunk, batch_size)[:n])
    return np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)


def _top1(run, chunk: np.ndarray, batch_size: int) -> np.ndarray:
    return np.asarray(run(chunk)).reshape(batch_size, -1).argmax(1)


def torch_runner(model: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    model.eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    return run


def score(preds: np.ndarray, batches: Batches, reference: np.ndarray | None) -> tuple[float, str]:
    """(accuracy in %, metric name)."""
    if batches.labelled:
        labels = batches.labels().numpy()  # a streamed set knows its labels without decoding the images
        return float((preds == labels).mean() * 100), "top1"
    assert reference is not None, "fidelity needs the original model's predictions"
    return float((preds == reference).mean() * 100), "fidelity"


def torch_predictions(model: torch.nn.Module, batches: Batches, batch_size: int, wide: int = 64) -> np.ndarray:
    """Top-1 in PyTorch, in wide chunks when the model takes them (much faster than batch 1; per-sample
    results are the same in eval mode), else at the model's own batch size (e.g. a static-shape export)."""
    run = torch_runner(model)
    if wide > batch_size:
        try:
            return predictions(run, batches, wide)
        except Exception:  # a model traced for a fixed batch
            pass
    return predictions(run, batches, batch_size)
