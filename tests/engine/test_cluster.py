"""The candidate search on a local Ray cluster: families built and screened as tasks, and candidates exported,
verified and evaluated as tasks, choose what the serial search chooses, with the same accuracies and the same
artifact bytes under the out dir; a worker lost mid-task costs only that task; an export that fails or kills its
worker fails its candidate only; `--cluster` without Ray installed is a one-line error naming the extra."""

import os
import re
from dataclasses import dataclass

import pytest
import smallnet
import torch
from cliruns import assert_one_line_error
from cliruns import run as run_cli

import edgeopt
from edgeopt.engine import cluster
from edgeopt.engine.build import Builder
from edgeopt.errors import ConfigError
from edgeopt.report import file_sha256

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    if not ray.is_initialized():
        cluster.start_local(2)
    yield
    ray.shutdown()


LEVELS = (0.05, 0.1, 0.2, 0.3)


class Quiet:
    def stage(self, *a, **k): ...
    def log(self, *a, **k): ...
    def advance(self, *a, **k): ...


@pytest.fixture(scope="module")
def parts():
    """A small CNN trained on digits (8x8), scored by top-1 on held-out digits, and two pruning families."""
    from edgeopt.decide.plan import CandidateSpec, Plan
    from edgeopt.inputs.data import Batches, DataSplits
    from edgeopt.measure.accuracy import score, torch_predictions
    from edgeopt.techniques import PruneConfig

    net, train, val = smallnet.trained(size=8)
    x, y = torch.cat([x for x, _ in val.items]), torch.cat([y for _, y in val.items])
    eval_b = Batches([(x[i:i + 64], y[i:i + 64]) for i in range(0, len(x) - 63, 64)])
    splits = DataSplits(calib=Batches(train.items[:1]), train=None, eval=eval_b, source="digits")
    base = score(torch_predictions(net, eval_b, 64), eval_b, None)[0]
    specs = [CandidateSpec(id="original@onnx-fp32", structure="original", format="onnx")]
    for crit in ("l2", "l1"):
        specs += [CandidateSpec(id=f"prune-{crit}{int(r * 100)}@onnx-fp32", structure=f"prune-{crit}{int(r * 100)}",
                                format="onnx", steps=[PruneConfig(ratio=r, importance=crit)], family=f"prune-{crit}",
                                level=r) for r in LEVELS]
    return net, splits, eval_b, base, Plan(candidates=specs, baseline_id=specs[0].id)


def _search(parts, out, executor=None, plan=None, make=Builder, **extra):
    from edgeopt.config import make_context
    from edgeopt.engine.cache import CandidateCache
    from edgeopt.engine.search import Search

    net, splits, eval_b, base, planned = parts
    plan = plan or planned
    builder = make(net=net, example=torch.randn(64, 1, 8, 8), splits=splits, eval_b=eval_b, batch=64,
                   reference=None, out_dir=out, threads=1, **extra)
    if executor is not None:
        builder = executor.wrap(builder)
    search = Search(plan=plan, context=make_context(max_accuracy_drop=10.0), builder=builder, base_torch_acc=base,
                    cache=CandidateCache(out, enabled=False), cache_parts=("t",), progress=Quiet(), t_start=0.0,
                    quick_latency=lambda cands, sessions: None, executor=executor)
    result = search.run()
    if executor is not None:
        executor.settle(result)
    return result


def _outcome(result):
    return [(c.id, c.status, c.accuracy, c.reason) for c in result.candidates]


@pytest.fixture(scope="module")
def serial(parts, tmp_path_factory):
    out = tmp_path_factory.mktemp("serial")
    result = _search(parts, out)
    result.out = out
    return result


def serial_out(result):
    return result.out


def _worker_pid(where: str | None) -> int:
    assert where is not None and where.startswith("ray node ")
    return int(where.rsplit(" pid ", 1)[1])


def test_families_run_as_tasks_and_choose_what_the_serial_search_chooses(local_ray, serial, parts, tmp_path):
    executor = cluster.RayExecutor("local:2")
    result = _search(parts, tmp_path, executor)
    assert _outcome(result) == _outcome(serial)  # every candidate: same status, same accuracy, same reason
    assert [c for c in serial.candidates if c.status == "ok" and c.structure != "original"]  # something to choose
    # one task per family, the two families at once; every level either bisection screened was built there, and
    # the level each kept and its milder margin (each settled near the 10 pp budget) finished ahead of the
    # search, which took two: prune-l1's levels up to 20 % prune no larger share of the channels than prune-l220,
    # finished first, so the search leaves them out (they could not be faster)
    summary = next(t for t in result.trace if t.startswith("cluster local:2:"))
    assert executor.tasks == 2 and summary.startswith("cluster local:2: 2 task(s) built and screened 6 "
                                                      "structure(s), 4 finished ahead")
    # each task's return is in the trace: what it built, in how many seconds, where the rest of its time went
    # (waiting to start, its result travelling back) and when it came back
    back = [t for t in result.trace if t.startswith("cluster: ") and " bisected on ray node " in t]
    assert len(back) == 2 and all(" built (" in t and " back at " in t for t in back)
    assert all(re.search(r"in the task [\d.]+ s \(reading the run's payload [\d.]+ s\), before it [\d.-]+ s, "
                         r"its result back in [\d.-]+ s", t)
               for t in back)
    assert executor.taken_ahead == 2 and executor.finish_tasks == 5  # and the baseline, finished first
    assert "prune-l1: 3 level(s) up to 0.2 left out, no faster than prune-l220, which holds the budget" \
        in result.trace
    # every candidate exported, verified and evaluated in a worker; its artifact written here, byte for byte
    # the serial run's, and loaded here for the measurement
    exported = [c for c in result.candidates if c.artifact]
    assert len(exported) == 3 and all(_worker_pid(c.exported_on) != os.getpid() for c in exported)
    twin = {c.id: c for c in serial.candidates}
    for c in exported:
        assert file_sha256(tmp_path / c.artifact) == file_sha256(serial_out(serial) / twin[c.id].artifact)
        x = parts[2].items[0][0].numpy()  # the session loaded here runs as the serial run's does
        assert (result.sessions[c.id].run(x) == serial.sessions[c.id].run(x)).all()
    assert all(c.exported_on is None for c in serial.candidates)
    assert [t for t in result.trace if not t.startswith("cluster")] == serial.trace  # the same walk and numbers
    assert result.screened == serial.screened
    built = {c.structure: c.built_on for c in result.candidates if c.status == "ok" and c.structure != "original"}
    assert built and all(where.startswith("ray node ") for where in built.values())
    assert next(c for c in result.candidates if c.structure == "original").built_on == "local"
    assert all(c.built_on is None for c in serial.candidates)  # a serial run says nothing of the kind


def _dies_once(marker: str):
    def task(*args):
        if not os.path.exists(marker):  # the first try: the worker process dies mid-task
            open(marker, "w").close()
            os._exit(1)
        return cluster._family_task(*args)
    return task


def test_a_worker_lost_mid_task_costs_only_that_task(local_ray, serial, parts, tmp_path, monkeypatch):
    marker = tmp_path / "died"
    monkeypatch.setattr(cluster, "_family_task", _dies_once(str(marker)))
    executor = cluster.RayExecutor("local:2")
    result = _search(parts, tmp_path / "out", executor)
    assert marker.exists()  # a worker did die
    assert _outcome(result) == _outcome(serial) and executor.tasks == 2


def test_cluster_value_is_checked_and_ray_missing_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="local:N"):
        edgeopt.optimize(cluster="local:0", out_dir=tmp_path)
    assert_one_line_error(run_cli("optimize", "--cluster", "ray://nohost", "--out", str(tmp_path)), "--cluster")
    # Ray not installed: a `ray` package that cannot be imported comes first on the path
    (tmp_path / "noray" / "ray").mkdir(parents=True)
    (tmp_path / "noray" / "ray" / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    path = os.pathsep.join([str(tmp_path / "noray"), os.environ.get("PYTHONPATH", "")])
    res = run_cli("optimize", "--cluster", "local:2", "--out", str(tmp_path / "out"), env_extra={"PYTHONPATH": path})
    assert_one_line_error(res, "pip install 'edgeopt[ray]'")


@dataclass
class BreaksInWorkers(Builder):
    """The run's builder, except in a process other than `driver`: exporting `raises` raises (a converter's
    error), exporting `dies` kills the worker (a converter's crash)."""

    driver: int = 0
    raises: str = ""
    dies: str = ""

    def export(self, built, spec, **kw):
        if os.getpid() != self.driver:
            if spec.id == self.dies:
                os._exit(1)
            if spec.id == self.raises:
                raise RuntimeError(f"converter broke in pid {os.getpid()}")
        return super().export(built, spec, **kw)


def test_an_export_failing_in_a_worker_fails_that_candidate_only(local_ray, serial, parts, tmp_path):
    from edgeopt.decide.plan import CandidateSpec

    plan = parts[4]
    extra = [CandidateSpec(id=f"original@onnx-{p}", structure="original", format="onnx", precision=p)
             for p in ("int8w", "int8")]
    plan = plan.model_copy(update={"candidates": [plan.candidates[0], *extra, *plan.candidates[1:]]})
    executor = cluster.RayExecutor("local:2")
    executor.finish_retries = 0  # a worker's death not run again: each costs seconds to start another
    result = _search(parts, tmp_path, executor, plan=plan, make=BreaksInWorkers, driver=os.getpid(),
                     raises="original@onnx-int8w", dies="original@onnx-int8")
    c = {c.id: c for c in result.candidates}
    # the original's int8w and int8 are one job: its worker died, so each ran alone: int8w raised in a
    # worker, int8 killed its worker again; the compressed candidates are the serial run's
    assert c["original@onnx-int8w"].status == "failed"
    pid = _worker_pid(c["original@onnx-int8w"].exported_on)
    assert c["original@onnx-int8w"].reason == f"RuntimeError: converter broke in pid {pid}" and pid != os.getpid()
    assert c["original@onnx-int8"].status == "failed"
    assert c["original@onnx-int8"].reason.startswith("its export task failed on the cluster: ")
    assert _outcome(result)[:1] + _outcome(result)[3:] == _outcome(serial)
    assert (tmp_path / c["original@onnx-fp32"].artifact).is_file()


def test_a_worker_reads_the_runs_payload_once(local_ray):
    """Within one worker process the payload is read once and the very object is kept; another run's payload
    replaces it. Checked inside one task, so the test does not depend on which worker Ray picks."""
    from edgeopt.engine.cluster_worker import run_payload

    @ray.remote
    def reads(first, other):
        a, b = run_payload(first), run_payload(first)
        c = run_payload(other)
        return a is b, float(a[0].sum()), float(c[0].sum()), run_payload(other) is c

    same, a_sum, c_sum, kept = ray.get(reads.remote([ray.put((torch.ones(1000), 1))],
                                                    [ray.put((torch.zeros(1000), 1))]))
    assert same and kept and a_sum == 1000.0  # read once, kept
    assert c_sum == 0.0  # a new run's payload is read, not the last one's
