"""Labelled boxes in the Ultralytics/YOLO layout (data.yaml, images/, labels/*.txt) scored by mAP, and a flat
folder of unlabelled images scored by fidelity, saying so; faults of the layout are one-line DataErrors."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from edgeopt.errors import DataError
from edgeopt.inputs.data import resolve_data
from edgeopt.measure.accuracy import default_metric, score, torch_predictions
from edgeopt.measure.detection import mean_average_precision

SIZE = 32


def _image(path, box, cls):
    """A black canvas with one square of class `cls` (0 red, 1 green) at pixel box x1 y1 x2 y2, or none."""
    a = np.zeros((SIZE, SIZE, 3), np.uint8)
    if box is not None:
        x1, y1, x2, y2 = box
        a[y1:y2, x1:x2, cls] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


def yolo_set(root, n_train=6, n_val=6, labels_for_background=False):
    """Each split: images with one square (its label line) and one background image (no label file)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            img = root / "images" / split / f"{split}{i}.png"
            lab = root / "labels" / split / f"{split}{i}.txt"
            lab.parent.mkdir(parents=True, exist_ok=True)
            if i == n - 1:  # background
                _image(img, None, 0)
                if labels_for_background:
                    lab.write_text("")
                continue
            w, h = (int(v) for v in rng.integers(6, 14, 2))
            x1, y1 = (int(v) for v in rng.integers(0, SIZE - 14, 2))
            cls = i % 2
            _image(img, (x1, y1, x1 + w, y1 + h), cls)
            lab.write_text(f"{cls} {(x1 + w / 2) / SIZE} {(y1 + h / 2) / SIZE} {w / SIZE} {h / SIZE}\n")
    yaml = root / "data.yaml"
    yaml.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: red\n  1: green\n")
    return yaml


class SquareFinder(nn.Module):
    """A torchvision-style detector that finds the coloured squares exactly (the oracle), or nothing."""

    def __init__(self, blind=False):
        super().__init__()
        self.blind = blind
        self.scale = nn.Conv2d(3, 3, 1, bias=False)
        nn.init.dirac_(self.scale.weight)

    def forward(self, x):
        x = self.scale(x)
        out = []
        for img in x:
            boxes, labels = [], []
            for c in range(2):
                ys, xs = torch.nonzero(img[c] > 0.5, as_tuple=True)
                if len(ys) and not self.blind:
                    boxes.append(torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float())
                    labels.append(c)
            out.append({"boxes": torch.stack(boxes) if boxes else torch.zeros((0, 4)),
                        "labels": torch.tensor(labels, dtype=torch.long), "scores": torch.ones(len(labels))})
        return out


def resolve(spec, **opts):
    return resolve_data("module", str(spec), None, None, None, (3, SIZE, SIZE), None, opts or None)


def test_yolo_layout_gives_map(tmp_path):
    s = resolve(yolo_set(tmp_path / "set"))
    assert s.source.startswith("yolo:") and len(s.eval) == 6 and len(s.calib) == 6
    targets = [t for _, y in s.eval.items for t in y]
    assert [len(t["boxes"]) for t in targets] == [1, 1, 1, 1, 1, 0]  # the last val image is background
    metric = default_metric(s.eval)
    assert metric.name == "map50" and "0.5:0.95" in metric.meaning
    s.eval.metric = metric
    assert score(torch_predictions(SquareFinder().eval(), s.eval, 4), s.eval) == (100.0, "map50")
    assert score(torch_predictions(SquareFinder(blind=True).eval(), s.eval, 4), s.eval)[0] == 0.0
    both = mean_average_precision(torch_predictions(SquareFinder().eval(), s.eval, 4)["detections"], targets)
    assert both == {"map50": 100.0, "map": 100.0}


def test_the_training_split_is_trains_images_unlabelled_for_distillation(tmp_path):
    from edgeopt.config import RunConfig
    from edgeopt.engine.prepare import prepare
    from edgeopt.inputs.data.epochs import TrainFeed

    yaml = yolo_set(tmp_path / "set", n_train=5)
    s = resolve(yaml)
    feed = TrainFeed(s.train)
    assert not s.train.labelled and feed.n == 5  # every train image, background included
    x, y = next(iter(feed.epoch(0)))
    assert y is None and tuple(x.shape[1:]) == (3, SIZE, SIZE)

    def prepared(model):
        cfg = RunConfig().with_flat(data=str(yaml), input_shape=(1, 3, SIZE, SIZE), retrain=True,
                                    data_options={"workers": 0})
        return prepare(cfg, model=model, example=torch.zeros(1, 3, SIZE, SIZE)).splits

    # a torchvision-style detector's outputs are per-image lists after NMS: nothing to distil, and it says so
    splits = prepared(SquareFinder().eval())
    assert splits.train is None and "non-maximum suppression" in splits.untrained
    dense = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Flatten(2)).eval()  # a raw head: distilled
    splits = prepared(dense)
    assert splits.train is not None and splits.untrained is None


def test_loose_boxes_lower_map_at_strict_ious(tmp_path):
    s = resolve(yolo_set(tmp_path / "set"))
    targets = [t for _, y in s.eval.items for t in y]
    loose = [{"boxes": t["boxes"] + torch.tensor([0, 0, 1.5, 1.5]), "labels": t["labels"],
              "scores": torch.ones(len(t["labels"]))} for t in targets]
    got = mean_average_precision(loose, targets)
    assert got["map50"] == 100.0 and got["map"] < 100.0


def test_flat_folder_is_unlabelled_and_says_so(tmp_path):
    root = tmp_path / "flat"
    for i in range(10):
        _image(root / f"{i}.png", (2, 2, 10, 10), i % 2)
    s = resolve(root)
    assert "no class sub-folders" in s.source and "fidelity" in s.source
    assert not s.eval.labelled and s.train is None and len(s.eval) + len(s.calib) == 10
    assert default_metric(s.eval).name == "fidelity"


def _break(yaml, how):
    root = yaml.parent
    lab = root / "labels" / "val" / "val0.txt"
    if how == "class":
        lab.write_text("2 0.5 0.5 0.2 0.2\n")
    elif how == "outside":
        lab.write_text("0 0.95 0.5 0.2 0.2\n")
    elif how == "malformed":
        lab.write_text("0 0.5 0.5 0.2\n")
    elif how == "orphan":
        (root / "labels" / "val" / "ghost.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    elif how == "nonumber":
        lab.write_text("red 0.5 0.5 0.2 0.2\n")
    elif how == "no-val":
        yaml.write_text(yaml.read_text().replace("val: images/val\n", ""))
    elif how == "no-labels":
        for f in (root / "labels" / "val").glob("*.txt"):
            f.unlink()
    elif how == "names":
        yaml.write_text(yaml.read_text().split("names:")[0] + "names: 3\n")


@pytest.mark.parametrize("how,msg", [
    ("class", "class 2 is outside the 2 classes"), ("outside", "outside the image"), ("malformed", "4 values"),
    ("orphan", "ghost.txt has no image"), ("nonumber", "is not numbers"), ("no-val", "no `val` split"),
    ("names", "`names` must list"), ("no-labels", "no image of `val` has a label file"),
])
def test_layout_faults_are_one_line(tmp_path, how, msg):
    yaml = yolo_set(tmp_path / "set")
    _break(yaml, how)
    with pytest.raises(DataError, match=msg) as e:
        resolve(yaml)
    assert "\n" not in str(e.value)


def test_missing_label_file_is_background_like_an_empty_one(tmp_path):
    a = resolve(yolo_set(tmp_path / "a"))
    b = resolve(yolo_set(tmp_path / "b", labels_for_background=True))
    ta = [len(t["boxes"]) for _, y in a.eval.items for t in y]
    assert ta == [len(t["boxes"]) for _, y in b.eval.items for t in y] and ta[-1] == 0


def test_box_data_takes_the_normalization_options_the_resolver_reads(tmp_path):
    """--image-size/--mean/--std are read for a data.yaml (its images are resized whole and normalized), so the
    early input check lets them through; --val-split (the data.yaml names its splits) is still refused."""
    from edgeopt.config import RunConfig
    from edgeopt.engine.prepare import check_inputs
    from edgeopt.errors import ConfigError

    yaml = yolo_set(tmp_path / "set")
    check_inputs(RunConfig().with_flat(data=str(yaml), data_options={
        "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "image_size": (SIZE, SIZE)}).inputs)
    s = resolve(yaml, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    plain = resolve(yaml)
    x, y = s.eval.items[0][0], plain.eval.items[0][0]
    assert torch.allclose(x, (y - 0.5) / 0.25, atol=1e-5)  # the normalization was applied, not ignored
    with pytest.raises(ConfigError, match="--val-split applies only to an image folder"):
        check_inputs(RunConfig().with_flat(data=str(yaml), data_options={"val_split": 0.5}).inputs)


def _one_based_finder():
    """A torchvision detector (an SSD) as users train them: labels 1..N, 0 being its background."""
    from torchvision.models.detection.ssd import SSD

    class OneBasedFinder(SSD):
        def __init__(self):
            nn.Module.__init__(self)  # the class is what tells torchvision's convention, not its layers
            self.inner = SquareFinder()

        def forward(self, x):
            return [{**d, "labels": d["labels"] + 1} for d in self.inner(x)]

    return OneBasedFinder().eval()


def test_torchvision_detector_labels_count_from_one(tmp_path):
    from edgeopt.engine.holdout import metric_for
    from edgeopt.inputs.model_io import Inputs

    s = resolve(yolo_set(tmp_path / "set"))
    net = _one_based_finder()
    ex = Inputs.of(torch.zeros(1, 3, SIZE, SIZE), net)
    assert score(torch_predictions(net, s.eval, 4), s.eval)[0] < 50.0  # read as they are: every class one off
    s.eval.metric = metric_for(None, s.eval, net, ex)
    assert s.eval.metric.label_offset == 1 and "1..N" in s.eval.metric.meaning
    assert score(torch_predictions(net, s.eval, 4), s.eval) == (100.0, "map50")
    assert metric_for(None, s.eval, SquareFinder().eval(), ex).label_offset == 0  # other detectors: as they are
    # a data.yaml that numbers the background itself: no shift. Read through resolve_data as optimize reads
    # it (the class names once stayed behind on the reader's batches, and SSDlite scored 2.7 % instead of 98)
    yaml = tmp_path / "set" / "data.yaml"
    yaml.write_text(yaml.read_text().replace("names:\n  0: red\n  1: green\n",
                                             "names:\n  0: background\n  1: red\n  2: green\n"))
    shifted = resolve(yaml)
    assert shifted.eval.class_names == ["background", "red", "green"]
    assert metric_for(None, shifted.eval, net, ex).label_offset == 0


def test_retraining_goes_on_without_fine_tuning_a_detector_that_cannot_be_distilled(tmp_path, monkeypatch):
    """--retrain with a torchvision-style detector: its training split is dropped (the report says why), and the
    run goes on to the search instead of refusing for want of training data."""
    import edgeopt
    from edgeopt.engine import pipeline

    class Reached(Exception):
        pass

    def search(prep, *args, **kwargs):
        assert prep.splits.train is None and "non-maximum suppression" in prep.splits.untrained
        raise Reached

    monkeypatch.setattr(pipeline, "run_search", search)
    with pytest.raises(Reached):
        edgeopt.optimize(SquareFinder().eval(), torch.zeros(1, 3, SIZE, SIZE), data=str(yolo_set(tmp_path / "set")),
                         retrain=True, out_dir=tmp_path / "out", target="local", data_options={"workers": 0})
