"""Decide, by reading a file's bytes (never by loading it), whether loading it would run code.

torch.export archives (.pt2) look safe but `torch.export.load` unpickles with weights_only=False every weight or
constant marked `use_pickle`, every custom/opaque object, the legacy weight/constant files and the sample inputs
when they are not plain tensors, and it loads native AOTInductor libraries. Checkpoints are either torch's zip
format, torch's legacy pickle stream, or a raw `pickle.dump`: told apart by their magic bytes and first opcodes,
not by an error message."""

from __future__ import annotations

import io
import json
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


def _loads_weights_only(data: bytes) -> bool:
    import torch

    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        return True
    except Exception:
        return False


def _records(z: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """Archive names without the archive's top folder (torch writes every record under one root)."""
    out = {}
    for info in z.infolist():
        _, _, rest = info.filename.partition("/")
        out[rest or info.filename] = info
    return out


def _config_entries(z: zipfile.ZipFile, recs: dict, name: str) -> dict:
    if name not in recs:
        return {}
    try:
        return json.loads(z.read(recs[name])).get("config", {}) or {}
    except (ValueError, AttributeError):
        return {"<config>": {"use_pickle": True, "path_name": name}}  # unreadable: let nothing through


def pt2_pickle_reasons(path: Path) -> list[str]:
    """Why loading this torch.export archive would unpickle or run native code; [] when it would not.
    Raises zipfile.BadZipFile for a file that is not an archive."""
    reasons: list[str] = []
    with zipfile.ZipFile(path) as z:
        recs = _records(z)
        models = [n[len("models/"):-len(".json")] for n in recs if n.startswith("models/") and n.endswith(".json")]
        if any(n.startswith("data/aotinductor/") for n in recs):
            reasons.append("it contains AOTInductor native code")
        if not models:
            reasons.append("it uses the pre-2.8 torch.export format, loaded through pickle")
        for m in models:
            for legacy in (f"data/weights/{m}.pt", f"data/constants/{m}.pt", f"data/sample_inputs/{m}.pt"):
                if legacy in recs and not _loads_weights_only(z.read(recs[legacy])):
                    reasons.append(f"{legacy} is a pickle of more than tensors")
            for kind in ("weights", "constants"):
                for fqn, meta in _config_entries(z, recs, f"data/{kind}/{m}_{kind}_config.json").items():
                    name = str(meta.get("path_name", ""))
                    if meta.get("use_pickle") or name.startswith(("custom_obj", "opaque_obj")):
                        reasons.append(f"{kind} entry {fqn!r} is stored as a pickle")
    return reasons
