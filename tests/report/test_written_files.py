"""Everything edgeopt writes (reports, cache entries, JUnit, artifacts) honours the user's umask."""

import os

import pytest
import torch
from torch import nn


@pytest.fixture
def umask_002():
    old = os.umask(0o002)
    yield 0o664
    os.umask(old)


def test_everything_written_honours_the_umask(tmp_path, umask_002):
    from edgeopt.engine.cache import CandidateCache
    from edgeopt.formats.onnx import export_onnx
    from edgeopt.report import write_atomic
    from edgeopt.report.gate import Check, Subject, write_junit

    write_atomic(tmp_path / "report.json", "{}")
    CandidateCache(tmp_path).put("measure", "k", {"a": 1})
    write_junit(tmp_path / "junit.xml", [Check("c", True, "ok")], Subject("s", "n", None, None))
    onnx_path = export_onnx(nn.Sequential(nn.Linear(4, 3)).eval(), torch.randn(1, 4), tmp_path / "m.onnx").path
    for path in (tmp_path / "report.json", tmp_path / "cache" / "measure-k.json", tmp_path / "junit.xml", onnx_path):
        assert (path.stat().st_mode & 0o777) == umask_002, f"{path.name}: {oct(path.stat().st_mode & 0o777)}"
