"""The Typer application object; command modules attach to it."""

import typer

app = typer.Typer(
    name="edgeopt", no_args_is_help=False, add_completion=False, pretty_exceptions_enable=False,
    help="Make PyTorch vision models fit their deployment target: decide which compression fits, "
         "apply it for real, export, and measure latency and accuracy on the target.",
)
