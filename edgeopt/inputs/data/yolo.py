"""A labelled detection set in the Ultralytics/YOLO layout: `data.yaml` (`path`, `train`, `val`, `names`),
images under `images/...`, one `labels/....txt` per image with a line `class cx cy w h` (normalised to 0..1) per
box. Read as Ultralytics reads it: the label file of `<root>/images/val/a.jpg` is `<root>/labels/val/a.txt`, and an
image without a label file is background (no objects). Images are resized to the model's input (no crop) and
scaled to 0..1 (unless --mean/--std), boxes become x1 y1 x2 y2 pixels of that input, the target a detector's
metric reads (`{"boxes", "labels"}` per image: mAP). The `val` split is the held-out set; calibration is a
seeded sample of `train`. The whole of `train` (less any image also in `val`) is the training split, unlabelled:
under --retrain a compressed detector is distilled from the original's outputs on it. Its box labels are not read
for training: a detector's own loss (anchor assignment, box and class terms) is its library's, not ours."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from edgeopt.errors import DataError
from edgeopt.inputs.data.batches import Batches, DataSplits, StreamBatches
from edgeopt.inputs.data.folder import IMAGE_SUFFIXES, ImageFiles, file_list_hash
from edgeopt.inputs.data.transforms import Preprocess, eval_transform
from edgeopt.yamlfile import load_mapping

YAML_SUFFIXES = (".yaml", ".yml")
EDGE_TOLERANCE = 1e-3  # normalised coordinates written with rounding may pass the image edge by this much


def class_names(doc: dict, where: Path) -> list[str]:
    names = doc.get("names")
    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise DataError(f"--data {where}: `names` keys must be class indices 0..n-1") from None
        if keys != list(range(len(keys))):
            raise DataError(f"--data {where}: `names` keys must be the class indices 0..{len(keys) - 1}")
        names = [str(names[k] if k in names else names[str(k)]) for k in keys]
    if not isinstance(names, list) or not names:
        raise DataError(f"--data {where}: `names` must list the class names (a list, or a dict index: name)")
    nc = doc.get("nc")
    if nc is not None and nc != len(names):
        raise DataError(f"--data {where}: nc is {nc} but `names` has {len(names)} classes")
    return [str(n) for n in names]


def split_images(root: Path, entry, key: str, where: Path) -> list[Path]:
    """The images of one split: a folder (searched recursively), a .txt list of image paths, or a list of
    either (paths relative to `root`)."""
    if entry is None:
        raise DataError(f"--data {where}: no `{key}` split (Ultralytics' data.yaml names train and val)")
    files: list[Path] = []
    for item in entry if isinstance(entry, list) else [entry]:
        p = Path(str(item))
        p = p if p.is_absolute() else root / p
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        elif p.suffix == ".txt" and p.is_file():
            for line in p.read_text().splitlines():
                if line.strip():
                    f = Path(line.strip())
                    files.append(f if f.is_absolute() else root / f)
        else:
            raise DataError(f"--data {where}: `{key}` {p} is neither a folder of images nor a .txt list of them")
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DataError(f"--data {where}: `{key}` lists an image that does not exist: {missing[0]}")
    if not files:
        raise DataError(f"--data {where}: `{key}` has no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last `images` folder in the path becomes `labels`, the suffix `.txt`."""
    parts = list(image.parts)
    if "images" not in parts:
        return image.with_suffix(".txt")
    i = len(parts) - 1 - parts[::-1].index("images")
    return Path(*parts[:i], "labels", *parts[i + 1:]).with_suffix(".txt")


def orphan_labels(images: list[Path]) -> list[Path]:
    """Label files in the split's label folders that belong to no image of the split."""
    wanted = {label_path(f) for f in images}
    folders = {p.parent for p in wanted}
    return sorted(t for d in folders if d.is_dir() for t in d.glob("*.txt") if t not in wanted)


def read_labels(path: Path, nc: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(boxes (k, 4) normalised cx cy w h, labels (k,)) of one label file; none when it does not exist
    (background). Polygon lines (class x1 y1 x2 y2 ...) count as their bounding box, as in Ultralytics."""
    if not path.is_file():
        return torch.zeros((0, 4)), torch.zeros(0, dtype=torch.long)
    boxes, labels = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise DataError(f"label file {path} line {n}: {line.strip()[:60]!r} is not numbers "
                            "(expected `class cx cy w h`, normalised to 0..1)") from None
        if len(values) != 5 and (len(values) < 7 or len(values) % 2 == 0):
            raise DataError(f"label file {path} line {n}: {len(values)} values, expected `class cx cy w h` "
                            "(5) or a polygon `class x1 y1 x2 y2 ...`")
        cls = values[0]
        if cls != int(cls) or not 0 <= cls < nc:
            raise DataError(f"label file {path} line {n}: class {fields[0]} is outside the {nc} classes "
                            f"0..{nc - 1} of `names`")
        if len(values) == 5:
            cx, cy, w, h = values[1:]
        else:
            xs, ys = values[1::2], values[2::2]
            cx, cy, w, h = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)
        lo, hi = -EDGE_TOLERANCE, 1 + EDGE_TOLERANCE
        if w <= 0 or h <= 0 or not (lo <= cx - w / 2 and cx + w / 2 <= hi and lo <= cy - h / 2 and cy + h / 2 <= hi):
            raise DataError(f"label file {path} line {n}: box cx {cx:g} cy {cy:g} w {w:g} h {h:g} is outside "
                            "the image (normalised coordinates must lie in 0..1, sizes above 0)")
        boxes.append([cx, cy, w, h])
        labels.append(int(cls))
    return torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(labels, dtype=torch.long)


class BoxFiles(ImageFiles):
    """(image, {"boxes": x1 y1 x2 y2 pixels of the model's input, "labels"}) per image; `targets`: per image
    (boxes (k, 4) normalised cx cy w h, labels (k,)), as `read_labels` gives them."""

    def __init__(self, files: list[Path], targets: list, transform, mode: str, size: tuple[int, int]):
        super().__init__(files, targets, transform, mode)
        self.size = size

    def load_target(self, i: int) -> dict:
        cxcywh, labels = self.targets[i]
        h, w = self.size
        c = cxcywh.clamp(0, 1)
        boxes = torch.stack([c[:, 0] - c[:, 2] / 2, c[:, 1] - c[:, 3] / 2, c[:, 0] + c[:, 2] / 2,
                             c[:, 1] + c[:, 3] / 2], 1).clamp(0, 1) * torch.tensor([w, h, w, h])
        return {"boxes": boxes, "labels": labels}


def decode_boxes(ds: BoxFiles, batch_size: int, labelled: bool, progress=None) -> Batches:
    """Decode into memory, batch by batch; targets (lists of box dicts) kept when `labelled`."""
    items = []
    for start in range(0, len(ds), batch_size):
        samples = [ds[i] for i in range(start, min(start + batch_size, len(ds)))]
        x = torch.stack([s[0] for s in samples])
        items.append((x, [s[1] for s in samples] if labelled else None))
        if progress is not None:
            progress.advance(len(samples))
    return Batches(items)


def yolo_splits(path: Path, pre: Preprocess, seed: int = 0, batch_size: int = 32, calib_size: int = 300,
                progress=None, workers: int | None = None) -> DataSplits:
    """Calibration (a seeded sample of `train`, unlabelled) and held-out evaluation (`val`, with boxes), both
    in memory; the training split streamed from `train`, unlabelled (see the module's note). One-line
    DataErrors for the layout's faults."""
    doc = load_mapping(path, "--data", DataError, "a data.yaml mapping (path, train, val, names)")
    root = Path(str(doc.get("path") or "."))
    root = root if root.is_absolute() else (path.parent / root)
    names = class_names(doc, path)
    train = split_images(root, doc.get("train"), "train", path)
    val = split_images(root, doc.get("val"), "val", path)
    for files in (train, val):
        orphans = orphan_labels(files)
        if orphans:
            raise DataError(f"--data {path}: label file {orphans[0]} has no image (expected one of "
                            f"{', '.join(IMAGE_SUFFIXES)} with the stem {orphans[0].stem!r} under images/)")
    if not any(label_path(f).is_file() for f in val):  # one missing file is a background image; all, a mistake
        raise DataError(f"--data {path}: no image of `val` has a label file (expected e.g. {label_path(val[0])}: "
                        "the last `images` folder of the path becomes `labels`, the suffix .txt)")
    held_set = set(val)
    train = [f for f in train if f not in held_set]  # an image in both splits is held out, never calibrated on
    if not train:
        raise DataError(f"--data {path}: `train` has no image outside `val` to calibrate on")
    rng = random.Random(seed + 1)
    calib_files = sorted(rng.sample(train, min(calib_size, len(train))))
    transform = eval_transform(pre)
    nc = len(names)
    ev_ds = BoxFiles(val, [read_labels(label_path(f), nc) for f in val], transform, pre.mode, pre.size)
    calib_ds = BoxFiles(calib_files, [read_labels(label_path(f), nc) for f in calib_files], transform, pre.mode,
                        pre.size)
    if progress is not None:
        progress.stage(f"decoding {len(calib_files) + len(val)} images", total=len(calib_files) + len(val))
    calib = decode_boxes(calib_ds, batch_size, False, progress)
    calib.key = file_list_hash([(f, 0) for f in calib_files], root, pre.describe())
    heldout_hash = file_list_hash([(f, 0) for f in val] + [(label_path(f), 1) for f in val if label_path(f).is_file()],
                                  root)
    ev = decode_boxes(ev_ds, batch_size, True, progress)
    ev.key = f"{pre.describe()}|{heldout_hash}"
    ev.class_names = names  # a first class named "background" tells torchvision detectors' labels apart
    ev.num_classes = nc  # a raw head's score channels (measure/detection.py: decode_head)
    tr = StreamBatches(ImageFiles(train, None, transform, pre.mode), batch_size, workers, labelled=False,
                       key=file_list_hash([(f, 0) for f in train], root, pre.describe()))
    boxes = sum(len(t[1]) for t in ev_ds.targets)
    if progress is not None:
        progress.log(f"data: {path} (YOLO layout, {len(names)} classes): {len(val)} held-out images with "
                     f"{boxes} boxes (scored by mAP@0.5, mAP@0.5:0.95 beside it), {len(calib_files)} training "
                     f"images for calibration; {len(train)} for distillation under --retrain (box labels unused)")
    return DataSplits(calib=calib, train=tr, eval=ev, source=f"yolo:{path}", heldout_hash=heldout_hash)
