"""Runtimes: load an artifact and run it. A Session is what benchmarking, verification and
accuracy evaluation use, whatever the runtime."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
