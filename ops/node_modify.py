"""Change a node's flags (offline, drained, master_capable, vm_capable), its role, or its capacity.

Choices, Ganeti-strict where it is sensible (none can be overridden):
- offline and drained cannot both be set at once; setting one clears the
  other, as Ganeti does.
- Offlining a node that holds instances is allowed: it is how an operator
  declares a dead node dead before failing its instances over. Offlining a
  voter is refused when the voters left online would be fewer than a majority.
- Offlining is also the operator's fence proof: the plan records NodeFenced
  right after the NodeModified, the operator's assertion that the unreachable
  node is dead, so its instances may start elsewhere without that node first
  confirming they stopped there. Bringing the node online clears the proof.
- vm_capable cannot be unset while the node holds instances (Ganeti's rule).
- A voter must stay master_capable: make it a non-voter in the same request.
  There are at most five voters, and the last voter cannot be demoted.
- Memory and disk cannot be set below what the node's instances use.
"""

from dataclasses import dataclass

from appliance.model import events as ev
from appliance.model.errors import WRONG_INPUT, WRONG_STATE, PrereqError
from appliance.model.state import NODE_ROLES, NodeUsage
from ops import _common
from ops.base import Claims, Plan, Step, no_prepare
from ops.node_add import MAX_VOTERS

NAME = "node_modify"
OPCODE = "NODE_SET_PARAMS"
ROLE = "admin"
DRAIN_EXEMPT = False
BEFORE_INIT = False
REFERENCES = {"node": "node"}
prepare = no_prepare
FLAGS = ("offline", "drained", "master_capable", "vm_capable")
CHANGES = FLAGS + ("role", "memory_mib", "disk_mib", "cpus")


@dataclass(frozen=True)
class Params:
    node: str
    offline: bool | None = None
    drained: bool | None = None
    master_capable: bool | None = None
    vm_capable: bool | None = None
    role: str | None = None
    memory_mib: int | None = None
    disk_mib: int | None = None
    cpus: int | None = None


def claims(state, params: Params) -> Claims:
    key = _common.claim_key(state, "node", params.node)
    if fences_only(params):
        # Declaring a dead node offline (its fence proof) must not wait behind the jobs stuck on that node.
        return Claims(shared_nodes=frozenset({key}))
    return Claims(nodes=frozenset({key}))


def fences_only(params: Params) -> bool:
    """True when the request only marks the node offline."""
    return params.offline is True and all(getattr(params, key) is None for key in CHANGES if key != "offline")


def flag_changes(found, params: Params) -> dict:
    """The flags and role that actually change, with offline and drained clearing each other."""
    changes = {key: getattr(params, key) for key in FLAGS + ("role",)
               if getattr(params, key) is not None and getattr(params, key) != getattr(found, key)}
    if changes.get("offline") and found.drained:
        changes["drained"] = False
    if changes.get("drained") and found.offline:
        changes["offline"] = False
    return changes


def check(state, params: Params) -> None:
    found = _common.node(state, params.node)
    if all(getattr(params, key) is None for key in CHANGES):
        raise _common.nothing_given(f"node '{found.name}'", CHANGES)
    if params.offline and params.drained:
        raise PrereqError(WRONG_INPUT, "Can't set the node into more than one state at the same time "
                                       "(offline and drained); choose one")
    for key in FLAGS:
        value = getattr(params, key)
        if value is not None and not isinstance(value, bool):
            raise PrereqError(WRONG_INPUT, f"{key} must be yes or no (a boolean), got {value!r}")
    changes = flag_changes(found, params)
    _check_role(state, found, params, changes)
    if changes.get("vm_capable") is False and _held(state, found):
        raise PrereqError(WRONG_STATE, f"Node {found.name} hosts instances, cannot unset vm_capable")
    if changes.get("offline"):
        _check_quorum(state, found)
    _check_capacity(state, found, params)


def _held(state, found) -> int:
    usage = state.usage.get(found.id, NodeUsage())
    return usage.primaries + usage.secondaries


def _check_role(state, found, params: Params, changes: dict) -> None:
    if params.role is not None and params.role not in NODE_ROLES:
        raise PrereqError(WRONG_INPUT, f"Invalid role '{params.role}': use voter or non-voter")
    role = changes.get("role", found.role)
    master_capable = changes.get("master_capable", found.master_capable)
    if role == "voter" and not master_capable:
        raise PrereqError(WRONG_STATE, f"Node '{found.name}' is a voter and must stay master_capable; "
                                       "make it a non-voter in the same request (role non-voter)")
    voters = sum(1 for n in state.nodes.values() if n.role == "voter")
    if changes.get("role") == "voter" and voters >= MAX_VOTERS:
        raise PrereqError(WRONG_STATE, f"The cluster already has {voters} voters, the most it may have; "
                                       "make another node a non-voter first")
    if changes.get("role") == "non-voter" and voters == 1:
        raise PrereqError(WRONG_STATE, f"Node '{found.name}' is the last voter, cannot make it a non-voter; "
                                       "make another master-capable node a voter first")


def _check_quorum(state, found) -> None:
    """Offlining a voter must leave a majority of the voters online."""
    if found.role != "voter":
        return
    voters = [n for n in state.nodes.values() if n.role == "voter"]
    online = sum(1 for n in voters if not n.offline and n.id != found.id)
    needed = len(voters) // 2 + 1
    if online < needed:
        raise PrereqError(WRONG_STATE, f"Offlining voter '{found.name}' would leave {online} of {len(voters)} "
                                       f"voters online, fewer than the majority of {needed}; bring the other "
                                       "voters back or change the voters first")


def _check_capacity(state, found, params: Params) -> None:
    usage = state.usage.get(found.id, NodeUsage())
    for key, used, what in (("memory_mib", usage.memory_mib, "memory"), ("disk_mib", usage.disk_mib, "disk"),
                            ("cpus", 0, "cpus")):
        value = getattr(params, key)
        if value is None:
            continue
        _common.positive(value, f"{what} of node {found.name}", minimum=0)
        if value < used:
            raise PrereqError(WRONG_STATE, f"Node {found.name}'s instances use {used} MiB of {what}; "
                                           f"it cannot be set to {value} MiB. Move instances off it first")


def plan(state, params: Params) -> Plan:
    found = _common.node(state, params.node)
    events = []
    changes = flag_changes(found, params)
    if changes:
        events.append(ev.NodeModified(found.id, **{key: changes.get(key) for key in FLAGS + ("role",)}))
    if changes.get("offline"):
        events.append(ev.NodeFenced(found.id, "operator", "marked offline by the operator"))
    current = (found.memory_mib, found.disk_mib, found.cpus)
    given = (params.memory_mib, params.disk_mib, params.cpus)
    capacity = tuple(old if new is None else new for old, new in zip(current, given))
    if capacity != current:
        # The operator's figures are recorded as the daemon's would be; the next detection may correct them.
        events.append(ev.NodeCapacityDetected(found.id, *capacity))
    if not events:
        return Plan(steps=(), result=f"node {found.name} already has the requested settings")
    return Plan(steps=(Step(f"modifying node {found.name}", tuple(events)),), result=changes)
