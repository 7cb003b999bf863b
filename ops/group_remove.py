"""Remove an empty node group; the cluster's default group stays."""

from dataclasses import dataclass

from appliance.model import events as ev
from appliance.model.errors import WRONG_STATE, PrereqError
from ops import _common
from ops.base import Claims, Plan, one_step, no_prepare

NAME = "group_remove"
OPCODE = "GROUP_REMOVE"
ROLE = "admin"
DRAIN_EXEMPT = False
BEFORE_INIT = False
REFERENCES = {"group": "group"}
prepare = no_prepare


@dataclass(frozen=True)
class Params:
    group: str


def claims(state, params: Params) -> Claims:
    return Claims(groups=frozenset({_common.claim_key(state, "group", params.group)}))


def check(state, params: Params) -> None:
    found = _common.group(state, params.group)
    if found.id == state.cluster.default_group:
        raise PrereqError(WRONG_STATE, f"Group '{found.name}' is the cluster's default group and cannot be removed")
    members = sorted(n.name for n in state.nodes.values() if n.group == found.id)
    if members:
        raise PrereqError(WRONG_STATE, f"Group '{found.name}' not empty, has the following node(s): "
                                       f"{', '.join(members)}; assign them to another group first")


def plan(state, params: Params) -> Plan:
    found = _common.group(state, params.group)
    return one_step(f"removing group {found.name}", ev.GroupRemoved(found.id))
