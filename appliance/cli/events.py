"""`cairn events ...`: build, verify, replay, checkpoint and export event files."""

import typer

app = typer.Typer(help="Event files: demo history, verify, replay, checkpoint, export.", no_args_is_help=True)


@app.command()
def verify(file: str) -> None:
    """Check a record file's chain and that every payload decodes."""
