"""Give a replicated instance a new secondary node (Ganeti's gnt-instance replace-disks -n NODE / -I hail).

One step, InstanceSecondaryReplaced: the disk usage moves from the old
secondary to the new one, the old secondary's copies stop counting, and the new
one's count only once its node reports them UPTODATE. The step waits for
nothing: the new secondary's reconciler creates the disks it now holds and the
old one's removes those it no longer holds. With `-I hail` the new node is
chosen in `prepare` (hail's relocate request), so the choice is committed with
the plan.
"""

import random
from dataclasses import dataclass, replace

from appliance.model import events as ev
from appliance.model.errors import INSUFFICIENT_RESOURCES, WRONG_INPUT, WRONG_STATE, PrereqError
from ops import _allocator as allocator
from ops import _common
from ops.base import Claims, Plan, Reservation, Step

NAME = "instance_replace_disks"
OPCODE = "INSTANCE_REPLACE_DISKS"
ROLE = "operator"
DRAIN_EXEMPT = False
BEFORE_INIT = False
REFERENCES = {"instance": "instance", "node": "node"}


@dataclass(frozen=True)
class Params:
    instance: str
    node: str = ""                # the new secondary
    iallocator: str = ""          # "hail": the placement engine chooses the new secondary (in prepare)


def prepare(state, params: Params, rng: random.Random) -> Params:
    """With an iallocator, fill in the new secondary hail chooses on this state."""
    if params.iallocator and params.node:
        raise PrereqError(WRONG_INPUT, "Give either a new secondary node (-n NODE) or an iallocator (-I hail), "
                                       "not both")
    if not params.iallocator:
        if not params.node:
            raise PrereqError(WRONG_INPUT, "No new secondary node given; give -n NODE, or -I hail to let the "
                                           "allocator choose it")
        return params
    try:
        allocator.check_allocator(params.iallocator)
    except ValueError as error:
        raise PrereqError(WRONG_INPUT, str(error)) from None
    found = _replicated(state, params.instance)
    try:
        chosen = allocator.relocate(state, found.name)
    except allocator.AllocatorError as error:
        raise PrereqError(INSUFFICIENT_RESOURCES, f"Can't compute nodes using iallocator '{params.iallocator}': "
                                                  f"{error}; free a node or name one with -n NODE") from None
    except ValueError as error:
        raise PrereqError(WRONG_INPUT, f"The iallocator '{params.iallocator}' cannot answer: {error}") from None
    return replace(params, node=state.node_by_name(chosen).id)


def claims(state, params: Params) -> Claims:
    own = _common.instance_claims(state, params.instance)
    if params.node:
        return own | Claims(shared_nodes=frozenset({_common.claim_key(state, "node", params.node)}))
    # The new secondary is chosen when the job is planned: any node may become it.
    return own | Claims(shared_nodes=frozenset(state.nodes))


def _replicated(state, name: str):
    found = _common.instance(state, name)
    if found.disk_template != "replicated" or not found.secondary:
        raise PrereqError(WRONG_INPUT, f"Instance '{found.name}' has the {found.disk_template} disk template; only "
                                       "replicated instances have a secondary node to replace")
    return found


def check(state, params: Params) -> None:
    found = _replicated(state, params.instance)
    new = _common.node(state, params.node)
    if new.id == found.primary:
        raise PrereqError(WRONG_INPUT, f"Node {new.name} is the primary node of instance '{found.name}'; the new "
                                       "secondary must be another node")
    if new.id == found.secondary:
        raise PrereqError(WRONG_INPUT, f"Node {new.name} is already the secondary node of instance "
                                       f"'{found.name}'; pick another node")
    if found.migration_status == "running":
        raise PrereqError(WRONG_STATE, f"Instance '{found.name}' is being migrated; wait for the migration to end")
    _common.vm_capable(new, "secondary")
    _common.disk_fits(state, new, sum(disk.size_mib for disk in found.disks), found.name, "replacing disks of")


def plan(state, params: Params) -> Plan:
    found = _common.instance(state, params.instance)
    new, old = _common.node(state, params.node), state.nodes[found.secondary]
    disk_total = sum(disk.size_mib for disk in found.disks)
    step = Step(f"replacing the secondary node of instance {found.name}: {old.name} -> {new.name}",
                (ev.InstanceSecondaryReplaced(found.id, new.id, old.id),))
    return Plan(steps=(step,), reservations=(Reservation(new.id, 0, disk_total),),
                result={"secondary": new.name})
