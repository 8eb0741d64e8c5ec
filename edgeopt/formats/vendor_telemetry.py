"""OpenVINO's and NNCF's usage telemetry, kept out of edgeopt's process unless the user opted in to it.

Both send an event on every model conversion and quantization, each from a forked copy of the whole process
(torch included) that they wait on up to 3 s, because the request can hang without a network. Measured on
a 2-core Xeon: 0.62 s of each `convert_model` and 0.36 s of each `nncf.quantize` of a small model went to it,
and a search exports dozens of candidates, many within the time budget it was given; Ctrl-C also reached the
forked sender, which printed its own KeyboardInterrupt traceback after edgeopt's one-line message.

Where no consent was ever recorded, OpenVINO sends by default; edgeopt then hides the telemetry package from
its process, so that both libraries use the no-op stubs they ship for when it is not installed. A user who
opted in (`opt_in_out --opt_in`, a consent file reading 1) keeps it; one who imported openvino or NNCF
before edgeopt keeps what those imports set up."""

from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGE = "openvino_telemetry"


def consent_file() -> Path:
    """Where openvino_telemetry records the user's answer."""
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA", "")) / "Intel Corporation" / PACKAGE
    return Path.home() / "intel" / PACKAGE


def opted_in() -> bool:
    try:
        return consent_file().read_text().strip().splitlines()[:1] == ["1"]
    except (OSError, RuntimeError, UnicodeDecodeError):  # RuntimeError: no home directory to look in
        return False


def keep_out() -> bool:
    """Hide the telemetry package before openvino / NNCF are imported; True when it is hidden now."""
    if PACKAGE in sys.modules:  # imported already (by the user, or by openvino): theirs to keep
        return sys.modules[PACKAGE] is None
    if opted_in():
        return False
    sys.modules[PACKAGE] = None  # `import openvino_telemetry` raises ImportError: both fall back to their stubs
    return True
