"""Rename a node group; its id and nodes stay, and the new name must be free."""

from dataclasses import dataclass

from appliance.model import events as ev
from ops import _common
from ops.base import Claims, Plan, one_step

NAME = "group_rename"
OPCODE = "GROUP_RENAME"
ROLE = "admin"


@dataclass(frozen=True)
class Params:
    group: str
    new_name: str


def claims(state, params: Params) -> Claims:
    found = state.group_by_name(params.group)
    return Claims(groups=frozenset({found.name if found else params.group, params.new_name}))


def check(state, params: Params) -> None:
    _common.group(state, params.group)
    _common.group_name(state, params.new_name)


def plan(state, params: Params) -> Plan:
    found = _common.group(state, params.group)
    return one_step(f"renaming group {found.name} to {params.new_name}", ev.GroupRenamed(found.id, params.new_name))
