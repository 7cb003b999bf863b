"""Remove a node from the cluster; it must hold no instances and must not be the last voter.

The node's certificate, if the log recorded one, is revoked in the same step,
so that its handshakes are refused from then on.
"""

from dataclasses import dataclass

from appliance.model import events as ev
from appliance.model.errors import WRONG_STATE, PrereqError
from appliance.model.state import MODES, NodeUsage
from ops import _common
from ops.base import Claims, Plan, one_step, no_prepare

NAME = "node_remove"
OPCODE = "NODE_REMOVE"
ROLE = "admin"
DRAIN_EXEMPT = False
BEFORE_INIT = False
REFERENCES = {"node": "node"}
prepare = no_prepare


@dataclass(frozen=True)
class Params:
    node: str


def claims(state, params: Params) -> Claims:
    return Claims(nodes=frozenset({_common.claim_key(state, "node", params.node)}))


def check(state, params: Params) -> None:
    found = _common.node(state, params.node)
    usage = state.usage.get(found.id, NodeUsage())
    held = usage.primaries + usage.secondaries
    if held:
        raise PrereqError(WRONG_STATE, f"Node '{found.name}' still holds {held} instance(s) ({usage.primaries} as "
                                       f"primary, {usage.secondaries} as secondary); evacuate it first with "
                                       f"'cairn node evacuate {found.name}'")
    if found.role == "voter" and sum(1 for n in state.nodes.values() if n.role == "voter") == 1:
        raise PrereqError(WRONG_STATE, f"Node '{found.name}' is the last voter of the cluster, cannot remove it; "
                                       "add another master-capable node first")
    if any(found.id in (r["node"] for r in state.jobs[j].reservations) for j in state.active_jobs):
        raise PrereqError(WRONG_STATE, f"Node '{found.name}' has resources reserved by a running job; "
                                       "wait for the job to finish ('cairn job list --running')")


def plan(state, params: Params) -> Plan:
    found = _common.node(state, params.node)
    # The node's own modes (maintenance) go with it, so they cannot apply to a later node with the same id.
    cleared = [ev.ModeCleared(mode, found.id) for mode in MODES if (mode, found.id) in state.modes]
    # Revoked before the node leaves, so that no state has a removed node whose certificate is still good.
    serial = state.certificates.get(found.name)
    revoked = [ev.NodeCertificateRevoked(found.name, serial)] if serial is not None else []
    return one_step(f"removing node {found.name}", *cleared, *revoked, ev.NodeRemoved(found.id))
