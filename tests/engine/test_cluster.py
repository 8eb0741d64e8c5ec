"""The candidate search on a local Ray cluster: families built and screened as tasks choose what the serial
search chooses, with the same accuracies; a worker lost mid-task costs only that task; `--cluster` without Ray
installed is a one-line error naming the extra."""

import os

import pytest
import smallnet
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


@pytest.fixture(scope="module")
def digits_run():
    model, train, val = smallnet.trained(size=8)
    from edgeopt.inputs.data import Batches

    return model, dict(eval_data=val.items, calib_data=Batches(train.items[:2]).items, max_accuracy_drop=2.0,
                       runtimes=["onnxruntime"], techniques=["prune"], cache=False, seed=0)


def _outcome(report):
    return [(c.id, c.status, c.accuracy) for c in [report.baseline, *report.candidates]]


def _optimize(digits_run, out, fast_bench, **kw):
    model, run = digits_run
    import copy

    import torch

    return edgeopt.optimize(copy.deepcopy(model), torch.randn(1, 1, 8, 8), out_dir=out, bench_config=fast_bench,
                            **run, **kw)


@pytest.fixture(scope="module")
def serial(digits_run, tmp_path_factory, fast_bench):
    return _optimize(digits_run, tmp_path_factory.mktemp("serial"), fast_bench)


def test_families_run_as_tasks_and_choose_what_the_serial_search_chooses(local_ray, serial, digits_run, tmp_path,
                                                                         fast_bench):
    report = _optimize(digits_run, tmp_path, fast_bench, cluster="local:2")
    assert report.chosen == serial.chosen and report.chosen is not None
    assert _outcome(report) == _outcome(serial)  # every candidate: same status, same accuracy
    trace = report.model["search"]["trace"]
    assert trace[0].startswith("cluster local:2: ") and trace[1:] == serial.model["search"]["trace"]
    built = [c for c in report.candidates if c.status == "ok"]
    assert built and all(c.built_on.startswith("ray node ") for c in built)
    assert all(c.built_on is None for c in serial.candidates)  # a serial run says nothing of the kind
    assert len({c.built_on for c in report.candidates if c.built_on}) >= 1


def _dies_once(marker: str):
    def task(*args):
        if not os.path.exists(marker):  # the first try: the worker process dies mid-task
            open(marker, "w").close()
            os._exit(1)
        return cluster._family_task(*args)
    return task


def test_a_worker_lost_mid_task_costs_only_that_task(local_ray, serial, digits_run, tmp_path, fast_bench,
                                                     monkeypatch):
    marker = tmp_path / "died"
    monkeypatch.setattr(cluster, "_family_task", _dies_once(str(marker)))
    report = _optimize(digits_run, tmp_path / "out", fast_bench, cluster="local:2")
    assert marker.exists()  # a worker did die
    assert report.chosen == serial.chosen and _outcome(report) == _outcome(serial)


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
