"""Where a run's wall time goes: seconds per phase (load, analyze, data, reference predictions, plan, search,
measure, test split...), accumulated as the run goes, for report.json's model.profile and `--verbose`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class Phases:
    """Seconds per phase, in the order first seen; a phase entered twice adds up."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = round(self.seconds.get(phase, 0.0) + seconds, 3)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, time.perf_counter() - t0)

    def summary(self, wall_s: float) -> dict[str, float]:
        """The phases, then "other": what no phase accounts for, so that they add up to the wall time."""
        return {**self.seconds, "other": round(max(0.0, wall_s - sum(self.seconds.values())), 3)}
