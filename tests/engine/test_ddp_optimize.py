"""A whole `optimize --retrain` under torchrun: rank 0 searches, exports, measures and reports; the other rank
only joins the DDP fine-tuning of each structure rank 0 builds (edgeopt/engine/distributed.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import smallnet
import torch
from paths import TESTS

from edgeopt.engine import distributed, pipeline, search_stage
from edgeopt.inputs.data import DataSplits
from edgeopt.techniques import PruneConfig
from edgeopt.training import ddp

HERE = TESTS


def test_followers_build_what_rank_0_announces(monkeypatch, tiny, example):
    sent = []
    monkeypatch.setattr(ddp, "broadcast", lambda obj=None: sent.append(obj))
    leader = distributed.Leader()
    prune = [PruneConfig(ratio=0.5)]  # planned steps are typed technique configs
    leader("a", prune, None)
    leader("b", prune, "a")  # b = a pruned again: followers must keep a's model
    leader("c", prune, "missing")
    leader.close()
    leader.close()  # a second close (finally after an early one) sends nothing
    assert sent[-1] is None and len(sent) == 4
    assert sent[0] == ("a", [PruneConfig(ratio=0.5).model_dump()], None) and sent[0][1][0]["technique"] == "prune"

    inbox = iter(sent)
    monkeypatch.setattr(ddp, "broadcast", lambda obj=None: next(inbox))
    starts, real = [], distributed.build_structure

    def spy(model, *args, **kwargs):
        starts.append(model)
        assert kwargs["teacher"] is tiny  # the teacher is always the original model, as on rank 0
        built = real(model, *args, **kwargs)
        starts.append(built.model)
        return built

    monkeypatch.setattr(distributed, "build_structure", spy)
    assert distributed.follow(tiny, example, DataSplits(None, None, None, None)) == 3  # "c" failed: recorded
    assert starts[0] is tiny and starts[2] is starts[1]  # b starts from a's model
    assert sum(p.numel() for p in starts[3].parameters()) < sum(p.numel() for p in starts[1].parameters())


def test_rank_0_releases_the_followers_when_it_fails(monkeypatch, tiny, example, tmp_path):
    sent = []
    monkeypatch.setattr(ddp, "world", lambda: (0, 2))
    monkeypatch.setattr(ddp, "broadcast", lambda obj=None: sent.append(obj))
    monkeypatch.setattr(distributed, "share_cores", lambda threads: None)

    def broken(*args, **kwargs):
        raise RuntimeError("planner bug")

    monkeypatch.setattr(search_stage, "make_plan", broken)
    with pytest.raises(RuntimeError, match="planner bug"):
        pipeline.optimize(tiny, example, out_dir=tmp_path / "out")
    assert sent == [None]  # the sentinel went out anyway


def test_a_follower_returns_none_and_writes_nothing(monkeypatch, tiny, example, tmp_path):
    monkeypatch.setattr(ddp, "world", lambda: (1, 2))
    monkeypatch.setattr(ddp, "broadcast", lambda obj=None: None)  # rank 0 is already done
    monkeypatch.setattr(distributed, "share_cores", lambda threads: None)
    assert pipeline.optimize(tiny, example, out_dir=tmp_path / "out") is None
    assert list(tmp_path.iterdir()) == []


def test_optimize_under_torchrun_reports_once(tmp_path):
    weights = tmp_path / "smallnet.pth"
    torch.save(smallnet.trained(size=8)[0].state_dict(), weights)  # a trained model: pruning has room to work
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "edgeopt", "optimize", "--model", f"{HERE / 'smallnet.py'}:make", "--weights", str(weights),
           "--input-shape", "1,1,8,8", "--data", f"{HERE / 'smallnet.py'}:splits8", "--retrain",
           "--techniques", "prune,fine_tune", "--runtimes", "onnxruntime", "--epochs", "2",
           "--max-accuracy-drop", "10", "--bench-time", "0.5", "--out", str(out)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail("optimize under torchrun with 2 gloo processes did not finish within 180 s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    # one report, written by rank 0 alone; the follower printed no table and wrote nothing anywhere
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("report.json")] == [Path("out/report.json")]
    # the summary's own line starts with "chosen "; a latency-check line may mention "the chosen model" too
    summary = [line for line in proc.stdout.splitlines() if line.startswith("chosen ")]
    assert proc.stdout.count("report: ") == 1 and len(summary) == 1, proc.stdout[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "smallnet.pth"]
    report = json.loads((out / "report.json").read_text())
    tuned = [s["params"]["record"] for c in report["candidates"] if c["status"] == "ok"
             for s in c["steps"] if s["technique"] == "fine_tune"]
    assert tuned, [(c["id"], c["status"], c["reason"]) for c in report["candidates"]]
    assert all(r["world_size"] == 2 for r in tuned)
    assert report["model"]["search"]["structures_built"] >= 2
