"""`cairn group ...`: node groups (Ganeti's gnt-group): add, remove, rename, assign nodes, list."""

from __future__ import annotations

from typing import Optional

import typer

from appliance.cli.instance import hostname
from appliance.cli.job import Session, command
from appliance.client.jobs import operation

app = typer.Typer(help="Node groups: add, remove, rename, assign nodes, list.", no_args_is_help=True)

GROUP = typer.Argument(..., metavar="GROUP", help="The group's name.")


@command(app, name="add", kind="write")
def group_add(session: Session, name: str = GROUP) -> None:
    """Add an empty node group."""
    session.run([operation("group_add", name=name)])


@command(app, name="remove", kind="write")
def group_remove(session: Session, name: str = GROUP) -> None:
    """Remove an empty node group."""
    session.run([operation("group_remove", group=name)])


@command(app, name="rename", kind="write")
def group_rename(session: Session, name: str = GROUP,
                 new_name: str = typer.Argument(..., metavar="NEW_NAME", help="The group's new name.")) -> None:
    """Rename a node group."""
    session.run([operation("group_rename", group=name, new_name=new_name)])


@command(app, name="assign-nodes", kind="write")
def group_assign_nodes(
    session: Session,
    name: str = GROUP,
    nodes: list[str] = typer.Argument(..., metavar="NODE...", help="The nodes to move into the group."),
    force: bool = typer.Option(False, "--force", help="Move them even if that splits an instance's nodes "
                                                      "across groups."),
) -> None:
    """Move nodes into a group."""
    session.run([operation("group_assign_nodes", group=name, nodes=[hostname(n) for n in nodes],
                           force=force or None)])


@command(app, name="list", kind="list")
def group_list(session: Session, names: Optional[list[str]] = typer.Argument(
        None, metavar="[GROUP]...", help="Only these groups, in this order.")) -> None:
    """List node groups: Group Nodes Instances by default (-o for others: name, node_cnt, pinst_cnt, tags)."""
    session.show_list("group", "/api/v1/groups", names)
