"""What migrate and failover share: moving a replicated instance to its secondary by swapping the two nodes.

Both end in one InstanceMigrated event; they differ in what they require.
Migrate moves a running instance live, so the instance must be marked up and
both nodes reachable. Failover stops it on the primary and starts it on the
secondary, so it also works for a stopped instance or an offline primary
(the way out when a node died). Free memory on the secondary is always
required: the state counts every primary's memory, running or not, so a
stopped instance would still overcommit the node it lands on.
"""

from __future__ import annotations

from appliance.model import events as ev
from appliance.model.errors import WRONG_INPUT, WRONG_STATE, PrereqError
from ops import _common
from ops.base import Claims, Plan, Reservation, Step, Wait

_GERUNDS = {"migrate": "migrating", "fail over": "failing over"}


def claims(state, instance: str) -> Claims:
    return _common.instance_claims(state, instance)


def check_common(state, instance: str, doing: str):
    """The instance, its primary and its secondary, refused unless the secondary can take it over."""
    found = _common.instance(state, instance)
    if not found.secondary:
        raise PrereqError(WRONG_INPUT, f"Instance '{found.name}' has no secondary node ({found.disk_template} "
                                       f"template), cannot {doing} it; use 'cairn instance move' instead")
    if found.admin_state == "offline":
        raise PrereqError(WRONG_STATE, f"Instance '{found.name}' is marked offline, cannot {doing} it")
    primary, secondary = state.nodes[found.primary], state.nodes[found.secondary]
    if secondary.offline:
        raise PrereqError(WRONG_STATE, f"Cannot {doing} instance '{found.name}': its secondary node "
                                       f"{secondary.name} is offline; bring it back online first")
    if not secondary.vm_capable:
        raise PrereqError(WRONG_STATE, f"Cannot {doing} instance '{found.name}': its secondary node "
                                       f"{secondary.name} is not vm_capable")
    _common.memory_fits(state, secondary, found.memory_mib, found.name, _GERUNDS[doing])
    return found, primary, secondary


def plan(state, instance: str, doing: str, timeout_s: int) -> Plan:
    """One step: swap the nodes, then (if the instance is marked up) wait to see it run on the new primary."""
    found = _common.instance(state, instance)
    primary, secondary = state.nodes[found.primary], state.nodes[found.secondary]
    waits = ()
    if found.admin_state == "up":
        waits = (Wait("observed_running", found.id, secondary.id, timeout_s),)
    step = Step(f"{doing} instance {found.name} from {primary.name} to {secondary.name}",
                (ev.InstanceMigrated(found.id, secondary.id, primary.id),), waits)
    return Plan(steps=(step,), reservations=(Reservation(secondary.id, found.memory_mib, 0),),
                result={"primary": secondary.name, "secondary": primary.name})
