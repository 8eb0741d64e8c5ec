"""`edgeopt targets`: the device profiles edgeopt knows."""

from __future__ import annotations

import json

import typer

from edgeopt.cli.app import app
from edgeopt.cli.common import out


@app.command()
def targets(as_json: bool = typer.Option(False, "--json")) -> None:
    """List target profiles (name, aliases, kind, runtimes, precisions)."""
    from rich.table import Table

    from edgeopt.targets import builtin_targets, list_targets

    profiles = list_targets()
    if as_json:
        out.print_json(json.dumps([p.model_dump() for p in profiles]))
        return
    reg = builtin_targets()
    table = Table(title="edgeopt targets")
    for h in ("name", "aliases", "kind", "arch", "runtimes", "precisions", "channel multiple"):
        table.add_column(h)
    for p in profiles:
        table.add_row(p.name, ", ".join(reg.aliases_of(p.name)), p.kind, p.arch, ", ".join(p.runtimes),
                      ", ".join(p.precisions), str(p.channel_multiple))
    out.print(table)
