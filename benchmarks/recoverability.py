"""What a cut costs once edgeopt's own fine-tuning has recovered what it can, on the trained real-library
classifiers of `real_models.py` (its cached weights and data).

`real_models.py` reports the level `optimize` settles at under a 1 pp budget; `speed_ceiling.py` the latency a cut
buys. This joins the two for the cuts a speed goal needs: each model cut by depth (its k cheapest blocks removed,
the dense layers after them re-solved) or by channels (`prune` with reconstruction), then fine-tuned by the
`fine_tune` technique as `optimize --retrain` runs it (distillation from the original, kind and rate screened on a
slice of the training data) on the training split `optimize` reads, for `--epochs` epochs and then as many again
(the search's "train longer", kept only where it scored higher on a slice of the training data). The cuts are
ranked (depth) and reconstructed (channels) on calibration images as `optimize` draws them for a classifier: 30
training images of each class. Every figure is scored on all held-out images, about 600 (nothing is selected on
them here; `optimize` splits them into a selection part and a 179-image test part).

    python benchmarks/real_models.py --train-only --models deit     # the weights and data, once
    python benchmarks/recoverability.py --models deit --cuts depth2,depth4,depth6,prune-recon50 --epochs 16
    python benchmarks/recoverability.py --models deit --cuts depth2,depth3,depth4,depth5,depth6 --gradual

`--gradual` cuts each level from the fine-tuned level before it, as `optimize` climbs a family from the level it
holds (list the levels one climb step apart, as the search's: a block, or ten points of channels); each level's
row is scored after its own fine-tunings.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import edgeopt  # noqa: E402
from benchmarks import real_models as rm  # noqa: E402
from benchmarks import synthetic_sets as sets  # noqa: E402

BATCH = 32


def _tensors(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A class-folder split as edgeopt reads it by default: grey digits repeated to 3 channels, mean/std 0.5."""
    imgs, ys = sets.read_folder(folder)
    return rm._normalise(torch.from_numpy(imgs)[:, None].repeat(1, 3, 1, 1)), torch.from_numpy(ys).long()


def _batches(x: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, len(x), BATCH)]


def top1(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 128]).argmax(1) for i in range(0, len(x), 128)])
    return round(100.0 * float((pred == y).float().mean()), 2)


def calibration(x: torch.Tensor, y: torch.Tensor, per_class: int = 30) -> list:
    """`per_class` images of each class, interleaved, in batches (optimize's stratified calibration sample)."""
    picks = [torch.nonzero(y == c).flatten()[:per_class] for c in y.unique()]
    order = torch.stack([p[:min(len(q) for q in picks)] for p in picks], 1).flatten()
    return _batches(x[order], y[order])


def level_of(name: str) -> tuple[str, int]:
    """("depth", K) or ("prune-recon", R) of a cut's name."""
    return ("depth", int(name[5:])) if name.startswith("depth") else ("prune-recon", int(name[11:]))


def cut(model: torch.nn.Module, example: torch.Tensor, name: str, calib: list, held: str | None = None
        ) -> torch.nn.Module:
    """`depthK`: the K residual blocks cheapest on `calib` removed; `prune-reconR`: R % of the channels,
    reconstructed on `calib`. From `held`, a level of the same family `model` was cut to: the rest of the way
    (K minus its blocks; the channels that take what it kept to R % of the original's)."""
    family, level = level_of(name)
    start = level_of(held)[1] if held else 0
    if family == "depth":
        return edgeopt.depth_prune(model, example, calib, blocks=level - start).model
    ratio = 1 - (100 - level) / (100 - start)
    config = {"technique": "prune", "ratio": ratio, "importance": "recon", "reconstruct": True}
    return edgeopt.apply(model, example, config, data=calib).model


def rows_of(name: str, cuts: list[str], epochs: int, cache: Path, gradual: bool = False, log=print) -> list[dict]:
    """One row per cut. `gradual`: each cut made from the fine-tuned level before it of its family (the cuts in
    the order given), as `optimize` climbs a family from the level it holds; else each from the original."""
    bench = rm.BENCHES[name]
    if bench.data != "cls":
        raise SystemExit(f"{name} is not one of the classifiers (this scores top-1 on the digits)")
    paths = rm.data_sets(cache)
    split = rm.classification_split(paths["cls"], paths["cls"].parent / "cls_split")
    weights, _ = rm.trained_weights(bench, paths, cache, log=log)
    original = edgeopt.load_model(bench.spec, input_shape=bench.input_shape, weights=str(weights)).model.eval()
    x_train, y_train = _tensors(split / "train")
    x_held, y_held = _tensors(split / "val")
    train, example = _batches(x_train, y_train), x_train[:1]
    calib = calibration(x_train, y_train)
    base = top1(original, x_held, y_held)
    log(f"# {name}: original {base:.2f} % top-1 on {len(y_held)} held-out images")
    rows, held = [], {}  # the last fine-tuned level of each family: (its name, its model)
    for level in cuts:
        t0 = time.perf_counter()
        before, model = held.get(level_of(level)[0], (None, original)) if gradual else (None, original)
        small = cut(model, example, level, calib, before)
        row = {"model": name, "cut": level + (f" from {before}" if before else ""), "original": base,
               "cut_only": top1(small, x_held, y_held)}
        for rounds in (1, 2):
            # the teacher is copied by the fine-tuning itself: the original stays as it is
            small = edgeopt.apply(small, example, {"technique": "fine_tune", "epochs": epochs, "kind": "auto"},
                                  train_data=train, teacher=original).model
            row[f"after_{rounds * epochs}_epochs"] = top1(small, x_held, y_held)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        row["drop_pp"] = round(base - row[f"after_{2 * epochs}_epochs"], 2)
        log(f"  {level}: {row}")
        rows.append(row)
        held[level_of(level)[0]] = (level, small)
    return rows


def markdown(rows: list[dict], epochs: int) -> str:
    out = [f"| model | cut | original | cut only | after {epochs} epochs | after {2 * epochs} | drop pp | s |",
           "|---|---|---|---|---|---|---|---|"]
    out += [f"| {r['model']} | {r['cut']} | {r['original']:.2f} | {r['cut_only']:.2f} | "
            f"{r[f'after_{epochs}_epochs']:.2f} | {r[f'after_{2 * epochs}_epochs']:.2f} | {r['drop_pp']:+.2f} | "
            f"{r['seconds']:.0f} |" for r in rows]
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="deit")
    ap.add_argument("--cuts", default="depth2,depth4,depth6,prune-recon50")
    ap.add_argument("--epochs", type=int, default=16, help="epochs of each fine-tuning (run twice)")
    ap.add_argument("--gradual", action="store_true",
                    help="cut each level from the fine-tuned level before it of its family, as optimize climbs")
    ap.add_argument("--cache", type=Path, default=rm.DEFAULT_CACHE)
    ap.add_argument("--out", type=Path, default=None, help="writes OUT.json and OUT.md")
    a = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    cuts = [c for c in a.cuts.split(",") if c]
    for c in cuts:
        if not re.fullmatch(r"depth[1-9]\d*|prune-recon[1-9]\d?", c):
            raise SystemExit(f"unknown cut {c!r}: use depthK or prune-reconR, R under 100 (e.g. depth4, "
                             "prune-recon50)")
    if a.gradual:
        for family in {level_of(c)[0] for c in cuts}:
            levels = [level_of(c)[1] for c in cuts if level_of(c)[0] == family]
            if levels != sorted(set(levels)):
                raise SystemExit(f"--gradual climbs: give the {family} cuts deepest last, each once (got "
                                 f"{', '.join(map(str, levels))})")
    rows = [r for name in a.models.split(",") if name
            for r in rows_of(name, cuts, a.epochs, a.cache, gradual=a.gradual)]
    rm.write_results(a.out, {"epochs": a.epochs, "rows": rows}, markdown(rows, a.epochs))


if __name__ == "__main__":
    main()
