"""Migrate every instance off a node (Ganeti's gnt-node migrate): one follow-up job per instance.

The operation itself changes nothing: it returns ResultWithJobs, and the
engine submits one instance_migrate job per primary instance of the node, so
each move is claimed, retried and reported on its own.
"""

from dataclasses import dataclass

from appliance.model.errors import WRONG_STATE, PrereqError
from ops import _common
from ops.base import Claims, Plan, ResultWithJobs, no_prepare

NAME = "node_migrate"
OPCODE = "NODE_MIGRATE"
ROLE = "operator"
DRAIN_EXEMPT = False
BEFORE_INIT = False
REFERENCES = {"node": "node"}
prepare = no_prepare


@dataclass(frozen=True)
class Params:
    node: str
    allow_failover: bool = False


def claims(state, params: Params) -> Claims:
    return Claims(shared_nodes=frozenset({_common.claim_key(state, "node", params.node)}))


def movable(state, node_id: str) -> list:
    """The node's primary instances that have a secondary to move to, by name."""
    return sorted((i for i in state.instances.values() if i.primary == node_id and i.secondary),
                  key=lambda i: i.name)


def check(state, params: Params) -> None:
    found = _common.node(state, params.node)
    stuck = sorted(i.name for i in state.instances.values() if i.primary == found.id and not i.secondary)
    if stuck:
        raise PrereqError(WRONG_STATE, f"Node '{found.name}' holds instances without a secondary node "
                                       f"({', '.join(stuck[:5])}); move them with 'cairn instance move' first")


def plan(state, params: Params) -> Plan:
    found = _common.node(state, params.node)
    jobs = tuple(({"op": "instance_migrate", "params": {"instance": i.name, "allow_failover": params.allow_failover}},)
                 for i in movable(state, found.id))
    return Plan(steps=(), result=ResultWithJobs(jobs, f"{len(jobs)} instance(s) to migrate off {found.name}"))
