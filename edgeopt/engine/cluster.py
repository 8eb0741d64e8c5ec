"""The candidate search on a Ray cluster (`--cluster local:N` or `--cluster ray://HOST:PORT`): each family's
structures are built (pruned, factorized, fine-tuned with --retrain) and screened in PyTorch as Ray tasks,
families in parallel, a family's levels one after another in bisection order (the next level depends on the
last drop). The model, the data and the run's settings go to the object store once (`ray.put`).

The search itself is unchanged: `prefetch` runs ahead of its family loop, and the builder it hands the search
(`ClusterBuilder`) answers `build` and `torch_accuracy` with what the tasks returned, so the serial walk decides
on the same numbers and chooses what a serial run chooses (the builds are seeded: the same weights wherever
they run). Anything the tasks did not produce (a level a time budget cut, a QAT build) is built in this process.

Finishing a structure (engine/finish_job.py's `finish_structure`: export every precision from its one ONNX graph,
verify, calibrate and quantize, evaluate on the runtime) is a task too (engine/cluster_finish.py): each
structure a family's bisection keeps is finished ahead of the search once no build waits for a CPU, and the
search takes the record when its walk asks for exactly that job (else the job runs as a task then). One task per
CPU of the cluster is in flight; the rest wait in the driver, the one leading to the most build time first
(engine/cluster_queue.py). All tasks are over before the search goes on, so no latency is ever measured beside
a busy worker. A worker lost mid-task costs that task only: Ray runs it again (TASK_RETRIES).

Ray is an optional extra (`pip install 'edgeopt[ray]'`)."""

from __future__ import annotations

import dataclasses
import os
import sys
import time

from edgeopt.config import parse_cluster
from edgeopt.decide import policy
from edgeopt.engine.cluster_finish import FINISH_RETRIES, ClusterFinishing, finish_task
from edgeopt.engine.cluster_queue import TaskQueue, bisection_builds, screening_chain
from edgeopt.engine.cluster_worker import run_payload, where
from edgeopt.engine.finish_job import Done, Job
from edgeopt.errors import BackendMissingError, first_line

TASK_RETRIES = 3  # runs of a task again after its worker died (Ray's max_retries)
INSTALL = "pip install 'edgeopt[ray]'"


def require_ray():
    """The ray module; a one-line error naming the extra when it is not installed."""
    try:
        import ray
    except ImportError:
        raise BackendMissingError(f"--cluster needs Ray: {INSTALL}") from None
    return ray


def start_local(workers: int) -> None:
    """A Ray cluster of `workers` CPUs on this machine, whose workers import what this process can (a model
    class from a user's module included)."""
    ray = require_ray()
    path = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
    ray.init(num_cpus=workers, include_dashboard=False, logging_level="warning",
             runtime_env={"env_vars": {"PYTHONPATH": path}})


def _family_task(boxed: list, base_acc: float, structures: list[tuple[str, object]], known: dict[str, float | None],
                 probe_only: bool, first: int | None, budget: float, margin_levels: int,
                 seconds_left: float | None) -> dict:
    """One family on one worker: its levels screened in bisection order (or only `structures[0]`, a screening
    probe, with `probe_only`), then the levels the bisection keeps built too (the search finishes them).
    `known`: drops measured before (the cache, a screening), not built again. Returns per structure built
    (Built or the exception, seconds, its Screened PyTorch accuracy), the levels kept and where it ran."""
    entered = time.time()  # wall clock: the driver compares it with when it submitted the task
    import torch

    from edgeopt.engine.bisect import bisect

    builder, threads = run_payload(boxed)
    read = time.time() - entered
    torch.set_num_threads(threads)
    deadline = None if seconds_left is None else time.monotonic() + seconds_left
    specs = dict(structures)
    out: dict[str, tuple] = {}

    def build(s: str):
        if s not in out:
            t0 = time.perf_counter()
            try:
                b = builder.build(builder.net, specs[s])
                acc = builder.torch_screen(b.model, base_acc - budget - policy.EPS_PP)
            except Exception as e:  # data for the search: it records or raises it as a serial run would
                b, acc = e, None
            out[s] = (b, round(time.perf_counter() - t0, 2), acc)
        return out[s]

    probed: list[str] = []  # the levels the bisection screened (the search screens the same ones)

    def screen(s: str) -> float | None:
        probed.append(s)
        if s in known:
            return known[s]
        acc = build(s)[2]
        return None if acc is None else round(base_acc - acc.accuracy, 4)

    def stopped() -> str | None:
        return "time" if deadline is not None and time.monotonic() > deadline else None

    levels = [s for s, _ in structures]
    kept: list[str] = []
    if probe_only:
        screen(levels[0])
    else:
        kept = bisect("", levels, screen, budget, stopped, lambda s: None, margin_levels, first=first).kept
        for s in kept:
            if not stopped():
                build(s)
    return {"built": out, "kept": kept, "probed": probed, "where": where(), "entered": entered, "read": read,
            "left": time.time()}


class ClusterBuilder:
    """The run's builder, answering `build` (of a structure on the original model) and `torch_accuracy` with
    what the cluster computed; everything else, and anything not computed there, goes to the builder itself."""

    def __init__(self, inner, executor: RayExecutor | None = None):
        self._inner = inner
        self._executor = executor
        self.built: dict[str, tuple] = {}  # structure -> (Built or exception, seconds, accuracy, where)
        self._acc: dict = {}  # id(model) of a cluster-built model -> its PyTorch screening (build.Screened)
        self.used: dict[str, str] = {}  # structure -> where it was built, for the structures the search used

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def take(self, structure: str, result: tuple, place: str) -> None:
        b, seconds, acc = result
        self.built[structure] = (b, seconds, acc, place)
        if acc is not None:
            self._acc[id(b.model)] = acc

    def build(self, start, spec):
        got = self.built.get(spec.structure)
        if got is None or start is not self._inner.net:
            self.used[spec.structure] = "local"
            return self._inner.build(start, spec)
        self.used[spec.structure] = got[3]
        if isinstance(got[0], Exception):
            raise got[0]
        return got[0]

    def torch_accuracy(self, model) -> float:
        acc = self._acc.get(id(model))
        return acc.accuracy if acc is not None and not acc.partial else self._inner.torch_accuracy(model)

    def torch_screen(self, model, floor: float):
        acc = self._acc.get(id(model))
        return acc if acc is not None else self._inner.torch_screen(model, floor)

    def finish_job(self, built, job: Job) -> Done:
        """engine/finish_job.py's job, run on the cluster (or taken from the run ahead of the search)."""
        return self._executor.finish(built, job)


class RayExecutor(ClusterFinishing):
    """Family-parallel work of a search on a Ray cluster. `wrap` the run's builder, hand the search this
    executor; `settle` the result (where each candidate was built, what the tasks took); `close` at the end."""

    def __init__(self, cluster: str, threads: int | None = None):
        ray = require_ray()
        kind, value = parse_cluster(cluster)
        self.cluster, self.ray = cluster, ray
        self.started = not ray.is_initialized()
        if self.started:
            if kind == "local":
                start_local(value)
            else:
                ray.init(address=value, logging_level="warning")
        gpus = ray.cluster_resources().get("GPU", 0)
        # one CPU of the cluster's count per task (local:N runs N at once); PyTorch in the task runs the run's own
        # thread count: a fine-tuning's float sums, hence its weights, depend on it, and the same count keeps
        # them equal to a serial run's
        self.options = {"num_cpus": 1, "num_gpus": 1 if gpus else 0, "max_retries": TASK_RETRIES,
                        "retry_exceptions": False}
        self.threads = threads or os.cpu_count() or 1
        self.task = ray.remote(_family_task)
        self.finish_task = ray.remote(finish_task)
        self.builder: ClusterBuilder | None = None
        self.seconds = 0.0  # wall time of the tasks
        self.tasks = 0
        self.finish_tasks = 0
        self.finish_retries = FINISH_RETRIES
        self.ahead: dict[str, tuple[str, object]] = {}  # structure -> (job key, task) finished ahead of the search
        self.taken_ahead = 0  # jobs the search took from those
        self._payload = None

    def wrap(self, builder) -> ClusterBuilder:
        self.builder = ClusterBuilder(builder, self)
        return self.builder

    def payload(self):
        """The run's builder (its model and data) and thread count, in the object store once."""
        if self._payload is None:
            inner = self.builder._inner
            if dataclasses.is_dataclass(inner):
                inner = dataclasses.replace(inner, progress=None)
            self._payload = self.ray.put((inner, self.threads))
        return self._payload

    def close(self) -> None:
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()

    # ---- the search's hook ------------------------------------------------------------------------------
    def prefetch(self, search, families: dict[str, list[str]]) -> None:
        """Build and screen, on the cluster, every family the search will bisect: the probes of each screening
        group, each family its screening keeps, families without a group. At most one task per CPU of the
        cluster is in flight, the rest wait here in order of the work they lead to (`TaskQueue`), so the longest
        chain of dependent builds starts first instead of waiting behind short ones."""
        from edgeopt.engine.cache import key
        from edgeopt.engine.family_screening import common_probes, screen_group
        from edgeopt.engine.fine_tuned import first_probe
        from edgeopt.engine.ledger import layout
        from edgeopt.engine.precision_checks import checks_probes

        ray, builder = self.ray, self.builder
        if builder is None or not families:
            return
        t0 = time.perf_counter()
        specs, budget = search.ledger.specs, search.context.max_accuracy_drop
        payload = self.payload()
        known: dict[str, float | None] = {}  # drops the cache holds: not built again
        drops: dict[str, float | None] = {}  # what the cache holds and the tasks measured so far
        original = layout(builder.net)
        layouts: dict[str, str] = {}  # structure -> channel layout (a screening ignores one that changed nothing)
        for structures in families.values():
            for s in structures:
                steps = [st.model_dump() for st in specs[s][0].steps]
                hit = search.cache.get("screen", key(*search.cache_parts, steps))
                if hit is not None:
                    known[s], layouts[s] = hit["drop"], hit["layout"]
                    drops[s] = hit["drop"]
        # each task holds one CPU, and one GPU where the cluster has GPUs: as many run at once as there are
        resources = ray.cluster_resources()
        queue = TaskQueue(max(1, int(resources.get("GPU" if self.options["num_gpus"] else "CPU", 1))))
        submitted: dict = {}  # task -> wall clock when it was handed to Ray

        def submit(fam: str, probe_only: bool, levels: list[str], first: int | None = None):
            reduced = any(spec.precision != "fp32" for s in levels for spec in specs[s])
            margin = policy.MARGIN_LEVELS if reduced else 0
            builds = 1 if probe_only else bisection_builds(len(levels) if first is None else len(levels) - 1,
                                                           margin)

            def start():  # the drops known and the time left when it starts, not when it was queued
                self.tasks += 1
                ref = self.task.options(**self.options).remote(
                    [payload], search.base_torch_acc, [(s, specs[s][0]) for s in levels],
                    known if probe_only else {**known, **drops}, probe_only, first, budget, margin,
                    search.clock.left("search"))
                submitted[ref] = time.time()
                return ref
            return start, builds

        # the kept levels are finished ahead only where the search's bisection is the task's: not where each
        # probe is checked at INT8 on the runtime (precision_checks.checks_probes), which finishes other jobs
        ahead_ok = {fam: not checks_probes(search, structures) for fam, structures in families.items()}
        finishing: list = []

        groups: dict[str, dict[str, list[str]]] = {}
        for fam, structures in families.items():
            group = specs[structures[0]][0].screen
            if group is not None:
                groups.setdefault(group, {})[fam] = structures
        waiting: dict[str, set[str]] = {}  # group -> probes not returned yet
        probes_of: dict[str, dict[str, str]] = {}
        for group, members in groups.items():
            if len(members) <= policy.SCREEN_KEEP:
                continue
            _, probes = common_probes(members, lambda s: specs[s][0].level)
            probes_of[group] = probes
            waiting[group] = set()
            # the group's probes lead to the bisections its screening keeps, once all of them are in
            todo = [(fam, s) for fam, s in probes.items() if s not in known]
            chain = screening_chain(len(todo), queue.slots, max(len(v) for v in members.values()) - 1,
                                    policy.MARGIN_LEVELS)
            for fam, s in todo:
                waiting[group].add(s)
                start, _ = submit(fam, True, [s])
                queue.add(start, (fam, group), chain, fam)
        for fam, structures in families.items():
            group = specs[structures[0]][0].screen
            if group is not None and len(groups[group]) > policy.SCREEN_KEEP:
                continue
            # the search's bisection probes a fine-tuned family's mildest level first: the task's does the same
            start, builds = submit(fam, False, structures, first_probe(specs, structures, {}))
            queue.add(start, (fam, None), builds, fam)

        def bisect_group(group: str) -> None:
            members = groups[group]
            out = screen_group(group, members, lambda s: specs[s][0].level, lambda s: drops.get(s),
                               lambda s: None, lambda s: layouts.get(s) == original, lambda: None)
            for fam in out.kept:  # the bisection starts where the screening measured, as the search's does
                levels = members[fam]
                start, builds = submit(fam, False, levels, levels.index(out.probes[fam]))
                queue.add(start, (fam, None), builds, fam)

        for group in [g for g, w in waiting.items() if not w]:
            bisect_group(group)
        queue.pump()
        while queue.running:
            ready, _ = ray.wait(list(queue.running), num_returns=1, fetch_local=False)
            tag = queue.done(ready[0])
            if tag[0] == "finish":  # a structure finished ahead: its record stays in Ray until the search asks
                queue.pump()
                continue
            fam, group = tag
            try:
                got = ray.get(ready[0])
                received = time.time()
            except Exception as e:  # retries spent (or a result that would not travel): built here instead
                search.trace.append(f"cluster: the task of {fam} failed ({first_line(e)}); its levels are built "
                                    "here")
                got = {"built": {}, "where": ""}
            line = (f"cluster: {fam} {'screened' if group else 'bisected'}"
                    + (f" on {got['where']}" if got["where"] else "")
                    + f", {len(got['built'])} built ({sum(r[1] for r in got['built'].values()):.0f} s)"
                    + (f", in the task {got['left'] - got['entered']:.1f} s (reading the run's payload "
                       f"{got['read']:.1f} s), before it {got['entered'] - submitted[ready[0]]:.1f} s, its result "
                       f"back in {received - got['left']:.1f} s" if "entered" in got else "")
                    + f", back at {time.perf_counter() - t0:.0f} s")
            search.progress.log(line)
            search.trace.append(line)
            for s, result in got["built"].items():
                builder.take(s, result, got["where"])
                b, seconds, acc = result
                queue.took(fam, seconds)
                drops[s] = None if acc is None else round(search.base_torch_acc - acc.accuracy, 4)
                if not isinstance(b, Exception):
                    layouts[s] = layout(b.model)
            if group is None and ahead_ok[fam]:
                for s in got.get("kept", []):
                    if s in got["built"]:
                        # a margin level the bisection did not screen is finished without its drop, as the
                        # search will ask for it: the job is taken only when it is the one asked for
                        ref = self._finish_ahead(search, s, got["built"][s][0],
                                                 drops.get(s) if s in got.get("probed", ()) else None, queue)
                        finishing += [ref] if ref is not None else []
            if group is not None and fam in probes_of[group]:
                waiting[group].discard(probes_of[group][fam])  # returned, or failed: the group goes on
            if group is not None and not waiting[group]:
                del waiting[group]
                bisect_group(group)
            queue.pump()
        self.seconds += time.perf_counter() - t0
        search.trace.append(f"cluster {self.cluster}: {self.tasks} task(s) built and screened "
                            f"{len(builder.built)} structure(s), {len(finishing)} finished ahead, in "
                            f"{self.seconds:.1f} s")

    def settle(self, result) -> None:
        """Where each candidate's structure was built (report.json's `built_on`), and what its build took on
        the worker (the search's build seconds: this process only took the result)."""
        builder = self.builder
        if builder is None:
            return
        for c in result.candidates:
            if c.structure in builder.used:
                c.built_on = builder.used[c.structure]
        for s, place in builder.used.items():
            if place != "local" and s in builder.built:
                result.build_seconds[s] = builder.built[s][1]


def executor_for(cluster: str | None, threads: int | None = None) -> RayExecutor | None:
    """The executor of `--cluster` (None: the serial search); `threads`: PyTorch's in each task, the run's."""
    return None if not cluster else RayExecutor(cluster, threads)
