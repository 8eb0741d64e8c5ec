"""Data sources: image folders (class per sub-folder), module:function, validation with one-line errors."""

from functools import partial

import pytest
import torch
from imagefolders import class_folders

from edgeopt.errors import ConfigError, DataError
from edgeopt.inputs.data import from_function, image_folder, resolve_data

_folder = partial(class_folders, classes=("cat", "dog"), n=5, spread=(80, 120), name="{i}.png")


def test_image_folder_splits_resizes_and_normalises(tmp_path):
    root = _folder(tmp_path / "imgs")
    before = sorted((p.name, p.stat().st_mtime_ns) for p in root.rglob("*.png"))
    s = image_folder(root, 8, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), val_split=0.4, seed=1, augment=False)
    assert s.eval is not None and s.eval.labelled and s.train.labelled and len(s.calib) == 6  # all 6 training
    xs = torch.cat(list(s.eval.inputs()) + list(s.train.inputs()))
    assert xs.shape == (10, 3, 8, 8) and len(s.eval) == 4 and len(s.train) == 6  # 2 of 5 per class held out
    labels = torch.cat([y for _, y in s.eval.items])
    assert set(labels.tolist()) == {0, 1}  # sorted class folders -> 0, 1; every class held out
    # class 1 images are brighter: normalised means differ in the right direction
    ev = torch.cat(list(s.eval.inputs()))
    assert ev[labels == 1].mean() > ev[labels == 0].mean()
    assert sorted((p.name, p.stat().st_mtime_ns) for p in root.rglob("*.png")) == before  # input untouched


def test_image_folder_through_optimize_data_resolution(tmp_path):
    root = _folder(tmp_path / "gray", mode="L", size=(16, 16))
    s = resolve_data("module", str(root), None, None, None, (1, 16, 16), 2, {"val_split": 0.2})
    assert s.source.startswith("folder:") and s.eval.inputs()[0].shape[1:] == (1, 16, 16)
    assert s.heldout_hash and len(s.heldout_hash) == 64


@pytest.mark.parametrize("make,msg", [
    (lambda r: r, "no class sub-folders"),
    (lambda r: (r / "a").mkdir() or r, "has no images"),
    (lambda r: r / "missing", "is not a folder"),
])
def test_image_folder_errors(tmp_path, make, msg):
    root = tmp_path / "d"
    root.mkdir()
    with pytest.raises(DataError, match=msg):
        image_folder(make(root), 8, 3, (0.5,), (0.5,))


def test_a_folder_split_already_keeps_its_split(tmp_path):
    """The ImageNet layout, train/ and val/ of class folders: val/ is held out whole, train/ calibrates and trains,
    the class indices are train/'s sorted folder names (val/ may lack a class). Read as one class folder it was
    two classes, "train" and "val", and every score silently wrong."""
    root = tmp_path / "imagenet"
    _folder(root / "train", classes=("cat", "dog", "eel"), n=4)
    _folder(root / "val", classes=("dog", "eel"), n=3)
    s = image_folder(root, 8, 3, (0.5,), (0.5,), val_split=0.5, augment=False)
    assert len(s.eval) == 6 and len(s.train) == 12  # val/ whole, not half of everything
    assert s.source.endswith("(val/ held out, train/ for calibration and training)")  # report.json says so
    assert sorted(torch.cat([y for _, y in s.eval.items]).tolist()) == [1, 1, 1, 2, 2, 2]  # dog, eel as in train/
    ev = torch.cat(list(s.eval.inputs()))  # the held-out images are val/'s: dog is darker than eel there too
    labels = torch.cat([y for _, y in s.eval.items])
    assert ev[labels == 2].mean() > ev[labels == 1].mean()


@pytest.mark.parametrize("make,msg", [
    (lambda r: _folder(r / "train", n=2) and _folder(r / "val", classes=("dog", "zebra"), n=2),
     "val/ has class folder.s. zebra that train/ lacks"),
    (lambda r: _folder(r / "val", n=2), r"holds only val/: a split layout needs train/ and val/"),
    (lambda r: _folder(r / "train", n=2) and (r / "test").mkdir() or (r / "test" / "x.png").write_bytes(b"")
     or True, "test/ has no class sub-folders"),
])
def test_an_incomplete_split_layout_is_one_line(tmp_path, make, msg):
    root = tmp_path / "d"
    make(root)
    with pytest.raises(DataError, match=msg):
        image_folder(root, 8, 3, (0.5,), (0.5,))
    from edgeopt.config import InputsConfig
    from edgeopt.engine.prepare import check_inputs

    with pytest.raises(DataError, match=msg):  # refused before the model is loaded too
        check_inputs(InputsConfig(model="x", data=str(root)))


def test_bad_split_and_stats(tmp_path):
    root = _folder(tmp_path / "imgs")
    with pytest.raises(DataError, match="val-split"):
        image_folder(root, 8, 3, (0.5,), (0.5,), val_split=1.5)
    with pytest.raises(DataError, match="mean/--std"):
        image_folder(root, 8, 3, (0.5, 0.5), (0.5,))


def test_module_function_data(tmp_path):
    f = tmp_path / "mydata.py"
    f.write_text("import torch\n"
                 "def good():\n"
                 "    g = torch.Generator().manual_seed(0)\n"
                 "    x = torch.randn(8, 1, 16, 16, generator=g)\n"
                 "    y = torch.arange(8) % 3\n"
                 "    return {'calib': [x], 'train': [(x, y)], 'eval_data': [(x, y)]}\n"
                 "def triple():\n"
                 "    return [torch.randn(2, 1, 16, 16)], None, None\n"
                 "def bad_labels():\n"
                 "    return {'eval': [(torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 7]))]}\n"
                 "def wrong():\n"
                 "    return 3\n")
    s = resolve_data("module", f"{f}:good", None, None, None, (1, 16, 16), 3)
    assert s.eval.labelled and s.train.labelled and not s.calib.labelled and s.source.startswith("function:")
    assert from_function(f"{f}:triple")["train"] is None
    with pytest.raises(DataError, match="labels outside 0..2"):
        resolve_data("module", f"{f}:bad_labels", None, None, None, (1, 16, 16), 3)
    with pytest.raises(DataError, match="must return"):
        from_function(f"{f}:wrong")
    with pytest.raises(DataError, match="cannot load"):
        from_function(f"{f}:nope")
    with pytest.raises(DataError, match="does not exist"):
        from_function(f"{tmp_path / 'none.py'}:f")
    with pytest.raises(ConfigError, match="neither"):
        resolve_data("module", "imagenet", None, None, None, (1, 16, 16), 3)


def test_nan_in_training_data():
    with pytest.raises(DataError, match="training data batch 0 contains NaN"):
        resolve_data("module", None, None, [torch.full((2, 1, 16, 16), float("inf"))], None, (1, 16, 16), 3)


def _mask_layout(root, n=5, size=8, classes=3, drop_mask=None):
    import numpy as np
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / "images" / f"s{i}.png")
        if i != drop_mask:
            Image.fromarray((np.arange(size * size).reshape(size, size) % classes).astype(np.uint8)).save(
                root / "masks" / f"s{i}.png")
    return root


def test_images_and_masks_folders_are_segmentation_scored_by_miou(tmp_path):
    from edgeopt.inputs.data import data_form
    from edgeopt.measure.accuracy import default_metric

    root = _mask_layout(tmp_path / "set")
    assert data_form(root) == "masks"  # not two classes named "images" and "masks"
    s = resolve_data("module", str(root), None, None, None, (3, 8, 8), 3)
    x, y = s.eval.items[0]
    assert s.source.startswith("masks:") and x.shape[1:] == (3, 8, 8) and y.shape[1:] == (8, 8)
    assert len(s.eval) + len(s.train) == 5 and default_metric(s.eval).name == "miou"


@pytest.mark.parametrize("how,msg", [("missing", r"s1.png has no mask s1\.\*"),
                                     ("classes", r"class value\(s\) 3, 4 outside 0..2")])
def test_mask_layout_faults_are_one_line(tmp_path, how, msg):
    root = _mask_layout(tmp_path / "set", drop_mask=1 if how == "missing" else None,
                        classes=5 if how == "classes" else 3)
    with pytest.raises(DataError, match=msg) as e:
        resolve_data("module", str(root), None, None, None, (3, 8, 8), 3)
    assert "\n" not in str(e.value)
