"""The order the cluster's work starts in: one task per CPU, the task leading to the most build time first
(a screening probe that unblocks a bisection before a lone short family; a family whose builds take long before
one whose builds are quick), exports last; no Ray needed."""

from edgeopt.engine.cluster_queue import TaskQueue, bisection_builds, screening_chain


def _queue(slots):
    started: list[str] = []
    q = TaskQueue(slots)

    def task(name):
        def start():
            started.append(name)
            return object()  # a Ray object ref stands for the task
        return start
    return q, started, task


def test_one_task_per_cpu_and_the_longest_chain_first():
    q, started, task = _queue(2)
    q.add(task("export a"), ("finish", "a"), 0, None)
    q.add(task("slim"), ("slim", None), 2, "slim")
    q.add(task("probe l2"), ("prune-l2", "g"), 4, "prune-l2")
    q.add(task("probe l1"), ("prune-l1", "g"), 4, "prune-l1")
    q.pump()
    assert started == ["probe l2", "probe l1"] and len(q.running) == 2  # the rest waits here, not in Ray
    ref = next(iter(q.running))
    assert q.done(ref) == ("prune-l2", "g")
    q.took("prune-l2", 20.0)
    q.pump()
    assert started[-1] == "slim"  # a build before an export, whatever the order they came in
    q.done(next(iter(q.running)))
    q.pump()
    assert started[-1] == "export a"


def test_measured_seconds_per_build_weigh_a_family():
    q, started, task = _queue(1)
    q.took("factorize-cp", 48.0)
    q.took("prune-fpgm", 21.0)
    q.add(task("fpgm"), ("prune-fpgm", None), 3, "prune-fpgm")  # 3 builds of 21 s
    q.add(task("cp"), ("factorize-cp", None), 2, "factorize-cp")  # 2 builds of 48 s: longer, though fewer
    q.add(task("depth"), ("depth", None), 2, "depth")  # nothing measured yet: the mean of every build
    q.pump()
    assert started == ["cp"]
    q.done(next(iter(q.running)))
    q.pump()
    assert started == ["cp", "depth"]  # 2 x 34.5 s > 3 x 21 s


def test_bisection_builds():
    assert [bisection_builds(n, 0) for n in (1, 2, 3, 4, 5, 7, 8)] == [1, 2, 2, 3, 3, 3, 4]
    assert bisection_builds(5, 1) == 4


def test_a_screening_probe_weighs_the_chain_it_heads():
    """Nine pruning probes on two slots take five rounds before the kept bisections (7 levels) can start: each
    probe heads 5 + 3 builds in a row and starts before a lone 3-build family, although it builds once."""
    assert screening_chain(9, 2, 7, 0) == 5 + bisection_builds(7, 0) == 8
    assert screening_chain(3, 4, 7, 1) == 1 + bisection_builds(7, 1)
    q, started, task = _queue(2)
    q.add(task("slim"), ("slim", None), 3, "slim")
    for i in range(9):
        q.add(task(f"probe {i}"), (f"prune-{i}", "g"), screening_chain(9, 2, 7, 0), f"prune-{i}")
    q.pump()
    assert started == ["probe 0", "probe 1"]
