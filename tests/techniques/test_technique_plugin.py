"""Adding a technique is one module: a technique declared in a test module (tests/faketechnique.py: config,
handler, proposer, measured choice) is planned, built by the search, recorded in report.json and turned into a
report decision without touching any other module; unregistering it puts the registries back."""

import contextlib
import importlib
import json
import sys

import pytest

import edgeopt
from edgeopt.techniques import CHOICES, PROPOSERS, TECHNIQUES, forget, parse_step


@contextlib.contextmanager
def declared():
    sys.modules.pop("faketechnique", None)  # its decorators register on import
    module = importlib.import_module("faketechnique")
    try:
        yield module
    finally:
        forget(module.NAME)
        sys.modules.pop("faketechnique", None)


@pytest.fixture
def fake():
    with declared() as module:
        yield module


def test_declaring_registers_config_handler_proposer_and_choice(fake):
    assert "scale_head" in TECHNIQUES and "scale_head" in PROPOSERS and "scale_head" in CHOICES
    step = parse_step({"technique": "head_scaling", "factor": 0.5})  # its alias resolves
    assert isinstance(step, fake.ScaleHeadConfig) and step.factor == 0.5


def test_fake_technique_is_planned(fake):
    from edgeopt.config import ModelSummary, make_context
    from edgeopt.decide.plan import plan
    from edgeopt.targets import load_target

    summary = ModelSummary(params=10**6, macs=10**8, input_shape=[1, 3, 64, 64], num_outputs=10,
                           prunable_groups=12, min_channels=64, layers={"conv": 10, "linear": 1})
    local = load_target("x86-avx2").model_copy(update={"detected": False})
    p = plan(make_context(target="x86-avx2"), load_target("x86-avx2"), summary, local, ["onnxruntime"])
    mine = [c for c in p.candidates if c.structure == "scale-head"]
    assert mine and all(c.reason.startswith("fake technique: the head's weights scaled") for c in mine)
    assert isinstance(mine[0].steps[0], fake.ScaleHeadConfig)
    assert p.candidates[-1].structure == "scale-head"  # order 95: after every built-in proposer
    assert any(d.technique == "scale_head" and d.decision == "applied" for d in p.decisions)


def test_fake_technique_is_built_recorded_and_reported(fake, tmp_path, tiny_plain, example, fast_bench):
    report = edgeopt.optimize(tiny_plain, example, out_dir=tmp_path, runtimes=["onnxruntime"],
                              techniques=["scale_head"], max_accuracy_drop=100.0, cache=False,
                              bench_config=fast_bench, time_budget_s=120)
    data = json.loads((tmp_path / "report.json").read_text())
    mine = [c for c in data["candidates"] if c["id"].startswith("scale-head@")]
    # built, exported and measured; a model no faster than the original (factor 1.0) may lose the final check
    # measured beside it on a loaded machine, which says so
    assert mine and mine[0]["latency_ms"] is not None, mine
    assert mine[0]["status"] == "ok" or mine[0]["reason"].startswith("measured again beside"), mine[0]["reason"]
    step = mine[0]["steps"][0]
    assert step["technique"] == "scale_head" and step["params"]["record"] == {"layer": "fc", "factor": 1.0}
    decisions = {d["technique"]: d for d in data["decisions"]}
    assert decisions["scale_head"]["decision"] == "applied"  # the proposer's
    assert "scale-head: fc x 1.0" in decisions["head_scaled"]["reason"]  # the measured choice's
    assert report.chosen is not None


def test_forgetting_a_technique_puts_the_registries_back():
    before = (TECHNIQUES.names(), PROPOSERS.names(), CHOICES.names())
    with declared():
        assert "scale_head" in TECHNIQUES
    assert (TECHNIQUES.names(), PROPOSERS.names(), CHOICES.names()) == before
    assert "head_scaling" not in TECHNIQUES
