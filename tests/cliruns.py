"""The CLI run as a user runs it (a subprocess, the debug variable unset), and the one-line error check."""

import os
import subprocess
import sys


def run(*args, env_extra=None, timeout=600):
    env = {**os.environ, **(env_extra or {})}
    env.pop("EDGEOPT_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "edgeopt", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def assert_one_line_error(p, pattern):
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and pattern in lines[0], p.stderr
