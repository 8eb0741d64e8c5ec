"""Installed the way users install: the wheel holds every sub-package, and every command works with the base
install plus the extra the README names (optional extras are named in one line when missing)."""

import sys

import pytest
import torch
from paths import ROOT
from setuptools import find_packages

from edgeopt.errors import BackendMissingError


def test_every_source_folder_is_a_discovered_package():
    # a folder without __init__.py is a namespace package that package discovery (and so the wheel) leaves out
    folders = {p.parent for p in (ROOT / "edgeopt").rglob("*.py") if "__pycache__" not in p.parts}
    dotted = {".".join(f.relative_to(ROOT).parts) for f in folders}
    found = set(find_packages(str(ROOT), include=["edgeopt", "edgeopt.*"]))
    assert dotted <= found, f"left out of the wheel: {sorted(dotted - found)}"
    assert "edgeopt.inputs.data" in found


def test_setup_discovers_packages_instead_of_listing_them():
    text = (ROOT / "pyproject.toml").read_text()
    assert "packages = [" not in text
    assert "find_packages" in (ROOT / "setup.py").read_text()


def test_timm_families_are_skipped_with_the_extra_named_when_timm_is_missing(monkeypatch):
    from edgeopt.techniques import ARCH_TIMM
    from edgeopt.techniques.retraining.architecture import build, latency_table

    monkeypatch.setitem(sys.modules, "timm", None)  # as with `pip install edgeopt[openvino]`: no timm
    family = sorted(ARCH_TIMM)[0]
    with pytest.raises(BackendMissingError, match=r"edgeopt\[timm\]"):
        build(family, 10, 1)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(10))
    x = torch.randn(1, 1, 32, 32)
    net(x)
    skipped: list[str] = []
    rows = latency_table(net, x, families=[family], max_time_s=0.2, skipped=skipped)
    assert [r["name"] for r in rows] == ["yours"]
    assert len(skipped) == 1 and family in skipped[0] and "edgeopt[timm]" in skipped[0]


def test_plan_runs_without_timm(monkeypatch, tinynet_spec):
    from typer.testing import CliRunner

    from edgeopt.cli import app

    monkeypatch.setitem(sys.modules, "timm", None)
    r = CliRunner().invoke(app, ["plan", "--model", tinynet_spec, "--input-shape", "1,1,16,16", "--target", "local"])
    assert r.exit_code == 0, r.output
    assert "candidates" in r.output.lower()


def test_agent_without_its_extra_names_the_extra(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from edgeopt.cli import app

    for m in ("fastapi", "uvicorn"):  # both absent: the server cannot start even if the check regressed
        monkeypatch.setitem(sys.modules, m, None)
    token = tmp_path / "token"
    token.write_text("0123456789abcdef0123\n")
    token.chmod(0o600)
    r = CliRunner().invoke(app, ["agent", "--token-file", str(token)])
    # main() prints a typed error as one line with its exit code (2); the runner sees the error itself
    assert isinstance(r.exception, BackendMissingError) and r.exception.exit_code == 2, r.output
    assert "edgeopt[agent]" in str(r.exception)


def test_agent_client_without_httpx_names_the_extra(monkeypatch):
    from edgeopt.remote.client import AgentClient

    monkeypatch.setitem(sys.modules, "httpx", None)
    with pytest.raises(BackendMissingError, match=r"edgeopt\[agent\]"):
        AgentClient("http://127.0.0.1:9", "0123456789abcdef0123")._request("GET", "/health")
