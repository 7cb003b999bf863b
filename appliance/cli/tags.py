"""`cairn tags ...`: tags on the cluster, a node, a group or an instance (add, remove, list)."""

from __future__ import annotations

from typing import Optional
from urllib.parse import quote

import typer

from appliance.cli.instance import hostname
from appliance.cli.job import Session, command, parameter_error
from appliance.cli.output import NotFound
from appliance.client.jobs import operation

app = typer.Typer(help="Tags of the cluster, a node, a group or an instance: add, remove, list.", no_args_is_help=True)

KINDS = ("cluster", "node", "group", "instance")
KIND = typer.Argument(..., metavar="KIND", help="cluster, node, group or instance.")
ITEMS_HELP = "The object's name (none for the cluster), then the tags."
PATHS = {"node": "/api/v1/nodes", "group": "/api/v1/groups", "instance": "/api/v1/instances"}


def target_and_tags(kind: str, items: list[str], need_tags: bool = True) -> tuple[str, list[str]]:
    """The object's name ('' for the cluster) and the tags, from `KIND [NAME] TAG...`."""
    if kind not in KINDS:
        raise typer.BadParameter(f"'{kind}' is not one of {', '.join(KINDS)}", param_hint="KIND")
    target, tags = ("", items) if kind == "cluster" else ((items[0] if items else ""), items[1:])
    if kind != "cluster" and not target:
        raise parameter_error(f"name the {kind} whose tags these are")
    if need_tags and not tags:
        raise parameter_error("give at least one tag")
    return (hostname(target) if kind in ("node", "instance") else target), tags


@command(app, name="add", kind="write")
def tags_add(session: Session, kind: str = KIND,
             items: list[str] = typer.Argument(..., metavar="[NAME] TAG...", help=ITEMS_HELP)) -> None:
    """Add tags (tags already there are kept, not doubled)."""
    target, tags = target_and_tags(kind, items)
    session.run([operation("tags_add", kind=kind, target=target or None, tags=tags)])


@command(app, name="remove", kind="write")
def tags_remove(session: Session, kind: str = KIND,
                items: list[str] = typer.Argument(..., metavar="[NAME] TAG...", help=ITEMS_HELP)) -> None:
    """Remove tags."""
    target, tags = target_and_tags(kind, items)
    session.run([operation("tags_remove", kind=kind, target=target or None, tags=tags)])


@command(app, name="list")
def tags_list(session: Session, kind: str = KIND,
              name: Optional[str] = typer.Argument(None, metavar="[NAME]", help="The object's name (none for the "
                                                                               "cluster).")) -> None:
    """Print the tags of the cluster or of one object, one per line."""
    target, _ = target_and_tags(kind, [name] if name else [], need_tags=False)
    if kind == "cluster":
        row = session.read("/api/v1/cluster")
    elif kind == "group":
        rows = [g for g in session.read(PATHS["group"]) if g.get("name") == target]
        if not rows:
            raise NotFound("group", target)
        row = rows[0]
    else:
        row = session.read(f"{PATHS[kind]}/{quote(target, safe='')}")
    tags = list(row.get("tags") or [])
    if session.output == "json":
        session.show_object(tags, [])
    else:
        for tag in tags:
            typer.echo(tag)
