"""Bounding wall time: a hard limit for analyses that can hang (graph tracing of exotic models), and the run's
deadline inside a long step. A step made of many small parts that no one can forecast from the search's other
builds (a latency table's entries: SSDlite's took 175 s where reconstruction builds took 7-19 s; Torch-Pruning's
groups of a large graph: 3-6 s each on SSDlite) checks the deadline between parts, so a --time-budget is not
overrun by a whole step. The engine sets it around a build; unset, nothing stops. A step that can shorten itself
to fit (a fine-tuning: fewer steps) aims at an earlier time, `fit_by`: the deadline less what must follow it
within the search (its structure's screening and export), or it would end on time with nothing measured."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar

_UNTIL: ContextVar[float | None] = ContextVar("edgeopt_deadline", default=None)
_FIT_BY: ContextVar[float | None] = ContextVar("edgeopt_fit_by", default=None)


@contextlib.contextmanager
def run_until(deadline: float | None, fit_by: float | None = None) -> Iterator[None]:
    """Within this block `deadline_passed()` says whether time.perf_counter() is past `deadline` (None: never),
    and `current_fit_by()` when a step that can shorten itself should end (`fit_by`, default the deadline)."""
    token, fit_token = _UNTIL.set(deadline), _FIT_BY.set(fit_by)
    try:
        yield
    finally:
        _FIT_BY.reset(fit_token)
        _UNTIL.reset(token)


def deadline_passed() -> bool:
    """Whether the deadline of the enclosing `run_until` block has passed (a step then raises TimeBudgetError,
    keeping what it can for the next run)."""
    limit = _UNTIL.get()
    return limit is not None and time.perf_counter() > limit


def current_deadline() -> float | None:
    return _UNTIL.get()


def current_fit_by() -> float | None:
    """When a step that can shorten itself should end: what follows it must still fit before the deadline."""
    deadline, fit_by = _UNTIL.get(), _FIT_BY.get()
    if deadline is None or fit_by is None:
        return deadline
    return min(deadline, fit_by)


@contextlib.contextmanager
def time_limit(seconds: float | None, what: str):
    """Raise TimeoutError inside the block after `seconds` (main thread on POSIX; a no-op elsewhere)."""
    usable = (seconds and hasattr(signal, "SIGALRM")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def _fire(signum, frame):
        raise TimeoutError(f"{what} took longer than {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, _fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
