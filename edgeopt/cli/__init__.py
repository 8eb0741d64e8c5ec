"""Command line. Every command builds its arguments and calls the same functions as the Python API.

Exit codes: 0 success; 1 no candidate met the constraints / a gate failed; 2 bad input (one line on
stderr, no traceback; EDGEOPT_DEBUG=1 shows it)."""

from __future__ import annotations

import os
import sys

import typer

from edgeopt.cli import (  # noqa: F401  (registers the commands)
    agent,
    artifact_commands,
    gate_command,
    optimize,
    targets,
    technique_commands,
)
from edgeopt.cli.app import app


def main() -> None:
    from edgeopt.errors import EdgeOptError

    click = _click()
    try:
        code = app(args=sys.argv[1:] or ["--help"], standalone_mode=False)
        if isinstance(code, int) and code:  # typer.Exit(n) and --help come back as exit codes here
            sys.exit(code)
    except click.ClickException as e:  # a flag click itself refuses: one line like ours, not a usage box
        command = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else None
        see = f"edgeopt {command} --help" if command else "edgeopt --help"
        print(f"error: {' '.join(e.format_message().split())} (see `{see}`)", file=sys.stderr)
        sys.exit(e.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(1)
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


def _click():
    """The click typer parses with: recent typer carries its own copy (typer._click), older ones use click."""
    try:
        from typer.core import _click as vendored

        return vendored
    except ImportError:
        import click

        return click
