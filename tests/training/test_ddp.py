import json
import os
import subprocess
import sys

import pytest
import smallnet
import torch
from paths import TESTS

from edgeopt.training import fit, top1

HERE = TESTS


def test_two_gloo_processes_train_like_one(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(HERE / "ddp_worker.py"), str(tmp_path), "3"]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=HERE.parent)
    except subprocess.TimeoutExpired:
        pytest.fail("torchrun with 2 gloo processes did not finish within 240 s")
    assert proc.returncode == 0, proc.stderr[-2000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in ranks)
    # DDP averages gradients: both processes end with the same weights, hence the same accuracy
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-6)
    assert ranks[0]["top1"] == ranks[1]["top1"]
    torch.set_num_threads(2)
    train, val = smallnet.digits16(size=8)
    single = smallnet.make()
    res = fit(single, train, epochs=3, lr=0.05)
    assert res.world_size == 1
    # each rank saw half the batches per epoch, so half the steps: same range, not the same numbers
    assert ranks[0]["top1"] > 70.0 and abs(ranks[0]["top1"] - top1(single, val)) < 20.0
    assert ranks[0]["losses"][-1] < ranks[0]["losses"][0]
