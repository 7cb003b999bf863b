"""The `cairn` command line: thin typer commands over the model, ops, fastpath and the API.

Each command group lives in its own module and registers itself here.
"""

import typer

from appliance.cli import events as _events
from appliance.cli import placement as _placement

app = typer.Typer(
    name="cairn",
    help="Cairn: highly available VMs on a few commodity servers, managed through one replicated event log.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.add_typer(_events.app, name="events")
_placement.register(app)


def main() -> None:
    """Console-script entry point."""
    app()
