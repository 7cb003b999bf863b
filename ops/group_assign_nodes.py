"""Move nodes into a group.

Like Ganeti, a move that would leave a replicated instance with its primary
and secondary in different groups is refused unless `force` is given (groups
are failure domains and balancing units; a split instance belongs to neither).
Nodes already in the group are left out of the event.
"""

from dataclasses import dataclass

from appliance.model import events as ev
from appliance.model.errors import WRONG_INPUT, WRONG_STATE, PrereqError
from ops import _common
from ops.base import Claims, Plan, one_step, no_prepare

NAME = "group_assign_nodes"
OPCODE = "GROUP_ASSIGN_NODES"
ROLE = "admin"
DRAIN_EXEMPT = False
BEFORE_INIT = False
REFERENCES = {"group": "group", "nodes": "nodes"}
prepare = no_prepare


@dataclass(frozen=True)
class Params:
    group: str
    nodes: tuple
    force: bool = False


def claims(state, params: Params) -> Claims:
    return Claims(nodes=frozenset(_common.claim_key(state, "node", name) for name in params.nodes),
                  groups=frozenset({_common.claim_key(state, "group", params.group)}))


def moving(state, params: Params) -> list:
    """The nodes that change group (those named and not already in it)."""
    target = _common.group(state, params.group)
    found = {n.id: n for n in (_common.node(state, name) for name in params.nodes)}
    return [n for n in found.values() if n.group != target.id]


def split_instances(state, target_id: str, moved: list) -> list[str]:
    """Names of replicated instances whose two nodes would end up in different groups."""
    group_after = {n.id: target_id for n in moved}
    split = set()
    for node in moved:
        for found in state.instances_on(node.id):
            if not found.secondary:
                continue
            groups = {group_after.get(n, state.nodes[n].group) for n in (found.primary, found.secondary)}
            if len(groups) > 1:
                split.add(found.name)
    return sorted(split)


def check(state, params: Params) -> None:
    target = _common.group(state, params.group)
    if not params.nodes:
        raise PrereqError(WRONG_INPUT, "No nodes given; name at least one node to assign")
    split = split_instances(state, target.id, moving(state, params))
    if split and not params.force:
        raise PrereqError(WRONG_STATE, f"The following instances get split by this change and force was not "
                                       f"given: {', '.join(split)}; move both nodes of each together, or give "
                                       "--force")


def plan(state, params: Params) -> Plan:
    target = _common.group(state, params.group)
    moved = moving(state, params)
    if not moved:
        return Plan(steps=(), result=f"the nodes are already in group {target.name}")
    return one_step(f"assigning {len(moved)} node(s) to group {target.name}",
                    ev.NodesAssignedToGroup(target.id, tuple(n.id for n in moved)))
