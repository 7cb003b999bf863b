"""Rename a node group; its id and nodes stay, and the new name must be free."""

from dataclasses import dataclass

from appliance.model import events as ev
from ops import _common
from ops.base import Claims, Plan, new_name, no_prepare, one_step

NAME = "group_rename"
OPCODE = "GROUP_RENAME"
ROLE = "admin"
DRAIN_EXEMPT = False
BEFORE_INIT = False
REFERENCES = {"group": "group"}
prepare = no_prepare


@dataclass(frozen=True)
class Params:
    group: str
    new_name: str


def claims(state, params: Params) -> Claims:
    return Claims(groups=frozenset({_common.claim_key(state, "group", params.group), new_name(params.new_name)}))


def check(state, params: Params) -> None:
    _common.group(state, params.group)
    _common.group_name(state, params.new_name)


def plan(state, params: Params) -> Plan:
    found = _common.group(state, params.group)
    return one_step(f"renaming group {found.name} to {params.new_name}", ev.GroupRenamed(found.id, params.new_name))
