"""A labelled detection set as a COCO JSON file (`--data instances_val.json`): `images` (id, file_name, width,
height), `annotations` (image_id, category_id, bbox as x y width height in pixels) and `categories` (id, name).
The images are found next to the file: in its folder, an `images/` folder beside it, the folder named after the
file without its `instances_` prefix (COCO's own `annotations/instances_val2017.json` + `val2017/`), or those
under the parent folder. Category ids become class indices 0..n-1 in increasing id order (the order models
trained on COCO use); crowd regions (`iscrowd: 1`) are left out. Images are resized to the model's input whole
and their boxes with them, as for a data.yaml (data/yolo.py); all are held out and scored by mAP, and, the file
being one split, calibration reads a seeded sample of the same images (pixels only, never their boxes)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import torch

from edgeopt.errors import DataError, first_line
from edgeopt.inputs.data.batches import DataSplits
from edgeopt.inputs.data.folder import file_list_hash
from edgeopt.inputs.data.transforms import Preprocess, eval_transform
from edgeopt.inputs.data.yolo import EDGE_TOLERANCE, BoxFiles, decode_boxes


def is_coco(path: Path) -> bool:
    return path.suffix.lower() == ".json"


def _read(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"--data {path} is not a readable COCO JSON file: {first_line(e, 120, with_type=False)}"
                        ) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) \
            or not isinstance(doc.get("categories"), list) or not isinstance(doc.get("annotations", []), list):
        raise DataError(f"--data {path}: a COCO annotation file is a mapping with lists `images`, `annotations` "
                        "and `categories`")
    if not doc["images"]:
        raise DataError(f"--data {path}: the annotation file lists no images")
    if not doc["categories"]:
        raise DataError(f"--data {path}: the annotation file lists no categories")
    return doc


def image_root(path: Path, first: str) -> Path:
    """The folder the images' file names are relative to (see the module's note)."""
    here = path.parent
    named = path.stem.removeprefix("instances_")
    places = [here, here / "images", here / named, here.parent, here.parent / "images", here.parent / named]
    for p in places:
        if (p / first).is_file():
            return p
    raise DataError(f"--data {path}: image {first!r} (the first listed) is in none of "
                    f"{', '.join(str(p) for p in dict.fromkeys(places))}")


def _int(v, what: str, path: Path) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v):
        raise DataError(f"--data {path}: {what} {v!r} is not an integer")
    return int(v)


def coco_targets(doc: dict, path: Path, root: Path) -> tuple[list[Path], list, list[str]]:
    """(image files, per image (normalised cx cy w h boxes, class indices), class names), checked."""
    for n, c in enumerate(doc["categories"]):
        if not isinstance(c, dict) or "id" not in c:
            raise DataError(f"--data {path}: categories[{n}] has no `id`")
        _int(c["id"], f"categories[{n}] id", path)
    cats = sorted(doc["categories"], key=lambda c: int(c["id"]))
    index = {int(c["id"]): i for i, c in enumerate(cats)}
    names = [str(c.get("name", c["id"])) for c in cats]
    files, sizes, by_id = [], [], {}
    for n, im in enumerate(doc["images"]):
        if not isinstance(im, dict) or "file_name" not in im or "id" not in im:
            raise DataError(f"--data {path}: images[{n}] has no `id` and `file_name`")
        f = root / str(im["file_name"])
        if not f.is_file():
            raise DataError(f"--data {path}: image {f} (images[{n}]) does not exist")
        size = (im.get("width"), im.get("height"))
        if not all(isinstance(v, (int, float)) and v > 0 for v in size):
            from PIL import Image

            try:
                with Image.open(f) as pic:
                    size = pic.size
            except Exception as e:
                raise DataError(f"cannot read image {f}: {first_line(e, with_type=False)}") from None
        by_id[im["id"]] = len(files)
        files.append(f)
        sizes.append(size)
    boxes: list[list] = [[] for _ in files]
    labels: list[list] = [[] for _ in files]
    for n, a in enumerate(doc.get("annotations", [])):
        if not isinstance(a, dict) or a.get("image_id") not in by_id:
            raise DataError(f"--data {path}: annotations[{n}] names image_id "
                            f"{a.get('image_id') if isinstance(a, dict) else a!r}, which `images` does not list")
        cat = _int(a.get("category_id"), f"annotations[{n}] category_id", path)
        if cat not in index:
            raise DataError(f"--data {path}: annotations[{n}] has category_id {cat}, outside the {len(index)} "
                            f"categories ({', '.join(str(k) for k in sorted(index)[:8])}"
                            f"{' ...' if len(index) > 8 else ''})")
        if a.get("iscrowd"):
            continue
        bbox = a.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
            raise DataError(f"--data {path}: annotations[{n}] bbox {bbox!r} is not [x, y, width, height]")
        i = by_id[a["image_id"]]
        w_img, h_img = sizes[i]
        x, y, w, h = bbox
        tol = EDGE_TOLERANCE * max(w_img, h_img)
        if w <= 0 or h <= 0 or x < -tol or y < -tol or x + w > w_img + tol or y + h > h_img + tol:
            raise DataError(f"--data {path}: annotations[{n}] bbox {bbox} lies outside its image "
                            f"{files[i].name} ({w_img}x{h_img}), or has no area")
        boxes[i].append([(x + w / 2) / w_img, (y + h / 2) / h_img, w / w_img, h / h_img])
        labels[i].append(index[cat])
    targets = [(torch.tensor(b, dtype=torch.float32).reshape(-1, 4), torch.tensor(c, dtype=torch.long))
               for b, c in zip(boxes, labels, strict=True)]
    return files, targets, names


def coco_splits(path: Path, pre: Preprocess, seed: int = 0, batch_size: int = 32, calib_size: int = 300,
                progress=None) -> DataSplits:
    """Every image held out with its boxes; calibration a seeded sample of the same images, unlabelled."""
    doc = _read(path)
    first = doc["images"][0].get("file_name") if isinstance(doc["images"][0], dict) else None
    if first is None:
        raise DataError(f"--data {path}: images[0] has no `file_name`")
    root = image_root(path, str(first))
    files, targets, names = coco_targets(doc, path, root)
    if not sum(len(t[1]) for t in targets):
        raise DataError(f"--data {path}: the annotation file has no boxes (mAP needs labelled boxes; for "
                        "unlabelled images pass their folder: fidelity)")
    transform = eval_transform(pre)
    rng = random.Random(seed + 1)
    picked = sorted(rng.sample(range(len(files)), min(calib_size, len(files))))
    calib_ds = BoxFiles([files[i] for i in picked], [targets[i] for i in picked], transform, pre.mode, pre.size)
    ev_ds = BoxFiles(files, targets, transform, pre.mode, pre.size)
    if progress is not None:
        progress.stage(f"decoding {len(picked) + len(files)} images", total=len(picked) + len(files))
    calib = decode_boxes(calib_ds, batch_size, False, progress)
    calib.key = file_list_hash([(files[i], 0) for i in picked], root, pre.describe())
    both = Path(os.path.commonpath([root.resolve(), path.resolve().parent]))  # the hash names files relative to it
    heldout_hash = file_list_hash([(f.resolve(), 0) for f in files] + [(path.resolve(), 1)], both)
    ev = decode_boxes(ev_ds, batch_size, True, progress)
    ev.key = f"{pre.describe()}|{heldout_hash}"
    ev.class_names = names  # a first class named "background" tells torchvision detectors' labels apart
    ev.num_classes = len(names)  # a raw head's score channels (measure/detection.py: decode_head)
    if progress is not None:
        progress.log(f"data: {path} (COCO JSON, {len(names)} classes): {len(files)} held-out images with "
                     f"{sum(len(t[1]) for t in targets)} boxes (scored by mAP@0.5, mAP@0.5:0.95 beside it); "
                     f"calibration on {len(picked)} of the same images (pixels only); no fine-tuning from box labels")
    return DataSplits(calib=calib, train=None, eval=ev, source=f"coco:{path}", heldout_hash=heldout_hash)
