"""`edgeopt optimize`'s own defaults, checked in-process without a search (the pipeline's run is replaced)."""

import pytest
from typer.testing import CliRunner

import edgeopt.engine.pipeline as pipeline
from edgeopt.cli.app import app
from edgeopt.decide.policy import DEMO_TIME_BUDGET_S


@pytest.fixture
def seen(monkeypatch):
    got = []
    monkeypatch.setattr(pipeline, "run", lambda cfg, **kw: got.append(cfg))  # None: nothing to print
    return got


@pytest.mark.parametrize("args, budget", [
    ([], DEMO_TIME_BUDGET_S),  # the quick start: bounded
    (["--time-budget", "300"], 300.0),  # the user's own budget wins
    (["--model", "torchvision:resnet18", "--input-shape", "1,3,32,32"], None),  # not the demo: unbounded
])
def test_the_quick_start_runs_with_a_default_time_budget(tmp_path, seen, args, budget):
    r = CliRunner().invoke(app, ["optimize", "--out", str(tmp_path / "out"), *args])
    assert r.exit_code == 0, r.output
    assert seen[0].deploy.time_budget_s == budget
