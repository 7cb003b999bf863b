"""What migrate and failover share: moving a replicated instance to its secondary by swapping the two nodes.

Migrate moves the instance live in two steps (InstanceMigrationStarted, then
InstanceMigrated once the source reports success); failover swaps the nodes in
one InstanceFailedOver. Both plans are fixed at admission and name the nodes
by id, so a new leader continues them and never re-plans toward the node the
instance has already reached. They differ in what they require.
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


def check_common(state, instance: str, doing: str, target_node: str | None = None):
    """The instance, its primary and the node it moves to, refused unless that node can take it over.

    A replicated instance moves to its secondary (a `target_node` must name it); a diskless one, having no
    disks to leave behind, moves to the `target_node` given (Ganeti's `migrate -n`).
    """
    found = _common.instance(state, instance)
    if not found.secondary and (found.disk_template != "diskless" or doing != "migrate"):
        hint = (f"; a diskless instance migrates live to the node given: 'cairn instance migrate -n NODE "
                f"{found.name}'" if found.disk_template == "diskless" else ": its disks are on its primary only")
        raise PrereqError(WRONG_INPUT, f"Instance '{found.name}' has no secondary node ({found.disk_template} "
                                       f"template), cannot {doing} it{hint}")
    if not found.secondary:
        if not target_node:
            raise PrereqError(WRONG_INPUT, f"Instance '{found.name}' is diskless: say where to {doing} it with "
                                           "-n TARGET_NODE")
        if target_node == state.nodes[found.primary].name:
            raise PrereqError(WRONG_INPUT, f"Instance '{found.name}' already runs on {target_node}; give another "
                                           "node with -n")
    elif target_node and target_node != state.nodes[found.secondary].name:
        raise PrereqError(WRONG_INPUT, f"Instance '{found.name}' can only {doing} to its secondary node "
                                       f"{state.nodes[found.secondary].name}; to move it elsewhere, replace its "
                                       f"secondary first ('cairn instance replace-disks -n {target_node} "
                                       f"{found.name}')")
    if found.admin_state == "offline":
        raise PrereqError(WRONG_STATE, f"Instance '{found.name}' is marked offline, cannot {doing} it")
    primary = state.nodes[found.primary]
    secondary = state.nodes[found.secondary] if found.secondary else _common.node(state, target_node)
    role = "secondary" if found.secondary else "target"
    if secondary.offline:
        raise PrereqError(WRONG_STATE, f"Cannot {doing} instance '{found.name}': its {role} node "
                                       f"{secondary.name} is offline; bring it back online first")
    if not secondary.vm_capable:
        raise PrereqError(WRONG_STATE, f"Cannot {doing} instance '{found.name}': its {role} node "
                                       f"{secondary.name} is not vm_capable")
    _common.memory_fits(state, secondary, found.memory_mib, found.name, _GERUNDS[doing])
    return found, primary, secondary


def stale_copies(found, unknown_is_stale: bool) -> list[str]:
    """The disks whose copy on the secondary is not recorded UPTODATE, each with what is known of it ("0
    (SYNCING 42.0%)"); a disk never reported counts only when `unknown_is_stale` (recovery promotes only
    known-good copies; an operator's failover refuses only copies known bad)."""
    states = {disk: (state, percent) for disk, node, state, percent in found.disk_states if node == found.secondary}
    stale = []
    for index in range(len(found.disks)):
        state, percent = states.get(index, ("unknown", 0))
        if state != "UPTODATE" and (unknown_is_stale or index in states):
            stale.append(f"{index} ({state}{f' {percent}%' if state == 'SYNCING' else ''})")
    return stale


def migrate_plan(state, instance: str, timeout_s: int, target_node: str | None = None) -> Plan:
    """Two steps, both fixed at admission: migrate live to the secondary (a diskless instance: to the target
    node), then make it the primary.

    The first step asks the source to migrate and waits for it to say how it
    went; a failure or a timeout commits InstanceMigrationAborted (the target
    must then confirm the instance is not running there before anyone starts
    it) and the job fails with the source still running the instance.
    """
    found = _common.instance(state, instance)
    primary = state.nodes[found.primary]
    secondary = state.nodes[found.secondary] if found.secondary else _common.node(state, target_node)
    migrate = Step(f"migrating instance {found.name} from {primary.name} to {secondary.name}",
                   (ev.InstanceMigrationStarted(found.id, primary.id, secondary.id),),
                   (Wait("migration_finished", found.id, primary.id, timeout_s, "compensate"),),
                   (ev.InstanceMigrationAborted(found.id, secondary.id),))
    switch = Step(f"making {secondary.name} the primary node of instance {found.name}",
                  (ev.InstanceMigrated(found.id, secondary.id, primary.id if found.secondary else ""),),
                  (Wait("observed_running", found.id, secondary.id, timeout_s),))
    return Plan(steps=(migrate, switch), reservations=(Reservation(secondary.id, found.memory_mib, 0),),
                result={"primary": secondary.name, "secondary": primary.name if found.secondary else ""})


def failover_plan(state, instance: str, timeout_s: int) -> Plan:
    """One step: swap the nodes; an instance marked up is then waited for on the new primary.

    The new primary starts it only once the old primary has confirmed it stopped
    there (or is fenced): InstanceFailedOver puts the old primary in `pending_stop`.
    """
    found = _common.instance(state, instance)
    primary, secondary = state.nodes[found.primary], state.nodes[found.secondary]
    waits = ()
    if found.admin_state == "up":
        waits = (Wait("observed_running", found.id, secondary.id, timeout_s),)
    step = Step(f"failing over instance {found.name} from {primary.name} to {secondary.name}",
                (ev.InstanceFailedOver(found.id, secondary.id, primary.id),), waits)
    return Plan(steps=(step,), reservations=(Reservation(secondary.id, found.memory_mib, 0),),
                result={"primary": secondary.name, "secondary": primary.name})
