"""A COCO JSON file with its images folder gives labelled boxes scored by mAP@0.5 and mAP@0.5:0.95; the file's
faults are one-line DataErrors."""

import json

import numpy as np
import pytest
from PIL import Image
from test_yolo import SIZE, SquareFinder

from edgeopt.errors import DataError
from edgeopt.inputs.data import data_form, resolve_data
from edgeopt.measure.accuracy import default_metric, score, torch_predictions

CATEGORIES = [{"id": 3, "name": "red"}, {"id": 7, "name": "green"}]  # sparse ids, as COCO's own


def coco_set(root, n=6, folder="val2017"):
    """COCO's layout: annotations/instances_<folder>.json and <folder>/*.png, one coloured square per image
    (red: category 3 -> class 0, green: category 7 -> class 1) and one image without objects."""
    rng = np.random.default_rng(1)
    images, annotations = [], []
    for i in range(n):
        a = np.zeros((SIZE, SIZE, 3), np.uint8)
        if i < n - 1:
            w, h = (int(v) for v in rng.integers(6, 14, 2))
            x, y = (int(v) for v in rng.integers(0, SIZE - 14, 2))
            cls = i % 2
            a[y:y + h, x:x + w, cls] = 255
            annotations.append({"id": i, "image_id": 100 + i, "category_id": CATEGORIES[cls]["id"],
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
        f = root / folder / f"{i:04d}.png"
        f.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(f)
        images.append({"id": 100 + i, "file_name": f.name, "width": SIZE, "height": SIZE})
    doc = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    path = root / "annotations" / f"instances_{folder}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def resolve(path):
    return resolve_data("module", str(path), None, None, None, (3, SIZE, SIZE), None)


def test_coco_json_gives_map_at_both_thresholds(tmp_path):
    path = coco_set(tmp_path)
    assert data_form(path) == "coco"
    s = resolve(path)
    assert s.source.startswith("coco:") and s.train is None and len(s.eval) == 6 and not s.calib.labelled
    targets = [t for _, y in s.eval.items for t in y]
    assert [t["labels"].tolist() for t in targets] == [[0], [1], [0], [1], [0], []]  # ids 3, 7 -> 0, 1
    s.eval.metric = default_metric(s.eval)
    assert s.eval.metric.name == "map50" and s.eval.metric.num_classes == 2
    got = score(torch_predictions(SquareFinder().eval(), s.eval, 4), s.eval)
    assert got == (100.0, "map50") and got.metrics == {"map50": 100.0, "map50_95": 100.0}
    assert score(torch_predictions(SquareFinder(blind=True).eval(), s.eval, 4), s.eval)[0] == 0.0


def _break(path, how):
    doc = json.loads(path.read_text())
    if how == "category":
        doc["annotations"][0]["category_id"] = 5
    elif how == "outside":
        doc["annotations"][0]["bbox"] = [SIZE - 4, 2, 10, 10]
    elif how == "missing-image":
        doc["images"][1]["file_name"] = "ghost.png"
    elif how == "empty":
        doc = {"images": [], "annotations": [], "categories": CATEGORIES}
    elif how == "no-boxes":
        doc["annotations"] = []
    elif how == "unknown-image":
        doc["annotations"][0]["image_id"] = 999
    elif how == "not-json":
        path.write_text("{images: [")
        return
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("how,msg", [
    ("category", "category_id 5, outside the 2 categories"), ("outside", "lies outside its image"),
    ("missing-image", r"ghost.png \(images\[1\]\) does not exist"), ("empty", "lists no images"),
    ("no-boxes", "has no boxes"), ("unknown-image", "image_id 999"), ("not-json", "not a readable COCO JSON"),
])
def test_coco_faults_are_one_line(tmp_path, how, msg):
    path = coco_set(tmp_path)
    _break(path, how)
    with pytest.raises(DataError, match=msg) as e:
        resolve(path)
    assert "\n" not in str(e.value)


def test_images_not_found_names_where_it_looked(tmp_path):
    path = coco_set(tmp_path)
    (tmp_path / "val2017").rename(tmp_path / "elsewhere")
    with pytest.raises(DataError, match="is in none of"):
        resolve(path)
