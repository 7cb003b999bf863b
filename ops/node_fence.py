"""Record that a node's lease lapsed: mark it offline with a fence proof, and recover its instances.

Submitted by the leader's healer (never by hand: an operator declares a dead
node dead with `cairn node modify NODE --offline yes`), once the node has held
no lease for the cluster's recovery interval. By then its watchdog has killed
every instance process it ran (the fencing interval is shorter), so the
proof lets the node's instances start elsewhere without its confirmation.
The plan changes nothing for a node already fenced, so a second submission
(a new leader that did not see the first commit) is harmless.

The recovery itself is one follow-up job per instance marked up, highest
`ha_priority` first (then by name): each is claimed, admitted and reported on
its own, so when capacity is short the first ones take it and the rest fail
with the reason.
"""

from dataclasses import dataclass

from appliance.model import events as ev
from appliance.model.errors import WRONG_INPUT, PrereqError
from ops import _common
from ops.base import Claims, Plan, ResultWithJobs, Step, no_prepare

NAME = "node_fence"
OPCODE = "NODE_FENCE"
ROLE = "admin"
DRAIN_EXEMPT = True
BEFORE_INIT = False
REFERENCES = {"node": "node"}
PROOFS = ("lease",)
prepare = no_prepare


@dataclass(frozen=True)
class Params:
    node: str
    proof: str = "lease"
    detail: str = ""


def claims(state, params: Params) -> Claims:
    # Shared: a fence must not wait behind the jobs stuck on the dead node.
    return Claims(shared_nodes=frozenset({_common.claim_key(state, "node", params.node)}))


def check(state, params: Params) -> None:
    _common.node(state, params.node)
    if params.proof not in PROOFS:
        raise PrereqError(WRONG_INPUT, f"Unknown fence proof {params.proof!r}; the healer records {', '.join(PROOFS)} "
                                       "(an operator marks a dead node offline with 'cairn node modify')")


def recovery_order(state, node_id: str) -> list:
    """The node's instances marked up, in the order they are recovered: highest priority first, then by name."""
    return sorted((i for i in state.instances.values() if i.primary == node_id and i.admin_state == "up"),
                  key=lambda i: (-i.ha_priority, i.name))


def plan(state, params: Params) -> Plan:
    found = _common.node(state, params.node)
    if found.fenced:
        return Plan(steps=(), result=f"node {found.name} is already fenced")
    events = []
    if not found.offline:
        events.append(ev.NodeModified(found.id, True, None, None, None, None))
    events.append(ev.NodeFenced(found.id, params.proof, params.detail))
    jobs = tuple(({"op": "instance_recover", "params": {"instance": i.name, "node": found.name}},)
                 for i in recovery_order(state, found.id))
    step = Step(f"fencing node {found.name}: {params.detail}", tuple(events))
    return Plan(steps=(step,), result=ResultWithJobs(jobs, f"node {found.name} fenced; {len(jobs)} instance(s) to "
                                                           "recover"))
