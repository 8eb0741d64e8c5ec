"""Decide, by reading a file's bytes (never by loading it), whether loading it would run code.

Checkpoints are either torch's zip format, torch's legacy pickle stream, or a raw `pickle.dump`: told apart by
their magic bytes and first opcodes, not by an error message. torch.export archives (.pt2) are not inspected:
`torch.export.load` unpickles records, evaluates symbolic-size expressions and runs guard code from the archive
in more ways than an allow-list can follow, so loading one needs the caller's explicit trust, like a pickle."""

from __future__ import annotations

import io
import pickletools
import zipfile
from pathlib import Path

ZIP_MAGIC = b"PK\x03\x04"
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first object of a pre-1.6 torch.save stream


def checkpoint_format(path: Path) -> str:
    """'zip' (torch.save default), 'torch-legacy' (old torch.save stream), 'pickle' (plain pickle.dump) or
    'unknown'."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if not head or head[:1].decode("latin-1") not in pickletools.code2op:
        return "unknown"
    if head[0] != 0x80:  # protocol 0/1 has no PROTO header: only a stream that parses to its STOP is a pickle
        with open(path, "rb") as f:
            if not _parses(f):
                return "unknown"
    try:
        for op, arg, _pos in pickletools.genops(io.BytesIO(head)):
            if op.name in ("LONG1", "LONG4", "INT", "LONG") and arg == TORCH_LEGACY_MAGIC:
                return "torch-legacy"
            if op.name not in ("PROTO", "FRAME"):
                break
    except Exception:  # a truncated head still identifies as pickle by its first opcode
        pass
    return "pickle"


def _parses(stream, count: int = 1) -> bool:
    try:
        for _ in range(count):
            for _op in pickletools.genops(stream):
                pass
        return True
    except Exception:
        return False


def holds_objects(path: Path, fmt: str) -> bool:
    """A checkpoint that torch's weights-only loader refused: True when its pickle is intact (so the refusal was
    about the classes it names: a full pickle), False when the file is damaged."""
    if fmt == "zip":
        try:
            with zipfile.ZipFile(path) as z:
                pkl = [i for i in z.infolist() if i.filename.endswith("/data.pkl") or i.filename == "data.pkl"]
                return bool(pkl) and _parses(io.BytesIO(z.read(pkl[0])))
        except (zipfile.BadZipFile, OSError):
            return False
    with open(path, "rb") as f:  # legacy stream: magic, protocol, sys info, then the object itself
        return _parses(f, count=4)
