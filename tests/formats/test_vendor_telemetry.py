"""OpenVINO's and NNCF's telemetry stays out of edgeopt's process unless the user opted in."""

import subprocess
import sys

import pytest

pytest.importorskip("openvino")

PROBE = """
import sys
{first}
import torch, openvino as ov
import openvino.tools.ovc.telemetry_utils as ovc_telemetry
ov.convert_model(torch.nn.Conv2d(3, 4, 3), example_input=torch.randn(1, 3, 8, 8))
print(ovc_telemetry.tm.__name__)
"""


def _run(home, first: str) -> str:
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", PROBE.format(first=first)], env=env, capture_output=True,
                         text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_no_consent_recorded_conversions_send_nothing(tmp_path):
    assert _run(tmp_path, "import edgeopt") == "openvino.tools.ovc.telemetry_stub"
    # the real sender writes a client id under ~/intel on its first event
    assert not (tmp_path / "intel").exists()


def test_without_edgeopt_openvino_would_send(tmp_path):
    # what the test above prevents: OpenVINO's default where no consent was recorded
    assert _run(tmp_path, "") == "openvino_telemetry"
    assert (tmp_path / "intel").exists()


def test_a_user_who_opted_in_keeps_it(tmp_path):
    (tmp_path / "intel").mkdir()
    (tmp_path / "intel" / "openvino_telemetry").write_text("1\n")
    assert _run(tmp_path, "import edgeopt") == "openvino_telemetry"


def test_openvino_imported_first_is_left_as_it_was(tmp_path):
    assert _run(tmp_path, "import openvino, edgeopt") == "openvino_telemetry"
