"""Command line. Every command builds its arguments and calls the same functions as the Python API.

Exit codes: 0 success; 1 no candidate met the constraints / a gate failed; 2 bad input (one line on
stderr, no traceback; EDGEOPT_DEBUG=1 shows it)."""

from __future__ import annotations

import os
import sys

from edgeopt.cli import agent, commands, gate, optimize, structure  # noqa: F401  (registers the commands)
from edgeopt.cli.app import app


def main() -> None:
    from edgeopt.errors import EdgeOptError

    try:
        app()
    except EdgeOptError as e:
        if os.environ.get("EDGEOPT_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # a bug of ours: one line, and the way to see the traceback
        if os.environ.get("EDGEOPT_DEBUG"):
            raise
        print(f"internal error: {type(e).__name__}: {e} (set EDGEOPT_DEBUG=1 for the traceback)",
              file=sys.stderr)
        sys.exit(3)
