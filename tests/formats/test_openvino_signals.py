"""OpenVINO Cores and signals: each Core that loads the CPU plugin installs its own alternate signal stack and,
when destroyed, puts back the one that was current when it was made. Two Cores destroyed in creation order
leave the thread's sigaltstack pointing at freed memory, and the next handled signal (a DataLoader worker's
SIGCHLD, Ctrl-C, the SIGALRM of a time limit) kills the process with SIGSEGV. edgeopt compiles on one Core per
process and keeps NNCF on it; these tests take a signal after edgeopt's OpenVINO paths, in a child process so that
a crash is an exit code rather than a dead test run."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from paths import ROOT

pytest.importorskip("openvino")


_PRELUDE = """
import gc, os, signal, sys
import numpy as np
import torch
from torch import nn
sys.path.insert(0, {tests!r})

def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()

def take_a_signal():
    gc.collect()
    got = []
    signal.signal(signal.SIGUSR1, lambda *a: got.append(1))
    os.kill(os.getpid(), signal.SIGUSR1)
    signal.signal(signal.SIGALRM, lambda *a: got.append(2))
    signal.setitimer(signal.ITIMER_REAL, 0.01)
    signal.pause() if len(got) < 2 else None
    print("handled", got, flush=True)
"""


def _child(body: str, tmp_path: Path, pythonpath: Path = ROOT) -> subprocess.CompletedProcess:
    script = tmp_path / "child.py"
    script.write_text(_PRELUDE.format(tests=str(ROOT / "tests")) + textwrap.dedent(body))
    env = {"PYTHONPATH": str(pythonpath), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2",
           "HOME": str(tmp_path), "EDGEOPT_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                          timeout=300, env=env, cwd=tmp_path)


def test_signal_after_compiling_two_models(tmp_path):
    """Export two IRs, load each through edgeopt (a session each), drop them in load order, take signals."""
    p = _child("""
        from edgeopt.formats import backend_for
        import edgeopt
        x = torch.randn(1, 3, 16, 16)
        paths = [edgeopt.export(net(), x, format="openvino", out=f"{sys.argv[1]}/m{i}.xml") for i in range(2)]
        sessions = [backend_for("openvino").load(p) for p in paths]
        outputs = [s.run(x.numpy()) for s in sessions]  # no loop variable left holding the last session
        del sessions[0]
        gc.collect()
        del sessions[0]
        take_a_signal()
    """, tmp_path)
    assert p.returncode == 0 and "handled [1, 2]" in p.stdout, (p.returncode, p.stderr[-2000:])


def test_signal_after_nncf_quantization(tmp_path):
    """INT8 through NNCF, a per-layer profile, then NNCF's accuracy control, which compiles every model it scores
    with `ov.compile_model` (a Core each, freed in whatever order Python drops them); its validation here counts
    any INT8 layer as a loss, so NNCF reverts layers and compiles several models. Then signals."""
    p = _child("""
        from types import SimpleNamespace
        from edgeopt.formats import backend_for
        from edgeopt.measure.layers import profile_layers
        import edgeopt
        import edgeopt.formats.openvino as ovf

        x = torch.randn(2, 3, 16, 16)
        calib = [torch.randn(2, 3, 16, 16) for _ in range(4)]
        p8 = edgeopt.export(net(), x, format="openvino", precision="int8", out=f"{sys.argv[1]}/q.xml",
                            calib_data=calib, verify=False)
        p32 = edgeopt.export(net(), x, format="openvino", out=f"{sys.argv[1]}/f.xml", verify=False)
        s8 = backend_for("openvino").load(p8, precision="int8")
        rows = profile_layers(p32, "openvino", x.numpy(), runs=2)
        s32 = backend_for("openvino").load(p32)
        del s8, rows
        gc.collect()
        del s32

        def rigged(example):
            def validate(compiled, data):
                ops = compiled.get_runtime_model().get_ordered_ops()
                int8 = any(str(o.get_rt_info()["runtimePrecision"].astype(str)).lower() in ("i8", "u8")
                           for o in ops if "runtimePrecision" in o.get_rt_info())
                return 0.5 if int8 else 1.0
            return validate

        ovf._accuracy_fn = rigged
        evals = SimpleNamespace(labelled=True, items=[(torch.randn(2, 3, 16, 16), torch.tensor([0, 1]))] * 2)
        res = ovf.export_openvino(net(), x, f"{sys.argv[1]}/ac.xml", precision="int8", calib=calib,
                                  options={"eval_data": evals, "max_accuracy_drop": 1.0})
        assert "accuracy_control" in res.info, res.info
        del res
        take_a_signal()
    """, tmp_path)
    assert p.returncode == 0 and "handled [1, 2]" in p.stdout, (p.returncode, p.stderr[-2000:])
