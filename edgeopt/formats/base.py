"""Runtimes: load an artifact and run it. A Session is what benchmarking, verification and
accuracy evaluation use, whatever the runtime.

Exporters: one function per format. Each writes an artifact for a precision and returns what it did.
Exporters never import techniques or each other; the formats table lives in edgeopt.formats."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


@dataclass
class Session:
    runtime: str
    runtime_version: str
    precision_executed: str  # what the runtime really runs, e.g. bf16 on AMX even when fp32 was exported
    input_shape: tuple[int, ...]
    run: Callable[[np.ndarray], np.ndarray]  # one batch in, the first output out
    lean_call: Callable[[np.ndarray], Callable[[], object]]  # preset inputs -> zero-arg timed call
    device: str = "CPU"
    threads: int | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExportResult:
    path: Path  # the main artifact file (.onnx, .xml, .engine)
    format: str
    precision: str
    exporter: str  # which converter produced it (e.g. torch.onnx legacy / dynamo)
    files: list[Path] = field(default_factory=list)  # every file that belongs to the artifact
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in (self.files or [self.path]) if f.exists())

    def compressed_size_bytes(self) -> int:
        """Deflate-compressed size of the artifact's files: what a download, an OTA update or a container
        layer carries. Zeroed (sparse) weights show here, not in the raw size."""
        import zlib

        total = 0
        for f in self.files or [self.path]:
            if f.exists():
                z = zlib.compressobj(6)
                with open(f, "rb") as fh:
                    while chunk := fh.read(1 << 22):
                        total += len(z.compress(chunk))
                total += len(z.flush())
        return total
