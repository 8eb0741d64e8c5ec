"""How the cluster's tasks are ordered: the driver holds the work and starts one task per free CPU (GPU where
the tasks ask for GPUs), the task leading to the most build time first, so the longest chain of dependent
builds (a family's bisection, each level waiting on the last) does not start last. Pure bookkeeping: the
starting callables are Ray submissions in engine/cluster.py, plain functions in the tests."""

from __future__ import annotations


def bisection_builds(levels: int, margin: int) -> int:
    """Builds a bisection over `levels` levels takes at most (its probes, then the margin levels kept)."""
    return max(1, levels).bit_length() + margin


def screening_chain(probes: int, slots: int, levels: int, margin: int) -> int:
    """The builds in a row a screening probe heads: the rounds its group's `probes` take on `slots`, then the
    bisection over the `levels` left of the longest family the screening keeps (the kept ones run side by
    side). Weighing a probe by its share of that work instead put T1's nine pruning probes last, and their
    bisections ran alone at the end."""
    return -(-probes // max(1, slots)) + bisection_builds(levels, margin)


class Ahead:
    """A finish task queued ahead of the search; `ref` is None until the queue starts it."""

    def __init__(self, submit):
        self._submit, self.ref = submit, None

    def start(self):
        self.ref = self._submit()
        return self.ref


class TaskQueue:
    """The cluster's work, held here and started one task per free CPU, the task leading to the most build
    time first: a task's weight is the longest chain of builds it heads (a screening probe: the rounds of its
    group's probes, then the bisection the screening unblocks), times its family's measured seconds per build
    (the mean of all builds while a family has none, 1 before any). Exports weigh 0: they lead to nothing and
    go last."""

    def __init__(self, slots: int):
        self.slots = slots
        self.waiting: list[tuple[int, object, tuple, float, str | None]] = []  # (order, start, tag, builds, family)
        self.running: dict = {}  # ref -> tag
        self.seconds: dict[str, list[float]] = {}  # family -> seconds of each build returned

    def add(self, start, tag: tuple, builds: float, family: str | None) -> None:
        self.waiting.append((len(self.waiting), start, tag, builds, family))

    def took(self, family: str, seconds: float) -> None:
        self.seconds.setdefault(family, []).append(seconds)

    def _per_build(self, family: str | None) -> float:
        mine = self.seconds.get(family or "")
        every = [t for ts in self.seconds.values() for t in ts]
        pool = mine or every
        return sum(pool) / len(pool) if pool else 1.0

    def pump(self) -> None:
        while self.waiting and len(self.running) < self.slots:
            best = max(self.waiting, key=lambda w: (w[3] * self._per_build(w[4]) if w[3] else -1.0, -w[0]))
            self.waiting.remove(best)
            self.running[best[1]()] = best[2]

    def done(self, ref) -> tuple:
        return self.running.pop(ref)
