"""`cairn user ...`: the people and programs that may call the API, and their roles.

A user's token is made here, on the caller's machine: 256 random bits, shown
once. Only its SHA-256 travels to the cluster and into the log.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Optional

import typer

from appliance.cli.job import Session, command
from appliance.client.jobs import operation

app = typer.Typer(help="API users: add (with a new token), remove, set a role, list.", no_args_is_help=True)

ROLE_HELP = "admin, operator or read-only."


@command(app, name="add", kind="write")
def user_add(
    session: Session,
    name: str = typer.Argument(..., metavar="USER", help="The user's name."),
    role: str = typer.Option("operator", "--role", "-r", help=ROLE_HELP),
) -> None:
    """Add a user with a new API token, printed once: the cluster keeps only its hash."""
    token = secrets.token_urlsafe(32)
    credential_hash = hashlib.sha256(token.encode("utf-8")).hexdigest()
    if session.run([operation("user_add", name=name, role=role, credential_hash=credential_hash)]) is None:
        typer.echo(f"Token for user {name} (valid once that job succeeds; it is shown only now, keep it safe):")
    else:
        typer.echo(f"Token for user {name} (shown only now; keep it safe, the cluster stores only its hash):")
    typer.echo(token)


@command(app, name="remove", kind="write")
def user_remove(session: Session, name: str = typer.Argument(..., metavar="USER", help="The user's name.")) -> None:
    """Remove a user; their tokens stop working."""
    session.run([operation("user_remove", name=name)])


@command(app, name="set-role", kind="write")
def user_set_role(
    session: Session,
    name: str = typer.Argument(..., metavar="USER", help="The user's name."),
    role: str = typer.Argument(..., metavar="ROLE", help=ROLE_HELP),
) -> None:
    """Give a user another role."""
    session.run([operation("user_set_role", name=name, role=role)])


@command(app, name="list", kind="list")
def user_list(session: Session, names: Optional[list[str]] = typer.Argument(
        None, metavar="[USER]...", help="Only these users, in this order.")) -> None:
    """List users and their roles (needs the admin role)."""
    session.show_list("user", "/api/v1/users", names)
