"""`cairn balance`, `cairn capacity` and `cairn iallocator`: Ganeti's hbal, hspace and hail on fastpath."""

import typer


def register(app: typer.Typer) -> None:
    """Add the placement commands to the top-level app."""
