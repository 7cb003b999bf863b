"""Change an instance: memory, vcpus, hypervisor parameters, disks (add, grow) and NICs (add, remove, modify).

Every change is checked against the instance policy (unless ignored) and
against free memory and disk on the instance's nodes, counting what
admitted-but-unfinished jobs have reserved; more memory for a replicated
instance must also fit on its secondary, so it can still fail over. Disks only grow. NIC indexes
refer to the NICs as they are before the change; the plan applies
modifications first, then removals from the highest index down, then
additions, so every index it emits is valid when applied.
"""

import random
from dataclasses import dataclass, replace

from appliance.model import events as ev
from appliance.model.errors import WRONG_INPUT, WRONG_STATE, PrereqError
from ops import _common
from ops.base import Claims, Plan, Reservation, one_step
from ops.instance_add import DEFAULT_LINK

NAME = "instance_modify"
OPCODE = "INSTANCE_SET_PARAMS"
ROLE = "operator"
DRAIN_EXEMPT = False
BEFORE_INIT = False
REFERENCES = {"instance": "instance"}
CHANGES = ("memory_mib", "vcpus", "hvparams", "disk_add", "disk_grow", "nic_add", "nic_remove", "nic_modify",
           "ha_priority")


@dataclass(frozen=True)
class Params:
    instance: str
    memory_mib: int | None = None
    vcpus: int | None = None
    hvparams: dict | None = None
    disk_add: tuple = ()        # sizes (MiB) of new disks
    disk_grow: tuple = ()       # (disk index, new size MiB) pairs; sizes are absolute
    nic_add: tuple = ()         # dicts with mode, link and mac ("" to have one generated)
    nic_remove: tuple = ()      # NIC indexes
    nic_modify: tuple = ()      # dicts with index and mode and/or link
    ignore_ipolicy: bool = False
    ha_priority: int | None = None    # recovery order after its node is fenced: higher first


def prepare(state, params: Params, rng: random.Random) -> Params:
    """Give every added NIC a unique MAC if it has none."""
    if not params.nic_add:
        return params
    return replace(params, nic_add=_common.with_macs(state, params.nic_add, rng, DEFAULT_LINK))


def claims(state, params: Params) -> Claims:
    return _common.instance_claims(state, params.instance)


def check(state, params: Params) -> None:
    found = _common.instance(state, params.instance)
    if not any(getattr(params, name) not in (None, (), {}) for name in CHANGES):
        raise _common.nothing_given(f"instance '{found.name}'", CHANGES)
    if params.memory_mib is not None:
        _common.positive(params.memory_mib, "memory (MiB)")
    if params.vcpus is not None:
        _common.positive(params.vcpus, "vcpus")
    if params.hvparams is not None and not all(isinstance(key, str) for key in params.hvparams):
        raise PrereqError(WRONG_INPUT, "Hypervisor parameter names must be strings")
    if params.ha_priority is not None and (isinstance(params.ha_priority, bool)
                                           or not isinstance(params.ha_priority, int)):
        raise PrereqError(WRONG_INPUT, f"ha_priority must be a whole number (higher recovers first), got "
                                       f"{params.ha_priority!r}")
    _check_disks(found, params)
    _check_nics(state, found, params)
    if not params.ignore_ipolicy:
        _common.policy(state, state.nodes[found.primary].group, _new_spec(found, params), _new_disk_sizes(found, params))
    _check_room(state, found, params)


def _check_disks(found, params: Params) -> None:
    if (params.disk_add or params.disk_grow) and found.disk_template == "diskless":
        raise PrereqError(WRONG_INPUT, f"Disk operations not supported for diskless instances ('{found.name}')")
    for size in params.disk_add:
        _common.positive(size, "size of a new disk (MiB)")
    seen = set()
    for index, size in params.disk_grow:
        if not isinstance(index, int) or not 0 <= index < len(found.disks):
            raise PrereqError(WRONG_INPUT, f"Disk index {index} out of range: instance '{found.name}' has "
                                           f"{len(found.disks)} disk(s), numbered from 0")
        if index in seen:
            raise PrereqError(WRONG_INPUT, f"Disk {index} is grown twice in one request; give it once")
        seen.add(index)
        _common.positive(size, f"new size of disk {index} (MiB)")
        current = found.disks[index].size_mib
        if size < current:
            raise PrereqError(WRONG_INPUT, f"Disk {index} of instance '{found.name}' is {current} MiB and can only "
                                           f"grow, not shrink to {size} MiB; give a size of at least {current} MiB")


def _check_nics(state, found, params: Params) -> None:
    count = len(found.nics)
    removed = set()
    for index in params.nic_remove:
        _nic_index(found, index)
        if index in removed:
            raise PrereqError(WRONG_INPUT, f"NIC {index} is removed twice in one request; give it once")
        removed.add(index)
    modified = set()
    for change in params.nic_modify:
        index = _nic_index(found, change.get("index"))
        if index in removed or index in modified:
            raise PrereqError(WRONG_INPUT, f"NIC {index} is changed twice in one request; give it once")
        modified.add(index)
        if "mac" in change:
            raise PrereqError(WRONG_INPUT, f"The MAC of NIC {index} cannot change; remove the NIC and add a new one")
        if change.get("mode", "bridged") not in _common.NIC_MODES:
            raise PrereqError(WRONG_INPUT, f"NIC {index}: invalid mode '{change['mode']}'; use bridged or routed")
        if "link" in change and not change["link"]:
            raise PrereqError(WRONG_INPUT, f"NIC {index}: no link given; name the bridge or routing table")
    _common.new_nics(state, params.nic_add, DEFAULT_LINK, first_index=count - len(removed))


def _nic_index(found, index) -> int:
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(found.nics):
        raise PrereqError(WRONG_INPUT, f"NIC index {index} out of range: instance '{found.name}' has "
                                       f"{len(found.nics)} NIC(s), numbered from 0")
    return index


def _new_spec(found, params: Params) -> dict:
    """The policy values this change sets (values it leaves alone are not re-checked)."""
    spec = {}
    if params.memory_mib is not None:
        spec["memory_mib"] = params.memory_mib
    if params.vcpus is not None:
        spec["cpu_count"] = params.vcpus
    if params.disk_add:
        spec["disk_count"] = len(found.disks) + len(params.disk_add)
    if params.nic_add or params.nic_remove:
        spec["nic_count"] = len(found.nics) - len(params.nic_remove) + len(params.nic_add)
    return spec


def _new_disk_sizes(found, params: Params) -> dict:
    sizes = {index: size for index, size in params.disk_grow}
    sizes.update({len(found.disks) + n: size for n, size in enumerate(params.disk_add)})
    return sizes


def _extra(found, params: Params) -> tuple[int, int]:
    """Memory (on the primary) and disk (on every disk node) the change adds, in MiB."""
    memory = max(0, (params.memory_mib or found.memory_mib) - found.memory_mib)
    disk = sum(params.disk_add) + sum(size - found.disks[index].size_mib for index, size in params.disk_grow)
    return memory, disk


def _check_room(state, found, params: Params) -> None:
    memory, disk = _extra(found, params)
    if memory:
        _common.memory_fits(state, state.nodes[found.primary], memory, found.name, "modifying")
        if found.secondary:
            _check_failover_room(state, found, params.memory_mib)
    if disk:
        for holder in _common.used_disk_nodes(state, found):
            _common.disk_fits(state, holder, disk, found.name, "modifying")


def _check_failover_room(state, found, memory_mib: int) -> None:
    """Like Ganeti, refuse growing memory past what the secondary could take over in a failover."""
    secondary = state.nodes[found.secondary]
    free = state.free_memory_mib(secondary.id)
    if memory_mib > free:
        raise PrereqError(WRONG_STATE, f"This change will prevent the instance '{found.name}' from failover to its "
                                       f"secondary node {secondary.name}, due to not enough memory: needed "
                                       f"{memory_mib} MiB, available {free} MiB")


def _events(found, params: Params) -> list:
    events = []
    if params.memory_mib is not None or params.vcpus is not None or params.hvparams:
        events.append(ev.InstanceModified(found.id, params.memory_mib, params.vcpus, dict(params.hvparams or {})))
    for index, size in params.disk_grow:
        if size != found.disks[index].size_mib:
            events.append(ev.InstanceDiskGrown(found.id, index, size))
    events += [ev.InstanceDiskAdded(found.id, size) for size in params.disk_add]
    for change in params.nic_modify:
        nic = found.nics[change["index"]]
        events.append(ev.InstanceNicModified(found.id, change["index"], change.get("mode", nic.mode),
                                             change.get("link", nic.link)))
    events += [ev.InstanceNicRemoved(found.id, index) for index in sorted(params.nic_remove, reverse=True)]
    events += [ev.InstanceNicAdded(found.id, nic["mac"], nic.get("mode", "bridged"), nic.get("link", DEFAULT_LINK))
               for nic in params.nic_add]
    if params.ha_priority is not None and params.ha_priority != found.ha_priority:
        events.append(ev.InstanceHaPrioritySet(found.id, params.ha_priority))
    return events


def plan(state, params: Params) -> Plan:
    found = _common.instance(state, params.instance)
    memory, disk = _extra(found, params)
    reservations = []
    if memory:
        reservations.append(Reservation(found.primary, memory, 0))
    if disk:
        for holder in _common.used_disk_nodes(state, found):
            reservations.append(Reservation(holder.id, 0, disk))
    events = _events(found, params)
    if not events:
        return Plan(steps=(), result=f"instance {found.name} already has the requested settings")
    return one_step(f"Modified instance {found.name}", *events, reservations=tuple(reservations),
                    macs=tuple(nic["mac"] for nic in params.nic_add))
