"""The formats table is the single source: every row is complete and consistent, and a format registered
inside a test (tests/npzformat.py) is usable by plan, export, benchmark, per-layer profiling, bundles,
target profiles and the agent without touching any other module."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from paths import ROOT, TESTS
from torch import nn

import edgeopt
from edgeopt.errors import TargetError
from edgeopt.formats import BACKENDS, backend_for, backend_for_artifact, device_commands, resolve
from edgeopt.targets import load_target

ROWS = [b for _, b in BACKENDS.items()]


@pytest.mark.parametrize("row", ROWS, ids=lambda b: b.format)
def test_every_reference_of_a_row_resolves(row):
    refs = [row.export_ref, row.load_ref, row.commands_ref, row.profile_ref, row.device_load_ref, row.executed_ref]
    for ref in filter(None, refs):
        assert callable(resolve(ref)), ref


@pytest.mark.parametrize("row", ROWS, ids=lambda b: b.format)
def test_a_row_is_found_by_its_names_and_its_files(row):
    assert backend_for(row.format) is row and backend_for(row.runtime) is row
    main = Path("out") / f"cand{row.suffix}"
    assert backend_for_artifact(main) is row
    files = row.artifact_files(main)
    assert files[-1] == main and len(files) == 1 + len(row.companions)  # companions first, main file last
    assert all(f.name.startswith("cand.") for f in files)
    assert "fp32" in row.precisions and all(f in BACKENDS.names() for f in row.accepts)


@pytest.mark.parametrize("row", ROWS, ids=lambda b: b.format)
def test_a_row_gives_device_commands_and_validates_in_a_profile(row, tmp_path):
    target = load_target("x86-avx2")
    cmds = row.commands(target, f"model{row.suffix}", "fp32")
    assert cmds["run"] and all(isinstance(line, str) for line in cmds["build"] + cmds["run"])
    f = tmp_path / "board.yaml"
    f.write_text(f"name: board\nkind: cpu\narch: x\nruntimes: [{row.runtime}]\nprecisions: [fp32]\n")
    assert load_target(str(f)).runtimes == [row.runtime]


def test_planner_views_follow_the_rows():
    from edgeopt.decide.plan import FORMAT_OF_RUNTIME, PRECISIONS_OF_FORMAT

    assert dict(FORMAT_OF_RUNTIME) == {b.runtime: b.format for b in ROWS}
    assert dict(PRECISIONS_OF_FORMAT) == {b.format: b.precisions for b in ROWS}
    assert "int8" in PRECISIONS_OF_FORMAT["onnx"]  # the planner no longer keeps a stale fp32-only copy


def test_the_table_imports_nothing_heavy():
    code = ("import sys, edgeopt.formats; heavy = {'torch', 'onnx', 'onnxruntime', 'openvino', 'tensorrt', 'numpy'};"
            "print(sorted(heavy & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_runtime_names_are_spelled_out_in_few_modules_outside_formats():
    pattern = re.compile(r"[\"'](openvino|onnxruntime|tensorrt)[\"']")
    spelled = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "edgeopt").rglob("*.py")
                     if "formats" not in p.relative_to(ROOT / "edgeopt").parts[:1] and pattern.search(p.read_text()))
    assert len(spelled) <= 5, spelled


# --- a format registered inside the test --------------------------------------------------------------------

@pytest.fixture
def npz(monkeypatch, tmp_path):
    import npzformat

    monkeypatch.setitem(BACKENDS._items, "npz", npzformat.ROW)
    monkeypatch.setitem(BACKENDS._aliases, "npzrt", "npz")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    return model, torch.randn(2, 1, 4, 4)


def _npz_target(tmp_path) -> Path:
    f = tmp_path / "npz-board.yaml"
    f.write_text("name: npz-board\nkind: cpu\narch: x86_64\nruntimes: [npzrt]\nprecisions: [fp32]\n")
    return f


def test_unregistered_runtime_in_a_profile_is_refused(tmp_path):
    with pytest.raises(TargetError, match="unknown runtime 'npzrt'"):
        load_target(str(_npz_target(tmp_path)))


def test_fake_format_is_planned(npz, tmp_path):
    from edgeopt.config import ModelSummary, make_context
    from edgeopt.decide.plan import plan

    target = load_target(str(_npz_target(tmp_path)))
    summary = ModelSummary(params=200, macs=200, input_shape=[2, 1, 4, 4], num_outputs=4, prunable_groups=1,
                           min_channels=8, layers={"linear": 2})
    p = plan(make_context(target=str(_npz_target(tmp_path))), target, summary, target, ["npzrt"])
    assert p.candidates and {c.format for c in p.candidates} == {"npz"}
    assert {c.precision for c in p.candidates} == {"fp32"}


def test_fake_format_exports_benchmarks_and_profiles(npz, tmp_path, fast_bench):
    from edgeopt.measure.artifacts import per_layer

    model, x = npz
    path = edgeopt.export(model, x, format="npz", out=tmp_path / "m.npz")  # verified against PyTorch
    assert path.suffix == ".npz" and path.with_suffix(".shape.json").is_file()
    r = edgeopt.benchmark(path, config=fast_bench, threads=1)  # the runtime comes from the suffix
    assert r.runtime == "npzrt" and r.precision_executed == "fp32 (numpy)" and r.latency.n >= 10
    layers = per_layer(path, threads=1, runs=3)
    assert [row.op for row in layers if row.op == "linear"] == ["linear", "linear"]
    cmds = device_commands(load_target(str(_npz_target(tmp_path))), "model.npz", "fp32", "npzrt")
    assert cmds["run"] == ["edgeopt benchmark model.npz --precision fp32"]


def test_fake_format_is_measured_by_the_agent(npz, tmp_path, monkeypatch):
    from agenthelp import TOKEN, agent_in_process

    from edgeopt.remote.client import measure_remote

    model, x = npz
    path = edgeopt.export(model, x, format="npz", out=tmp_path / "m.npz")
    monkeypatch.setenv("PYTHONPATH", str(TESTS))  # the worker imports the row's module
    with agent_in_process(tmp_path / "work") as (url, _):
        res = measure_remote({"m": path}, url, TOKEN, max_time_s=0.3, threads=1)["m"]
    assert res.runtime == "npzrt" and res.precision_executed == "fp32 (numpy)" and res.latency.n >= 10
    assert res.input_shape == [2, 1, 4, 4]


def test_fake_format_is_published_with_its_companion(npz, tmp_path):
    from edgeopt.formats import artifact_files

    model, x = npz
    path = edgeopt.export(model, x, format="npz", out=tmp_path / "m.npz")
    assert [f.name for f in artifact_files(path)] == ["m.shape.json", "m.npz"]
    assert json.loads(path.with_suffix(".shape.json").read_text()) == [2, 1, 4, 4]
    s = backend_for("npzrt").load(path)
    assert np.allclose(s.run(x.numpy()), model(x).detach().numpy(), atol=1e-5)


def test_fake_format_is_published_and_bundled_with_every_file(npz, tmp_path):
    from edgeopt.engine.report_stage import publish_chosen
    from edgeopt.formats import artifact_files
    from edgeopt.report import Candidate, Report
    from edgeopt.report.bundle import write_bundle

    model, x = npz
    edgeopt.export(model, x, format="npz", out=tmp_path / "cand.npz")
    cand = Candidate(id="c", status="ok", artifact="cand.npz", runtime="npzrt", precision="fp32")
    report = Report(edgeopt_version="t", context={}, target={}, environment={}, candidates=[cand], chosen="c")
    publish_chosen(report, tmp_path)
    assert (tmp_path / "model.npz").is_file() and (tmp_path / "model.shape.json").is_file()
    assert report.model["chosen_artifact"] == "model.npz"
    target = load_target(str(_npz_target(tmp_path)))
    bundle = write_bundle(report, tmp_path, target, artifact_files, device_commands)
    meta = json.loads((bundle / "bundle.json").read_text())
    assert set(meta["files"]) == {"model.npz", "model.shape.json"}
    assert "edgeopt benchmark model.npz" in (bundle / "commands.sh").read_text()
