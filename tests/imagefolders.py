"""Image folders the data tests read: one sub-folder per class of small random images, each class brighter than
the one before, so a model (or a split) can tell them apart."""

import numpy as np


def class_folders(root, classes=("a", "b", "c"), n=10, size=(12, 10), mode="RGB", spread=(60, 90),
                  name="{i:03d}.png"):
    """`n` images of `size` (width, height) per class under `root/<class>/`; pixel values of class k are
    uniform in [step * k, step * k + width) for `spread` = (width, step)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    width, step = spread
    for k, cls in enumerate(classes):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            a = (rng.random(shape) * width + step * k).astype(np.uint8)
            Image.fromarray(a, mode=mode).save(root / cls / name.format(i=i))
    return root
