"""An image folder (one sub-folder per class, sorted names = class indices) as torch Datasets: images decoded
lazily, one at a time, by DataLoader workers. The held-out split is stratified per class and seeded (the same
files on every rerun, identified by a hash of their names and contents); calibration is a stratified sample of
the training split, interleaved class by class so that any prefix of it covers every class. A flat folder of
images (no class sub-folders) is unlabelled: calibration and fidelity with the original model, and it says so.
A folder split already (`train/` and `val/` of class sub-folders, the ImageNet layout) keeps its split."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from pathlib import Path

from torch.utils.data import Dataset

from edgeopt.errors import DataError, first_line
from edgeopt.inputs.data.batches import Batches, DataSplits, StreamBatches
from edgeopt.inputs.data.transforms import Preprocess, eval_transform, make_preprocess, train_transform
from edgeopt.report import file_sha256

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# a held-out split whose decoded tensors fit under this is decoded once and kept (evaluated many times);
# a larger one streams from disk on every pass
MEMORY_CAP_BYTES = 256 * 2**20
# file bytes hashed per split to identify its contents (see file_list_hash); past it, size and mtime
CONTENT_HASH_BYTES = 512 * 2**20


class ImageFiles(Dataset):
    """(image, target) per file. Targets are class indices here; other target kinds (masks, boxes) plug in by
    overriding `load_target` and `apply` (which must then transform image and target together)."""

    def __init__(self, files: list[Path], targets: list | None, transform: Callable, mode: str):
        self.files, self.targets, self.transform, self.mode = files, targets, transform, mode

    def __len__(self) -> int:
        return len(self.files)

    def load_image(self, i: int):
        return open_image(self.files[i], self.mode)

    def load_target(self, i: int):
        return self.targets[i]

    def apply(self, image, target):
        return self.transform(image), target

    def __getitem__(self, i: int):
        if self.targets is None:  # unlabelled images: the image alone
            return self.transform(self.load_image(i))
        return self.apply(self.load_image(i), self.load_target(i))


def open_image(path: Path, mode: str | None):
    """The decoded image at `path`, converted to `mode` (None: as stored); a one-line DataError naming the
    file when it cannot be decoded (images and segmentation masks alike)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert(mode) if mode else im.copy()
    except Image.DecompressionBombError as e:  # a header claiming more pixels than PIL will decode
        raise DataError(f"image {path} is too large to decode ({first_line(e, with_type=False)})") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {first_line(e, with_type=False)}") from None
    except ImportError:  # Ultralytics, once imported, replaces PIL's Image.open with one that answers an
        # undecodable file by importing pi_heif, which is not installed with it
        raise DataError(f"cannot read image {path}: not an image Pillow can decode") from None


def flat_images(root: Path) -> list[Path]:
    """The images directly in `root` (sorted), for a folder without class sub-folders."""
    return sorted(f for f in root.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())


def list_folder(root: Path) -> tuple[list[str], list[list[Path]]]:
    """(class names, sorted files per class); one-line DataError for a missing folder or an empty class."""
    if not root.is_dir():
        raise DataError(f"--data {root} is not a folder (expected one sub-folder per class)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"--data {root} has no class sub-folders and no images")
    files = []
    for cls in classes:
        found = sorted(f for f in (root / cls).rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        if not found:
            raise DataError(f"class folder {root / cls} has no images ({', '.join(IMAGE_SUFFIXES)})")
        files.append(found)
    return classes, files


TRAIN_FOLDERS = ("train", "training")
HELD_FOLDERS = ("val", "valid", "validation", "test")  # the first one present is held out


def split_layout(root: Path) -> tuple[Path, Path] | None:
    """(training folder, held-out folder) when `root` is split already, as ImageNet and most datasets are:
    `train/` and `val/` (or `valid/`, `validation/`, `test/`), each with one sub-folder per class. Read as one
    class folder, those would be two classes named "train" and "val", and every score wrong. None for any other
    folder; a one-line DataError for a split layout that is incomplete (no class sub-folders, no train/)."""
    if not root.is_dir():
        return None
    subs = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    if not subs or not set(subs) <= set(TRAIN_FOLDERS + HELD_FOLDERS):
        return None
    train = next((subs[n] for n in TRAIN_FOLDERS if n in subs), None)
    held = next((subs[n] for n in HELD_FOLDERS if n in subs), None)
    if train is None or held is None:
        only = next(iter(subs.values()))
        raise DataError(f"--data {root} holds only {'/, '.join(sorted(subs))}/: a split layout needs train/ and "
                        f"val/ (or test/), each with one sub-folder per class; or point --data at {only}")
    for part in (train, held):
        if not any(p.is_dir() for p in part.iterdir()):
            raise DataError(f"--data {root}: {part.name}/ has no class sub-folders: a split layout needs one "
                            f"sub-folder per class in {train.name}/ and {held.name}/ ({train.name}/<class>/image.png)")
    return train, held


def folder_pairs(root: Path, val_split: float, seed: int) -> tuple[list[str], list, list, str]:
    """(class names, training [(file, label)], held-out [(file, label)], where the held-out part comes from)
    of a class folder: stratified by --val-split, or its own val/ folder in a split layout, whose class indices
    are those of train/'s sorted folder names."""
    layout = split_layout(root)
    if layout is None:
        classes, files = list_folder(root)
        train, held = stratified_split(files, val_split, seed)
        return classes, train, held, f"{val_split:.0%} of each class held out"
    train_root, held_root = layout
    classes, train_files = list_folder(train_root)
    held_classes, held_files = list_folder(held_root)
    unknown = sorted(set(held_classes) - set(classes))
    if unknown:
        raise DataError(f"--data {root}: {held_root.name}/ has class folder(s) {', '.join(unknown[:3])} that "
                        f"{train_root.name}/ lacks (the class indices are {train_root.name}/'s sorted folder names)")
    index = {c: i for i, c in enumerate(classes)}
    train = [(f, i) for i, fs in enumerate(train_files) for f in fs]
    held = [(f, index[c]) for c, fs in zip(held_classes, held_files, strict=True) for f in fs]
    return classes, train, held, f"{held_root.name}/ held out, {train_root.name}/ for calibration and training"


def stratified_split(files: list[list[Path]], val_split: float, seed: int):
    """Per class, a seeded shuffle; the first round(n * val_split) files (at least one when the class has two)
    are held out. Returns (train [(file, label)], held-out [(file, label)]), each in a fixed sorted order."""
    if not 0.0 < val_split < 1.0:
        raise DataError(f"--val-split must be between 0 and 1, got {val_split}")
    rng = random.Random(seed)
    train, held = [], []
    for label, fs in enumerate(files):
        order = list(fs)
        rng.shuffle(order)
        n_val = max(1, int(round(len(order) * val_split))) if len(order) > 1 else 0
        held += [(f, label) for f in sorted(order[:n_val])]
        train += [(f, label) for f in sorted(order[n_val:])]
    return train, held


def stratified_sample(pairs: list[tuple[Path, int]], n: int, seed: int) -> list[tuple[Path, int]]:
    """About n samples, each class in proportion (at least one each), interleaved class by class."""
    by_class: dict[int, list] = {}
    for p in pairs:
        by_class.setdefault(p[1], []).append(p)
    rng = random.Random(seed + 1)
    total = len(pairs)
    picked = []
    for label in sorted(by_class):
        members = by_class[label]
        k = min(len(members), max(1, int(round(n * len(members) / total))))
        picked.append(rng.sample(members, k))
    out = []
    for i in range(max(len(p) for p in picked)):  # round robin: any prefix covers every class
        out += [p[i] for p in picked if i < len(p)]
    return out


def _file_sha256(f: Path) -> str:
    try:
        return file_sha256(f)
    except OSError as e:
        raise DataError(f"cannot read image {f}: {e.strerror or e}") from None


def file_list_hash(pairs: list[tuple[Path, int]], root: Path, extra: str = "",
                   content_bytes: int = CONTENT_HASH_BYTES) -> str:
    """Identifies a split by its files' paths, labels and contents, so that pixels rewritten under the same
    names give another hash (and another cache key). The files are read in order until `content_bytes` of them
    have been hashed; every file after that (a huge training folder) counts by its size and modification time
    only. Contents alone, not times, for the hashed ones: the same files copied elsewhere hash the same."""
    h = hashlib.sha256(extra.encode())
    left = content_bytes
    for f, label in pairs:
        try:
            size = f.stat().st_size
        except OSError as e:
            raise DataError(f"cannot read image {f}: {e.strerror or e}") from None
        if size <= left:
            left -= size
            ident = _file_sha256(f)
        else:
            left = 0  # the files before the bound by content, every one after it by size and time
            ident = f"size {size} mtime {f.stat().st_mtime_ns}"
        h.update(f"{f.relative_to(root).as_posix()}\t{label}\t{ident}\n".encode())
    return h.hexdigest()


def decode(dataset: ImageFiles, batch_size: int, progress=None, workers: int | None = 0) -> Batches:
    """Decode a (small) dataset into memory, batch by batch, with progress."""
    stream = StreamBatches(dataset, batch_size, workers, targets=dataset.targets)
    items = []
    for x, y in stream:
        items.append((x, y))
        if progress is not None:
            progress.advance(len(x))
    return Batches(items)


def image_folder(path, image_size, channels: int, mean=None, std=None, val_split: float = 0.2, seed: int = 0,
                 batch_size: int = 32, *, resize: int | None = None, crop=None, augment: bool = True,
                 calib_size: int = 300, workers: int | None = None, progress=None) -> DataSplits:
    """Training (streamed, reshuffled per epoch by the training loop, augmented unless `augment=False`),
    calibration (a stratified sample of the training split, in memory) and held-out evaluation (fixed
    order; in memory when small, else streamed) of an image folder."""
    root = Path(path)
    pre = make_preprocess((channels, *_hw(image_size)), None, resize, crop, mean, std, augment)
    return folder_splits(root, pre, val_split, seed, batch_size, calib_size, workers, progress)


def folder_splits(root: Path, pre: Preprocess, val_split: float = 0.2, seed: int = 0, batch_size: int = 32,
                  calib_size: int = 300, workers: int | None = None, progress=None) -> DataSplits:
    """image_folder with the preprocessing already validated against the model's input."""
    if root.is_dir() and not any(p.is_dir() for p in root.iterdir()) and flat_images(root):
        return flat_splits(root, pre, val_split, seed, batch_size, calib_size, workers, progress)
    classes, train, held, how = folder_pairs(root, val_split, seed)
    if not held or not train:
        raise DataError(f"--data {root}: too few images to hold out {val_split:.0%} for evaluation")
    calib_pairs = stratified_sample(train, calib_size, seed)

    def dataset(pairs, transform):
        return ImageFiles([f for f, _ in pairs], [y for _, y in pairs], transform, pre.mode)

    clean = eval_transform(pre)
    if progress is not None:
        progress.stage(f"decoding {len(calib_pairs)} calibration images", total=len(calib_pairs))
    calib = decode(dataset(calib_pairs, clean), batch_size, progress, workers)
    calib.key = file_list_hash(calib_pairs, root, pre.describe())
    heldout_hash = file_list_hash(held, root)
    ev_ds = dataset(held, clean)
    ev_key = hashlib.sha256(f"{pre.describe()}\n{heldout_hash}".encode()).hexdigest()  # files read once
    if len(held) * pre.channels * pre.size[0] * pre.size[1] * 4 <= MEMORY_CAP_BYTES:
        if progress is not None:
            progress.stage(f"decoding {len(held)} held-out images", total=len(held))
        ev = decode(ev_ds, batch_size, progress, workers)
        ev.key = ev_key
    else:
        ev = StreamBatches(ev_ds, batch_size, workers, key=ev_key, targets=ev_ds.targets)
    tr_ds = dataset(train, train_transform(pre))
    tr = StreamBatches(tr_ds, batch_size, workers, key=file_list_hash(train, root, pre.describe() + str(pre.augment)),
                       targets=tr_ds.targets)
    if progress is not None:
        progress.log(f"data: {len(train) + len(held)} images in {len(classes)} classes ({how}); {len(held)} held "
                     f"out ({'in memory' if isinstance(ev, Batches) else 'streamed'}), {len(calib)} for calibration")
    return DataSplits(calib=calib, train=tr, eval=ev, source=f"folder:{root} ({how})", heldout_hash=heldout_hash)


def _hw(v) -> tuple[int, int]:
    if isinstance(v, (int, float)):
        return int(v), int(v)
    v = tuple(v)
    return (int(v[0]), int(v[-1]))


FLAT_NOTE = ("no class sub-folders: unlabelled images, used for calibration and for fidelity with the original "
             "model (no top-1 or mAP: give one sub-folder per class, or a data.yaml with boxes)")


def flat_splits(root: Path, pre: Preprocess, val_split: float = 0.2, seed: int = 0, batch_size: int = 32,
                calib_size: int = 300, workers: int | None = None, progress=None) -> DataSplits:
    """A flat folder of unlabelled images: a seeded held-out share (scored by fidelity), calibration from the
    rest; no training split (fine-tuning needs labels or a teacher's data the search does not take from here)."""
    files = flat_images(root)
    if not 0.0 < val_split < 1.0:
        raise DataError(f"--val-split must be between 0 and 1, got {val_split}")
    order = list(files)
    random.Random(seed).shuffle(order)
    n_val = max(1, int(round(len(order) * val_split)))
    held, train = sorted(order[:n_val]), sorted(order[n_val:])
    if not train:
        raise DataError(f"--data {root}: too few images to hold out {val_split:.0%} for evaluation")
    calib_files = sorted(random.Random(seed + 1).sample(train, min(calib_size, len(train))))
    clean = eval_transform(pre)
    if progress is not None:
        progress.stage(f"decoding {len(calib_files) + len(held)} images", total=len(calib_files) + len(held))
    calib = decode(ImageFiles(calib_files, None, clean, pre.mode), batch_size, progress, workers)
    calib.key = file_list_hash([(f, 0) for f in calib_files], root, pre.describe())
    heldout_hash = file_list_hash([(f, 0) for f in held], root)
    ev = decode(ImageFiles(held, None, clean, pre.mode), batch_size, progress, workers)
    ev.key = hashlib.sha256(f"{pre.describe()}\n{heldout_hash}".encode()).hexdigest()
    if progress is not None:
        progress.log(f"data: {len(files)} images in {root}, {FLAT_NOTE}; {len(held)} held out, {len(calib)} for "
                     "calibration")
    return DataSplits(calib=calib, train=None, eval=ev, source=f"folder:{root} ({FLAT_NOTE})",
                      heldout_hash=heldout_hash)
