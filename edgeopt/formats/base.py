"""Runtimes: load an artifact and run it. A Session is what benchmarking, verification and
accuracy evaluation use, whatever the runtime.

Exporters: one function per format. Each writes an artifact for a precision and returns what it did.
Exporters never import techniques or each other; the formats table lives in edgeopt.formats."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.errors import InputShapeError


@dataclass
class Session:
    runtime: str
    runtime_version: str
    precision_executed: str  # what the runtime really runs, e.g. bf16 on AMX even when fp32 was exported
    input_shape: tuple[int, ...]
    run: Callable[[np.ndarray], np.ndarray]  # convenience for one input: one batch in, the first output out
    lean_call: Callable[[np.ndarray | dict[str, np.ndarray]], Callable[[], object]]  # preset inputs -> timed call
    device: str = "CPU"
    threads: int | None = None
    info: dict[str, Any] = field(default_factory=dict)
    # every input by name (-1 = dynamic axis) and every output name, in the model's flattened order
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    output_names: list[str] = field(default_factory=list)
    run_all: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None  # named in, named out

    def run_named(self, feed: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """All named outputs for named inputs (an array alone feeds the only input)."""
        if self.run_all is None:
            return {"output": self.run(feed if isinstance(feed, np.ndarray) else next(iter(feed.values())))}
        return self.run_all(self.feed(feed))

    def timed_call(self, feed: np.ndarray | dict[str, np.ndarray]) -> Callable[[], object]:
        """`lean_call` with the inputs as the loader takes them: a format that names no inputs gets its one
        array, the others the named dict."""
        if isinstance(feed, dict) and not self.input_shapes:
            if len(feed) != 1:
                raise InputShapeError(f"{self.runtime} takes one input, got {len(feed)} ({', '.join(feed)})")
            feed = next(iter(feed.values()))
        return self.lean_call(feed)

    def feed(self, x: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Named float32 inputs; a bare array is the single input's."""
        if isinstance(x, dict):
            return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in x.items()}
        names = list(self.input_shapes) or ["input"]
        if len(names) != 1:
            raise InputShapeError(f"the artifact takes {len(names)} inputs ({', '.join(names)}): pass them by name")
        return {names[0]: np.ascontiguousarray(x, dtype=np.float32)}


def check_feed(feed: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> None:
    """InputShapeError when a named input is missing, unknown, or of the wrong shape (-1 matches any size)."""
    if set(feed) != set(shapes):
        raise InputShapeError(f"inputs {sorted(feed)} do not match the artifact's {sorted(shapes)}")
    for name, want in shapes.items():
        got = tuple(feed[name].shape)
        if len(got) != len(want) or any(w not in (-1, g) for w, g in zip(want, got, strict=True)):
            one = "input shape" if len(shapes) == 1 else f"input {name!r} shape"
            raise InputShapeError(f"{one} {got} does not match the artifact's {want}")


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
