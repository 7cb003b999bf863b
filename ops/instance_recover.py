"""Recover one instance of a fenced node: restart it elsewhere, or mark it down, saying why.

A follow-up job of `node_fence` (the healer's), one per instance, so each is
claimed and reported on its own. What happens depends on the instance:

- replicated: it fails over to its secondary, only if that node is online,
  not fenced, has the memory, and holds an UPTODATE copy of every disk (a
  copy that missed writes must never become the primary);
- diskless: it restarts on the online node with the most free memory that
  can take it (its lost memory is all it had);
- any other template (file disks live only on the dead node): it is marked
  down, with the reason, until the node comes back or an operator acts.

A replicated or diskless instance that cannot be placed fails the job with
the reason (no UPTODATE copy, or no room). Nothing happens for an instance
that is no longer on the node or no longer marked up, nor when the node has
come back online since its fence (the healer returns a node as soon as it
asks for a lease having applied its fence, which can be before a queued
recovery runs): the node runs the instance again itself.
"""

from dataclasses import dataclass

from appliance.model import events as ev
from appliance.model.errors import INSUFFICIENT_RESOURCES, WRONG_STATE, PrereqError
from ops import _common, _migration
from ops.base import Claims, Plan, Reservation, Step, Wait, no_prepare

NAME = "instance_recover"
OPCODE = "INSTANCE_RECOVER"
ROLE = "admin"
DRAIN_EXEMPT = True
BEFORE_INIT = False
REFERENCES = {"instance": "instance", "node": "node"}
prepare = no_prepare


@dataclass(frozen=True)
class Params:
    instance: str
    node: str
    timeout_s: int = 600


def claims(state, params: Params) -> Claims:
    return _common.instance_claims(state, params.instance)


def _pending(state, params: Params) -> bool:
    """True while the instance is still marked up on the node, and the node is not back after a fence (else
    there is nothing to do)."""
    found = _common.instance(state, params.instance)
    node = _common.node(state, params.node)
    returned = node.fenced_seq > 0 and not node.fenced and not node.offline
    return found.primary == node.id and found.admin_state == "up" and not returned


def check(state, params: Params) -> None:
    found = _common.instance(state, params.instance)
    dead = _common.node(state, params.node)
    if not _pending(state, params):
        return
    if not dead.fenced:
        raise PrereqError(WRONG_STATE, f"Node {dead.name} is not fenced: instance {found.name} may still run there; "
                                       "it is recovered only after a fence proof")
    if found.disk_template == "replicated":
        _check_secondary(state, found)
    elif found.disk_template == "diskless":
        target(state, found)


def _check_secondary(state, found) -> None:
    secondary = state.nodes.get(found.secondary)
    if secondary is None or secondary.offline or secondary.fenced:
        raise PrereqError(WRONG_STATE, f"Cannot recover instance {found.name}: its secondary node "
                                       f"{_common.node_name(state, found.secondary)} is offline too")
    stale = _migration.stale_copies(found, unknown_is_stale=True)
    if stale:
        raise PrereqError(WRONG_STATE, f"Cannot recover instance {found.name}: the copy of disk(s) "
                                       f"{', '.join(stale)} on {secondary.name} is not UPTODATE, and a copy that "
                                       "missed writes never becomes the primary; bring the old primary back")
    _migration.check_common(state, found.id, "fail over")


def target(state, found):
    """The online node with the most free memory that takes a diskless instance (ties: by name)."""
    candidates = [n for n in state.nodes.values() if not n.offline and not n.fenced and not n.drained
                  and n.vm_capable and n.id != found.primary
                  and state.free_memory_mib(n.id) >= found.memory_mib]
    if not candidates:
        raise PrereqError(INSUFFICIENT_RESOURCES, f"Cannot recover instance {found.name}: no online node has "
                                                  f"{found.memory_mib} MiB of memory free")
    return min(candidates, key=lambda n: (-state.free_memory_mib(n.id), n.name))


def plan(state, params: Params) -> Plan:
    found = _common.instance(state, params.instance)
    dead = _common.node(state, params.node)
    if not _pending(state, params):
        why = "its node is back online" if found.primary == dead.id and found.admin_state == "up" else \
            f"not marked up on {dead.name}"
        return Plan(steps=(), result=f"instance {found.name} needs no recovery ({why})")
    if found.disk_template == "replicated":
        secondary = state.nodes[found.secondary]
        step = Step(f"recovering instance {found.name} on its secondary {secondary.name} (UPTODATE): node "
                    f"{dead.name} was fenced", (ev.InstanceFailedOver(found.id, secondary.id, dead.id),),
                    (Wait("observed_running", found.id, secondary.id, params.timeout_s),))
        return Plan(steps=(step,), reservations=(Reservation(secondary.id, found.memory_mib, 0),),
                    result={"instance": found.name, "primary": secondary.name, "secondary": dead.name})
    if found.disk_template == "diskless":
        chosen = target(state, found)
        step = Step(f"recovering diskless instance {found.name} on {chosen.name}: node {dead.name} was fenced",
                    (ev.InstanceRecovered(found.id, chosen.id, dead.id),),
                    (Wait("observed_running", found.id, chosen.id, params.timeout_s),))
        return Plan(steps=(step,), reservations=(Reservation(chosen.id, found.memory_mib, 0),),
                    result={"instance": found.name, "primary": chosen.name})
    step = Step(f"marking instance {found.name} down: its {found.disk_template} disks live only on the fenced node "
                f"{dead.name}; it starts again when that node is back and it is started",
                (ev.InstanceShutdownRequested(found.id, 0),))
    return Plan(steps=(step,), result={"instance": found.name, "marked_down": True})
