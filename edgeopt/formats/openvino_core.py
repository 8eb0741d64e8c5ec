"""The process's one OpenVINO Core, NNCF kept on it, and reading an IR with errors that name the file at fault.

One Core per process is a correctness matter, not a speed one (see `openvino_core`)."""

from __future__ import annotations

import contextlib
import functools
import xml.etree.ElementTree as ET
from pathlib import Path

from edgeopt.errors import ArtifactError


@functools.cache
def openvino_core():
    """The process's one `ov.Core`. A Core that loads the CPU plugin installs an alternate signal stack of its
    own on the thread, and when it goes (with the last model compiled on it) puts back the stack that was
    current when it came. Two Cores freed in the order they were made leave the thread's sigaltstack pointing
    at unmapped memory, and the next handled signal (a DataLoader worker's SIGCHLD, Ctrl-C, the SIGALRM of
    edgeopt's time limit) kills the process with SIGSEGV. One Core that lives as long as the process never
    hands back a freed stack. Options go in each `compile_model` call's config, never `set_property`: a plain
    compile on this Core must stay what a user's plain compile is."""
    import openvino as ov

    return ov.Core()


@contextlib.contextmanager
def nncf_on_shared_core():
    """NNCF compiles on Cores of its own (`ov.Core()` in its inference engine, `ov.compile_model` in accuracy
    control), freed whenever Python drops them, in any order: the crash `openvino_core` explains. NNCF takes
    no Core argument, so while it runs both names hand out the process's Core (every option NNCF needs goes in
    its compile calls' config)."""
    import openvino as ov
    import openvino._ov_api as api

    core, saved = openvino_core(), (ov.Core, api.Core)

    def shared(*args, **kwargs):
        return core if not args and not kwargs else saved[0](*args, **kwargs)

    ov.Core = api.Core = shared
    try:
        yield
    finally:
        ov.Core, api.Core = saved


def read_ir(path: Path, core=None):
    """`core.read_model`, with an error that names the file at fault: OpenVINO's own reads only "Exception from
    src/inference/src/cpp/core.cpp:84:" on its first line. An .xml whose root is not <net> is refused before
    OpenVINO tries every frontend on it (each prints its own parse error)."""
    path = Path(path)
    core = core or openvino_core()
    if path.suffix.lower() == ".xml":
        root = _xml_root(path)
        if root.tag != "net" or "version" not in root.attrib:
            what = f"its root element is <{root.tag}>, not <net>" if root.tag != "net" else "<net> has no version"
            raise ArtifactError(f"{path} is not an OpenVINO IR: {what}")
    try:
        return core.read_model(str(path))
    except Exception as e:
        raise ArtifactError(_ir_problem(path, e)) from None


def _xml_root(path: Path):
    try:
        with open(path, "rb") as f:  # the first element only: the rest is read once, by OpenVINO
            for _, elem in ET.iterparse(f, events=("start",)):
                return elem
    except ET.ParseError as e:
        raise ArtifactError(f"{path} is not well-formed XML ({e}): re-export the OpenVINO IR") from None
    except OSError as e:
        raise ArtifactError(f"cannot read {path}: {e.strerror or e}") from None
    raise ArtifactError(f"{path} is empty: re-export the OpenVINO IR")


def _ir_problem(path: Path, error: Exception) -> str:
    """One line for an IR OpenVINO refused: broken XML, a missing or short .bin, else OpenVINO's own reason."""
    if path.suffix.lower() == ".xml":
        try:
            root = ET.parse(path).getroot()
        except ET.ParseError as e:
            return f"{path} is not well-formed XML ({e}): re-export the OpenVINO IR"
        need = 0
        for data in root.iter("data"):
            try:
                need = max(need, int(data.get("offset", "")) + int(data.get("size", "")))
            except ValueError:
                continue
        weights = path.with_suffix(".bin")
        if need and not weights.is_file():
            return f"{weights} is missing: {path.name} keeps its weights in it (copy both files together)"
        if need and weights.stat().st_size < need:
            return (f"{weights} holds {weights.stat().st_size} bytes but {path.name} needs {need}: it is truncated "
                    "or belongs to another model")
    return f"OpenVINO cannot read {path}: {openvino_reason(error)}"


def openvino_reason(error: Exception) -> str:
    """The informative line of an OpenVINO exception, past its "Exception from <file>:<line>:" and
    "Check '...' failed at ..." lines."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Exception from", "Check '"))]
    return (useful or lines or [type(error).__name__])[0][:300]
