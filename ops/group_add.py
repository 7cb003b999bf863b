"""Add a node group; group names are unique."""

import random
from dataclasses import dataclass, replace

from appliance.model import events as ev
from appliance.model.errors import WRONG_INPUT, PrereqError
from appliance.model.ids import group_id
from ops import _common
from ops.base import Claims, Plan, new_name, one_step

NAME = "group_add"
OPCODE = "GROUP_ADD"
ROLE = "admin"
DRAIN_EXEMPT = False
BEFORE_INIT = False
REFERENCES = {}


@dataclass(frozen=True)
class Params:
    name: str
    group_id: str = ""


def prepare(state, params: Params, rng: random.Random) -> Params:
    return params if params.group_id else replace(params, group_id=group_id(f"{rng.getrandbits(48):012x}"))


def claims(state, params: Params) -> Claims:
    return Claims(groups=frozenset({new_name(params.name)}))


def check(state, params: Params) -> None:
    _common.group_name(state, params.name)
    if not params.group_id:
        raise PrereqError(WRONG_INPUT, "group_id missing: run ops.base.prepared() before check")


def plan(state, params: Params) -> Plan:
    return one_step(f"adding group {params.name}", ev.GroupAdded(params.group_id, params.name))
