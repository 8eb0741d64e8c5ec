"""Labelled image sets generated offline for benchmarks/real_models.py, written in the layouts users have:
scikit-learn's 8x8 digits (bundled with the library, nothing downloaded) upsampled into

- a detection set: digits pasted on grey-noise canvases with their boxes, in the Ultralytics/YOLO layout
  (`data.yaml`, `images/{train,val}`, `labels/{train,val}/*.txt` with `class cx cy w h` normalised);
- a classification set: one digit per image at a chosen size, jittered in scale and position, in the image
  folder layout (one sub-folder per class), a training folder and a held-out folder;
- a segmentation set: filled shapes (disc, square, triangle) on noisy canvases with per-pixel class masks
  (0 background, 1..3 the shape), in the mask-folder layout (`images/` + `masks/`, same file stems).

The digits themselves are split once (seeded): the ones pasted into training images are never those of the
held-out images. Every generator is deterministic for a seed and writes PNGs only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("disc", "square", "triangle")  # segmentation classes 1..3 (0 is the background)


def digit_split(seed: int = 0, test_fraction: float = 0.33) -> tuple[tuple[np.ndarray, np.ndarray],
                                                                       tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's digits as uint8 8x8 images (0..255) with labels, split (seeded) into train and test."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.clip(d.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    order = np.random.default_rng(seed).permutation(len(images))
    cut = int(len(images) * (1 - test_fraction))
    tr, te = order[:cut], order[cut:]
    return (images[tr], d.target[tr]), (images[te], d.target[te])


def _digit_patch(img8: np.ndarray, size: int) -> np.ndarray:
    """One 8x8 digit upsampled to size x size (bicubic), uint8."""
    return np.asarray(Image.fromarray(img8).resize((size, size), Image.BICUBIC))


def _canvas(rng: np.random.Generator, size: int) -> np.ndarray:
    """A dark, slightly noisy background (float32, 0..255)."""
    base = rng.uniform(0, 40)
    return np.clip(base + rng.normal(0, 8, (size, size)), 0, 255).astype(np.float32)


def _overlaps(box, boxes, gap: int = 2) -> bool:
    x1, y1, x2, y2 = box
    return any(x1 < b[2] + gap and b[0] < x2 + gap and y1 < b[3] + gap and b[1] < y2 + gap for b in boxes)


def detection_image(digits: tuple[np.ndarray, np.ndarray], rng: np.random.Generator, size: int = 160,
                    max_objects: int = 4, min_px: int = 24, max_px: int = 56) -> tuple[np.ndarray, list]:
    """One canvas (size x size x 3, uint8) with 1..max_objects non-overlapping digits and their boxes
    [(class, x1, y1, x2, y2)] in pixels, tight around each digit's ink."""
    images, labels = digits
    canvas, boxes = _canvas(rng, size), []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):
            s = int(rng.integers(min_px, max_px + 1))
            x, y = int(rng.integers(0, size - s + 1)), int(rng.integers(0, size - s + 1))
            i = int(rng.integers(len(images)))
            patch = _digit_patch(images[i], s).astype(np.float32) * rng.uniform(0.7, 1.0)
            ys, xs = np.nonzero(patch > 40)
            if len(xs) == 0:
                continue
            box = (x + int(xs.min()), y + int(ys.min()), x + int(xs.max()) + 1, y + int(ys.max()) + 1)
            if _overlaps(box, [b[1:] for b in boxes]):
                continue
            region = canvas[y:y + s, x:x + s]
            canvas[y:y + s, x:x + s] = np.maximum(region, patch)
            boxes.append((int(labels[i]), *box))
            break
    rgb = np.repeat(canvas[..., None], 3, axis=2) * rng.uniform(0.8, 1.0, 3)  # a faint colour cast
    return np.clip(rgb, 0, 255).astype(np.uint8), boxes


def write_detection_set(root: Path, n_train: int = 1500, n_val: int = 600, size: int = 160, seed: int = 0) -> Path:
    """The YOLO-layout detection set under `root`; returns its data.yaml."""
    root = Path(root)
    train_digits, test_digits = digit_split(seed)
    rng = np.random.default_rng(seed + 1)
    for split, n, digits in (("train", n_train, train_digits), ("val", n_val, test_digits)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            img, boxes = detection_image(digits, rng, size)
            Image.fromarray(img).save(root / "images" / split / f"{k:05d}.png")
            lines = [f"{c} {(x1 + x2) / 2 / size:.6f} {(y1 + y2) / 2 / size:.6f} {(x2 - x1) / size:.6f} "
                     f"{(y2 - y1) / size:.6f}" for c, x1, y1, x2, y2 in boxes]
            (root / "labels" / split / f"{k:05d}.txt").write_text("\n".join(lines) + "\n")
    names = ", ".join(f"'{d}'" for d in range(10))
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: [{names}]\n")
    return data


def read_yolo_split(root: Path, split: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """A split of the set written above: images (N, H, W, 3) uint8 and per image an (k, 5) array of
    `class cx cy w h` (normalised), as in its label files."""
    files = sorted((Path(root) / "images" / split).glob("*.png"))
    imgs = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    labels = []
    for f in files:
        txt = (Path(root) / "labels" / split / f"{f.stem}.txt").read_text().split()
        labels.append(np.asarray(txt, np.float32).reshape(-1, 5))
    return imgs, labels


def classification_image(img8: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """One digit on a noisy size x size canvas, scaled to 60..100 % of it and shifted at random (uint8, grey)."""
    canvas = _canvas(rng, size)
    s = int(size * rng.uniform(0.6, 1.0))
    x, y = int(rng.integers(0, size - s + 1)), int(rng.integers(0, size - s + 1))
    canvas[y:y + s, x:x + s] = np.maximum(canvas[y:y + s, x:x + s], _digit_patch(img8, s).astype(np.float32))
    return np.clip(canvas, 0, 255).astype(np.uint8)


def write_classification_set(root: Path, size: int = 96, train_copies: int = 2, test_copies: int = 2,
                             seed: int = 0, limit: int | None = None) -> tuple[Path, Path]:
    """Image folders `root/train/<class>/` and `root/test/<class>/` (jittered copies of the train and test
    digits; `limit`: only the first digits of each split); returns both folders."""
    root = Path(root)
    rng = np.random.default_rng(seed + 2)
    splits = zip(("train", "test"), digit_split(seed), (train_copies, test_copies), strict=True)
    for split, (images, labels), copies in splits:
        for c in range(10):
            (root / split / str(c)).mkdir(parents=True, exist_ok=True)
        for k in range(copies):
            for i, (img8, lab) in enumerate(zip(images[:limit], labels[:limit], strict=True)):
                img = classification_image(img8, rng, size)
                Image.fromarray(img).save(root / split / str(lab) / f"{k}_{i:04d}.png")
    return root / "train", root / "test"


def segmentation_pair(rng: np.random.Generator, size: int = 128, max_shapes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A canvas (size x size x 3, uint8) with 1..max_shapes filled shapes of random colours, and its mask
    (size x size, uint8: 0 background, 1 disc, 2 square, 3 triangle; later shapes cover earlier ones)."""
    img = Image.fromarray(np.repeat(_canvas(rng, size)[..., None], 3, axis=2).astype(np.uint8))
    mask = Image.new("L", (size, size), 0)
    draw_i, draw_m = ImageDraw.Draw(img), ImageDraw.Draw(mask)
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        cls = int(rng.integers(1, len(SHAPES) + 1))
        s = int(rng.integers(size // 6, size // 2.5))
        x, y = int(rng.integers(0, size - s)), int(rng.integers(0, size - s))
        colour = tuple(int(v) for v in rng.integers(80, 256, 3))
        if cls == 1:
            shape = ("ellipse", [x, y, x + s, y + s])
        elif cls == 2:
            shape = ("rectangle", [x, y, x + s, y + s])
        else:
            shape = ("polygon", [(x + s // 2, y), (x, y + s), (x + s, y + s)])
        getattr(draw_i, shape[0])(shape[1], fill=colour)
        getattr(draw_m, shape[0])(shape[1], fill=cls)
    rgb = np.asarray(img).astype(np.float32) + rng.normal(0, 6, (size, size, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8), np.asarray(mask)


def write_segmentation_set(root: Path, n_train: int = 800, n_test: int = 400, size: int = 128,
                           seed: int = 0) -> tuple[Path, Path]:
    """Mask folders `root/train/{images,masks}` and `root/test/{images,masks}`; returns both folders."""
    root = Path(root)
    rng = np.random.default_rng(seed + 3)
    for split, n in (("train", n_train), ("test", n_test)):
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            img, mask = segmentation_pair(rng, size)
            Image.fromarray(img).save(root / split / "images" / f"{k:05d}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"{k:05d}.png")
    return root / "train", root / "test"


def read_folder(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """An image folder of class sub-folders as (N, H, W) uint8 grey images and (N,) labels."""
    xs, ys = [], []
    for c in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        for f in sorted(c.glob("*.png")):
            xs.append(np.asarray(Image.open(f).convert("L")))
            ys.append(int(c.name))
    return np.stack(xs), np.asarray(ys)


def read_masks(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """A mask folder pair as (N, H, W, 3) uint8 images and (N, H, W) uint8 masks."""
    files = sorted((Path(root) / "images").glob("*.png"))
    imgs = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    masks = np.stack([np.asarray(Image.open(Path(root) / "masks" / f.name)) for f in files])
    return imgs, masks
