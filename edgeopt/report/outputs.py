"""Where edgeopt may write. Never over a file the user gave it (model, weights, data, config); into an output
folder only when the folder is new, empty, or one edgeopt wrote before (it holds the `.edgeopt` marker), so a
user's own `model.onnx` in `--out DIR` is never replaced. Every command checks here before it loads or writes
anything; each refusal is one line naming the file."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from edgeopt.errors import ConfigError
from edgeopt.registry import split_ref

MARKER = ".edgeopt"  # written into every output folder edgeopt uses: it may replace the files there
MARKER_TEXT = "written by edgeopt: edgeopt may replace the files in this folder\n"
RUN_CONFIG_HEADER = "# edgeopt run config"  # how run.yaml starts: a folder from before the marker existed


def spec_path(spec) -> Path | None:
    """The file or folder a model / data / metric spec names, when it names one on disk: `m.pt2`, `w.pth`,
    `file.py:factory?k=v` -> file.py, `./images`; None for names (`demo`, `torchvision:NAME`, `pkg.mod:fn`)."""
    if spec is None or not isinstance(spec, (str, os.PathLike)):
        return None
    text = str(spec).split("?", 1)[0].strip()
    if not text:
        return None
    if Path(text).exists():
        return Path(text)
    target = split_ref(text)[0]  # file.py:factory
    return Path(target) if target and Path(target).is_file() else None


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _within(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def _inputs(inputs: Mapping[str, object]) -> list[tuple[str, Path]]:
    return [(label, p) for label, spec in inputs.items() if (p := spec_path(spec)) is not None]


def refuse_overwrite(outputs: Iterable[Path | str | None], inputs: Mapping[str, object]) -> None:
    """ConfigError when writing `outputs` would replace one of the `inputs` (label -> path or spec, e.g.
    {"--weights": "w.bin"}); an output under an input folder counts too."""
    given = _inputs(inputs)
    for out in outputs:
        if out is None:
            continue
        out = Path(out)
        for label, src in given:
            if src.is_dir() and _within(out, src):
                raise ConfigError(f"refusing to write {out}: it lies inside the input folder {src} ({label}); "
                                  "write the output elsewhere")
            if out.exists() and _same(out, src):
                raise ConfigError(f"refusing to write {out}: it is the input file {src} ({label}); edgeopt never "
                                  "writes over its inputs, write the output elsewhere")


def check_folder(folder: Path | str, inputs: Mapping[str, object] | None = None) -> None:
    """Writes nothing. ConfigError unless `folder` may become an edgeopt output folder: new, empty, or holding
    the marker; never one that holds an input of the run (`inputs`: label -> path or spec; edgeopt replaces the
    files in its folder) or lies inside an input folder. A refusal names the folder and one file in it."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {folder} exists and is not a directory")
    for label, src in _inputs(inputs or {}):
        if _within(src, folder):
            raise ConfigError(f"--out {folder} holds an input of this run, {src} ({label}), and edgeopt replaces "
                              "the files in its output folder: choose another --out")
        if src.is_dir() and _within(folder, src):
            raise ConfigError(f"--out {folder} lies inside the input folder {src} ({label}): choose another --out")
    if folder.is_dir() and not (folder / MARKER).is_file():
        entries = sorted(p.name for p in folder.iterdir())
        if entries and not _earlier_run(folder):
            raise ConfigError(f"--out {folder} already holds files edgeopt did not write (e.g. {entries[0]}): give a "
                              "new or empty folder, or one an earlier edgeopt run wrote")


def mark_folder(folder: Path | str) -> Path:
    """Create the folder (when new) and its marker: from now on edgeopt may replace the files in it. Called
    just before the first write, so a run that stops on bad input leaves no folder behind."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / MARKER).is_file():
        from edgeopt.report import write_atomic

        write_atomic(folder / MARKER, MARKER_TEXT)
    return folder


def claim_folder(folder: Path | str, inputs: Mapping[str, object] | None = None) -> Path:
    """`check_folder`, then `mark_folder`."""
    check_folder(folder, inputs)
    return mark_folder(folder)


def _earlier_run(folder: Path) -> bool:
    """A folder a run wrote before the marker existed: its run.yaml starts with edgeopt's own header."""
    try:
        with open(folder / "run.yaml", encoding="utf-8") as f:
            return f.read(len(RUN_CONFIG_HEADER)) == RUN_CONFIG_HEADER
    except (OSError, UnicodeDecodeError):
        return False


def check_out_dir(folder: Path | str, inputs) -> None:
    """`check_folder` for a run: `inputs` is the run config's InputsConfig (model, weights, data, masks, metric)."""
    check_folder(folder, {"--model": inputs.model, "--weights": inputs.weights, "--data": inputs.data,
                          "--masks": inputs.data_options.masks, "--metric": inputs.metric})
