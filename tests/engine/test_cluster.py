"""The candidate search on a local Ray cluster: families built and screened as tasks choose what the serial
search chooses, with the same accuracies; a worker lost mid-task costs only that task; `--cluster` without Ray
installed is a one-line error naming the extra."""

import os

import pytest
import smallnet
import torch
from cliruns import assert_one_line_error
from cliruns import run as run_cli

import edgeopt
from edgeopt.engine import cluster
from edgeopt.errors import ConfigError

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


def _search(parts, out, executor=None):
    from edgeopt.config import make_context
    from edgeopt.engine.build import Builder
    from edgeopt.engine.cache import CandidateCache
    from edgeopt.engine.search import Search

    net, splits, eval_b, base, plan = parts
    builder = Builder(net=net, example=torch.randn(64, 1, 8, 8), splits=splits, eval_b=eval_b, batch=64,
                      reference=None, out_dir=out, threads=1)
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
    return _search(parts, tmp_path_factory.mktemp("serial"))


def test_families_run_as_tasks_and_choose_what_the_serial_search_chooses(local_ray, serial, parts, tmp_path):
    executor = cluster.RayExecutor("local:2")
    result = _search(parts, tmp_path, executor)
    assert _outcome(result) == _outcome(serial)  # every candidate: same status, same accuracy, same reason
    assert [c for c in serial.candidates if c.status == "ok" and c.structure != "original"]  # something to choose
    # one task per family, the two families at once; every level either bisection screened was built there
    assert executor.tasks == 2 and result.trace[0].startswith("cluster local:2: 2 task(s) built and screened 5 ")
    assert result.trace[1:] == serial.trace  # the same walk, on the same numbers
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
