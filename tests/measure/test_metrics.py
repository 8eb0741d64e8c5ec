"""Task metrics: top1, miou (mask folders, torchmetrics), fidelity for any output structure, the user's metric,
and their one-line errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from edgeopt.errors import ConfigError, DataError
from edgeopt.inputs.data import Batches, as_batches
from edgeopt.inputs.masks import mask_folder, pair_files
from edgeopt.measure.accuracy import Metric, default_metric, fidelity, load_metric, miou, score


def test_miou_matches_hand_computation():
    pred = np.array([[[0, 0], [1, 1]]])
    masks = torch.tensor([[[0, 1], [1, 1]]])
    # class 0: IoU 1/2; class 1: IoU 2/3 -> mean 58.33%
    assert miou(pred, masks, 2) == pytest.approx((0.5 + 2 / 3) / 2 * 100, abs=1e-3)


def test_default_metric_follows_the_targets():
    x = torch.zeros(2, 3, 4, 4)
    assert default_metric(Batches([(x, None)])).name == "fidelity"
    assert default_metric(Batches([(x, torch.tensor([0, 1]))])).name == "top1"
    seg = default_metric(Batches([(x, torch.zeros(2, 4, 4, dtype=torch.long) + 2)]))
    assert seg.name == "miou" and seg.num_classes == 3


def test_as_batches_keeps_masks_and_box_targets():
    x = torch.zeros(2, 3, 4, 4)
    b = as_batches([(x, torch.ones(2, 4, 4))], "eval", (3, 4, 4), 5)
    assert b.items[0][1].shape == (2, 4, 4) and b.items[0][1].dtype == torch.long
    boxes = [{"boxes": torch.zeros(1, 4), "labels": torch.tensor([1])}] * 2
    b = as_batches([(x, boxes)], "eval", (3, 4, 4))
    assert b.labelled and b.items[0][1][0]["labels"].item() == 1


def test_fidelity_per_output_kind():
    ref = {"logits": np.array([1, 2, 3, 4]), "boxes": np.ones((4, 8), np.float32)}
    same = fidelity(ref, ref)
    assert same == pytest.approx(100.0)
    half = {"logits": np.array([1, 2, 0, 0]), "boxes": np.ones((4, 8), np.float32)}
    assert fidelity(half, ref) == pytest.approx(50.0)  # the worst output counts
    flipped = {"logits": ref["logits"], "boxes": -np.ones((4, 8), np.float32)}
    assert fidelity(flipped, ref) == 0.0
    assert fidelity({"logits": ref["logits"]}, {"logits": ref["logits"], "b": ref["boxes"]}) == 0.0


def test_user_metric_gets_nested_outputs_and_targets():
    seen = {}

    def my_map(outputs, targets):
        seen["keys"], seen["n"] = sorted(outputs), len(targets)
        return 42.5

    m = load_metric(my_map, layout={"boxes": "boxes", "scores": {"logits": "scores.logits"}})
    b = Batches([(torch.zeros(2, 1), [{"a": 1}, {"a": 2}])])
    b.metric = m
    preds = {"boxes": np.zeros((2, 4), np.float32), "scores.logits": np.zeros((2, 3), np.float32)}
    assert score(preds, b) == (42.5, "user:my_map")
    assert seen == {"keys": ["boxes", "scores"], "n": 2}


def test_user_metric_errors_name_the_function(tmp_path):
    b = Batches([(torch.zeros(2, 1), torch.tensor([0, 1]))])
    preds = {"output": np.zeros((2, 3), np.float32)}

    def broken(outputs, targets):
        raise KeyError("boxes")

    def text(outputs, targets):
        return "good"

    for fn, msg in ((broken, "metric broken raised KeyError"), (text, "metric text returned 'good'")):
        b.metric = Metric(f"user:{fn.__name__}", fn=fn)
        with pytest.raises(ConfigError, match=msg):
            score(preds, b)
    f = tmp_path / "m.py"
    f.write_text("def acc(outputs, targets):\n    return float((outputs.argmax(1) == targets).float().mean() * 100)\n")
    b.metric = load_metric(f"{f}:acc")
    assert score({"output": np.array([[1, 0, 0], [0, 1, 0]], np.float32)}, b) == (100.0, "user:acc")
    with pytest.raises(ConfigError, match="cannot load metric function"):
        load_metric(f"{f}:nope")


def _write_pairs(root, n, size=8, drop_mask=None):
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / "images" / f"s{i}.png")
        if i != drop_mask:
            Image.fromarray((np.arange(size * size).reshape(size, size) % 3).astype(np.uint8)).save(
                root / "masks" / f"s{i}.png")


def test_mask_folder_pairs_and_splits(tmp_path):
    _write_pairs(tmp_path, 5)
    splits = mask_folder(tmp_path / "images", tmp_path / "masks", (8, 8), 3, (0.5,), (0.5,), val_split=0.4)
    x, y = splits.eval.items[0]
    assert x.shape == (2, 3, 8, 8) and y.shape == (2, 8, 8) and int(y.max()) == 2
    assert len(splits.train) == 3
    assert default_metric(splits.eval).name == "miou"


def test_mask_folder_missing_pair_named(tmp_path):
    _write_pairs(tmp_path, 3, drop_mask=1)
    with pytest.raises(DataError, match=r"image .*s1.png has no mask s1\.\*"):
        pair_files(tmp_path / "images", tmp_path / "masks")
