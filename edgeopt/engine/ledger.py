"""What a search has done so far, shared by its driver (engine/search.py) and its finishing step
(engine/finish.py), each handed these objects instead of reaching into the other: the candidates by id and
their specs by structure (`Ledger`), each structure built once (`Builds`), and when to stop (`StopClock`).

A candidate that fails to build is data in the report (`why_failed` says why in one line); an error no other
candidate would escape (FATAL: a bad configuration, a missing backend) is raised."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import nn

from edgeopt.decide.plan import CandidateSpec, Plan
from edgeopt.engine.build import Built, new_candidate
from edgeopt.engine.fine_tuned import fine_tuned
from edgeopt.errors import (
    BackendMissingError,
    ConfigError,
    EdgeOptError,
    TimeBudgetError,
    VerificationError,
    WontFitError,
    first_line,
)
from edgeopt.report import Candidate
from edgeopt.timeout import run_until

# errors that no other candidate would escape (a bad configuration, a missing backend): the run stops and
# says why instead of recording every candidate as failed
FATAL = (ConfigError, BackendMissingError)


def why_failed(e: Exception) -> str:
    if isinstance(e, EdgeOptError):
        return str(e)
    return first_line(e)


def fail(cand: Candidate, e: Exception, stage: str, prefix: str = "") -> None:
    """Record `cand` as failed at `stage` (a Candidate.failure), the reason `e` in one line after `prefix`; an
    export whose artifact ran but computed something else than PyTorch is a failed verification."""
    cand.status, cand.reason = "failed", prefix + why_failed(e)
    cand.failure = "verification" if isinstance(e, VerificationError) else stage


def layout(model: nn.Module) -> str:
    """The channel layout of a model (its parameter shapes): two structures with the same one are one model."""
    shapes = [(n, tuple(p.shape)) for n, p in model.state_dict().items()]
    return hashlib.sha256(repr(shapes).encode()).hexdigest()[:16]


class Ledger:
    """The candidates of a plan by id, their specs by structure (planner order), and their status changes."""

    def __init__(self, plan: Plan, progress):
        self.cands: dict[str, Candidate] = {s.id: new_candidate(s) for s in plan.candidates}
        self.specs: dict[str, list[CandidateSpec]] = {}
        for s in plan.candidates:
            self.specs.setdefault(s.structure, []).append(s)
        self.baseline_id = plan.baseline_id
        self.original = plan.candidates[0].structure  # the structure with no model-stage step
        self.progress = progress

    @property
    def baseline(self) -> Candidate:
        return self.cands[self.baseline_id]

    def add(self, spec: CandidateSpec) -> None:
        """A candidate the search decided on by measurement (QAT): its own structure."""
        self.specs[spec.structure] = [spec]
        self.cands[spec.id] = new_candidate(spec)

    def add_structure(self, specs: list[CandidateSpec]) -> None:
        """A structure the search composed from measurements (stacking), with its candidates."""
        self.specs[specs[0].structure] = list(specs)
        for spec in specs:
            self.cands[spec.id] = new_candidate(spec)

    def find(self, structure: str, format: str, precision: str) -> Candidate | None:
        spec = next((s for s in self.specs.get(structure, ()) if s.format == format and s.precision == precision),
                    None)
        return None if spec is None else self.cands[spec.id]

    def mark(self, cid: str, status: str, reason: str) -> None:
        """Settle a pending candidate (one step of progress); a settled one keeps its status."""
        c = self.cands[cid]
        if c.status == "pending":
            c.status, c.reason = status, reason
            self.progress.advance()


class Builds:
    """Each structure built once, on the original model or on the structure it is based on (`base_of`: QAT of a
    pruned model, a family stacked on another's level), with its channel layout and build time; a failed build is
    kept as its exception, one the time budget ended halfway is not (it is built again when asked in grace)."""

    def __init__(self, builder, ledger: Ledger, progress,
                 announce: Callable[[str, list, str | None], None] | None = None,
                 until: Callable[[], float | None] | None = None,
                 after_build: Callable[[str], float] | None = None):
        self.builder, self.ledger, self.progress, self.announce = builder, ledger, progress, announce
        self.until = until  # the time.perf_counter() a build must end by (None: any); see edgeopt/timeout.py
        # seconds a structure's screening and finish should take once built: a fine-tuning shortened to fit ends
        # that much before `until`, so what it trained is still measured within the search's share
        self.after_build = after_build
        self.built: dict[str, Built | Exception] = {}
        # builds the time budget ended halfway: not failures, and built again when asked again (in grace)
        self.out_of_time: dict[str, TimeBudgetError] = {}
        self.seconds: dict[str, float] = {}
        self.layout_of: dict[str, str] = {}
        self.base_of: dict[str, str] = {}  # structure -> the structure it is built on (QAT, stacking)
        # what the fine-tuning of the last structure forecast not to fit would have taken: a later fine-tuned
        # structure is not started with less time left (the structures of one model fine-tune at about one rate)
        self.fine_tune_need: tuple[str, float] | None = None

    def failure(self, structure: str) -> str | None:
        b = self.built.get(structure, self.out_of_time.get(structure))
        return why_failed(b) if isinstance(b, Exception) else None

    def ready(self, structure: str) -> Built | None:
        """The structure when it was built without failing; None otherwise (never builds)."""
        b = self.built.get(structure)
        return None if b is None or isinstance(b, Exception) else b

    def count(self) -> int:
        return sum(1 for b in self.built.values() if not isinstance(b, Exception))

    def get(self, structure: str) -> Built | Exception:
        """The structure, built on first use."""
        if structure not in self.built:
            self.progress.log(f"building {structure}")
            t0 = time.perf_counter()
            specs = self.ledger.specs
            spec = specs[structure][0]
            base, steps = self.base_of.get(structure), spec.steps
            if self._fine_tuning_wont_fit(spec):
                name, need = self.fine_tune_need
                self.out_of_time[structure] = WontFitError(
                    f"not tried: fine-tuning {name} was forecast to take about {need:.0f} s, "
                    f"{max(self.until() - t0, 0):.0f} s of the search's share left", need)
                return self.out_of_time[structure]
            try:
                start = self.builder.net
                if base is not None:  # built on top of another structure (QAT of a pruned model)
                    built = self.get(base)
                    if isinstance(built, Exception):
                        raise built
                    start, steps = built.model, spec.steps[len(specs[base][0].steps):]
                if self.announce is not None:
                    self.announce(structure, steps, base)
                with run_until(*self._limits(structure)):
                    b = self.builder.build(start, spec.model_copy(update={"steps": steps}))
                if base is not None:
                    b.records = self.built[base].records + b.records
                self.layout_of[structure] = layout(b.model)
            except FATAL:
                raise
            except WontFitError as e:  # not started, or stopped seconds in: the search goes on with cheaper work
                self.seconds[structure] = round(time.perf_counter() - t0, 2)
                self.fine_tune_need = (structure, e.need_s)
                self.out_of_time[structure] = WontFitError(f"not tried: {e}", e.need_s)
                return self.out_of_time[structure]
            except TimeBudgetError as e:
                self.seconds[structure] = round(time.perf_counter() - t0, 2)
                self.out_of_time[structure] = TimeBudgetError(f"not tried: {TIME_STOP} ({e})")
                return self.out_of_time[structure]
            except Exception as e:  # one candidate's failure is data in the report, not a crash
                b = e
            self.built[structure] = b
            self.seconds[structure] = round(time.perf_counter() - t0, 2)  # where a search's time goes
        return self.built[structure]

    def _limits(self, structure: str) -> tuple[float | None, float | None]:
        """(the deadline of a build of `structure`, the time a fine-tuning shortened to fit should end by)."""
        deadline = self.until() if self.until is not None else None
        if deadline is None or self.after_build is None:
            return deadline, None
        return deadline, deadline - self.after_build(structure)

    def _fine_tuning_wont_fit(self, spec: CandidateSpec) -> bool:
        """Whether `spec` fine-tunes last and an earlier fine-tuning was forecast to need more than is left."""
        if self.fine_tune_need is None or self.until is None or not fine_tuned(spec):
            return False
        deadline = self.until()
        return deadline is not None and deadline - time.perf_counter() < self.fine_tune_need[1]


# Shares of --time-budget kept back from the search: the tail (the final latency measurement, the test split and
# writing the report) and, until a compressed candidate is finished, the finish of the best structure screened
# within the accuracy budget. The budget bounds the whole run, loading and tracing included. Once the baseline
# is finished the tail is forecast from what it measured (`forecast_tail`) and kept at that when it is less
# than its share: a fixed share of a long budget held back several times what the tail takes.
TAIL_SHARE = 0.1
FINISH_SHARE = 0.15
TIME_STOP = "stopped by the time budget"  # what the trace, the reasons and the CLI say when it stops the search


class StopClock:
    """When the search stops: its share of --time-budget spent (the budget counts from the start of the run,
    loading and tracing included), or a budget met with margin (`stop`). While `grace` holds (the baseline, the
    finish of the best screened structure), nothing stops. Each stop, and each cut made to fit the budget
    (`cut`), is traced."""

    def __init__(self, time_budget_s: float | None, t_start: float, trace: list[str]):
        self.time_budget_s, self.t_start, self.trace = time_budget_s, t_start, trace
        self.reason: str | None = None  # why the candidates not tried were not tried
        self.out_of_time = False  # stopped by --time-budget (not by a met latency/size budget)
        self.reserve_finish = True  # keep FINISH_SHARE back: no compressed candidate finished yet
        self.cuts: list[str] = []  # what was shortened or left out to end within the budget
        # stopped because the next build would not end within the search's share, with time still left in it:
        # no structure is built any more, but the ones built may still be finished while their exports fit
        self.builds_only = False
        self.tail_s: float | None = None  # the tail's forecast (`forecast_tail`); None: its share of the budget
        self._grace = False

    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    def tail(self) -> float:
        """Seconds kept back for the tail: its forecast, at most its share of the budget."""
        share = TAIL_SHARE * (self.time_budget_s or 0.0)
        return share if self.tail_s is None else min(share, self.tail_s)

    def forecast_tail(self, seconds: float, why: str) -> None:
        """Keep `seconds` for the tail instead of its share of the budget, where that is less (traced)."""
        if not self.time_budget_s:
            return
        share = TAIL_SHARE * self.time_budget_s
        self.tail_s = max(0.0, seconds)
        if self.tail_s < share:
            self.trace.append(f"time budget: {self.tail_s:.0f} s kept for the tail, not {share:.0f} s "
                              f"({100 * TAIL_SHARE:.0f} % of the budget): {why}")

    def kept_back(self, until: str) -> float:
        """Seconds of the budget kept back after the search ("search") or after the finish ("finish")."""
        finish = FINISH_SHARE * (self.time_budget_s or 0.0) if self.reserve_finish else 0.0
        return {"search": self.tail() + finish, "finish": self.tail(), "end": 0.0}[until]

    def left(self, until: str = "end") -> float | None:
        """Seconds left before the search's end ("search"), the finish's end ("finish") or the budget's end
        ("end"); None without a time budget."""
        budget = self.time_budget_s
        return None if not budget else budget - self.kept_back(until) - self.elapsed()

    def deadline(self) -> float | None:
        """The time.perf_counter() value at which the search's share runs out; None without a time budget or
        while `grace` holds (what runs then is finished whatever the budget says)."""
        left = self.left("search")
        return None if left is None or self._grace else time.perf_counter() + left

    def check(self) -> bool:
        """Stopped? (and stop now when the search's share of the time budget has run out)."""
        if self._grace:
            return False
        left = self.left("search")
        if not self.reason and left is not None and left < 0:
            self.out_of_time = True
            self.stop(f"not tried: {TIME_STOP} (--time-budget of {self.time_budget_s:g} s, "
                      f"{self.kept_back('search'):.0f} s of it kept for the finish and the final measurement)")
        return self.reason is not None

    def stopped(self) -> str | None:
        """Why the search stopped, when it has (checks the clock first)."""
        return self.reason if self.check() else None

    def stopped_before(self, step_s: float | None) -> str | None:
        """`stopped()`, and stop now where the next step, expected to take `step_s` (the builds so far), would
        not end within the search's share: nothing is interrupted halfway, so a build started with too little
        left would overrun the budget by its whole length."""
        if self.check():
            return self.reason
        left = self.left("search")
        if step_s and not self._grace and left is not None and left < step_s:
            self.out_of_time = self.builds_only = True
            self.stop(f"not tried: {TIME_STOP} (--time-budget of {self.time_budget_s:g} s: the next build would "
                      f"take about {step_s:.0f} s, {max(left, 0.0):.0f} s of the search's share left)")
        return self.reason

    def finishing_stopped(self) -> str | None:
        """Why no more candidates are finished: the search stopped (`stopped()`), unless only its builds did
        and its share has time left, in which the structures already built are finished while their exports fit
        (a structure screened within the budget just before the stop, such as a fine-tuning shortened to leave
        that time, would otherwise go unmeasured)."""
        if self.builds_only and not self._grace:
            left = self.left("search")
            return self.reason if left is not None and left < 0 else None
        return self.stopped()

    def stop(self, reason: str) -> None:
        self.reason = reason
        self.trace.append(reason)

    def cut(self, what: str) -> None:
        """Something shortened or left out to end within the time budget: traced and listed."""
        self.cuts.append(what)
        self.trace.append(f"time budget: {what}")

    def summary(self) -> dict | None:
        """report.json's model.search.time_budget."""
        if not self.time_budget_s:
            return None
        forecast = self.tail_s is not None and self.tail_s < TAIL_SHARE * self.time_budget_s
        return {"budget_s": self.time_budget_s, "stopped": self.out_of_time, "cuts": list(self.cuts),
                "tail_s": round(self.tail(), 1), "tail": "forecast" if forecast else "share"}

    @property
    def in_grace(self) -> bool:
        """Whether nothing stops now (the baseline, the finish of the best screened structure)."""
        return self._grace

    @contextmanager
    def grace(self) -> Iterator[None]:
        self._grace = True
        try:
            yield
        finally:
            self._grace = False
