"""Create an instance: its disks, NICs and placement on a primary (and, if replicated, a secondary) node."""

import random
from dataclasses import dataclass, replace

from appliance.model import events as ev
from appliance.model.errors import INSUFFICIENT_RESOURCES, WRONG_INPUT, PrereqError
from appliance.model.ids import instance_id
from ops import _allocator as allocator
from ops import _common
from ops.base import Claims, new_name, Plan, Reservation, Step, Wait

NAME = "instance_add"
OPCODE = "INSTANCE_CREATE"
ROLE = "operator"
DRAIN_EXEMPT = False
BEFORE_INIT = False
REFERENCES = {"primary": "node", "secondary": "node"}
DEFAULT_LINK = "br0"


@dataclass(frozen=True)
class Params:
    name: str
    disk_template: str
    os: str
    primary: str = ""
    memory_mib: int = 512
    vcpus: int = 1
    disks: tuple = ()
    secondary: str = ""
    nics: tuple = ({"mode": "bridged", "link": DEFAULT_LINK, "mac": ""},)
    hypervisor: str = ""
    hvparams: dict | None = None
    start: bool = True
    ignore_ipolicy: bool = False
    iallocator: str = ""          # "hail": the placement engine chooses the nodes (in prepare)
    instance_id: str = ""


def prepare(state, params: Params, rng: random.Random) -> Params:
    """Fill in the instance id, a unique MAC for every NIC that has none and, with an iallocator, the nodes."""
    nics = _common.with_macs(state, params.nics, rng, DEFAULT_LINK)
    token = f"{rng.getrandbits(64):016x}"
    params = replace(params, nics=nics, instance_id=params.instance_id or instance_id(token))
    if params.iallocator:
        params = _allocated(state, params)
    elif not params.primary:
        raise PrereqError(WRONG_INPUT, "No iallocator or node given; give the nodes with -n PRIMARY[:SECONDARY] "
                                       "or let the allocator choose them with -I hail")
    return params


def _allocated(state, params: Params) -> Params:
    """Params with the nodes hail chooses on this state (the choice is committed with the plan)."""
    if state.cluster is None:
        return params  # refused as not initialised, after prepare
    if params.primary or params.secondary:
        raise PrereqError(WRONG_INPUT, "Do not specify both, iallocator and node; give either -I hail or "
                                       "-n PRIMARY[:SECONDARY]")
    try:
        allocator.check_allocator(params.iallocator)
    except ValueError as error:
        raise PrereqError(WRONG_INPUT, str(error)) from None
    _check_template(state, params)
    _common.positive(params.memory_mib, "memory (MiB)")
    _common.positive(params.vcpus, "vcpus")
    request = allocator.allocate_request(params.name, params.disk_template, params.memory_mib, params.vcpus,
                                         params.disks, len(params.nics))
    try:
        primary, secondary = allocator.allocate(state, request)
    except allocator.AllocatorError as error:
        raise PrereqError(INSUFFICIENT_RESOURCES, f"Can't compute nodes using iallocator '{params.iallocator}': "
                                                  f"{error}; 'cairn capacity' shows what fits") from None
    except ValueError as error:  # what the engine cannot read or hold (e.g. its tag limits)
        raise PrereqError(WRONG_INPUT, f"The iallocator '{params.iallocator}' cannot answer: {error}") from None
    return replace(params, primary=state.node_by_name(primary).id,
                   secondary=state.node_by_name(secondary).id if secondary else "")


def claims(state, params: Params) -> Claims:
    if params.iallocator and not params.primary:
        # The nodes are chosen when the job is planned: any node may become one of them.
        return Claims(instances=frozenset({new_name(params.name)}), shared_nodes=frozenset(state.nodes))
    nodes = {params.primary} | ({params.secondary} if params.secondary else set())
    return Claims(instances=frozenset({new_name(params.name)}),
                  shared_nodes=frozenset(_common.claim_key(state, "node", node) for node in nodes))


def check(state, params: Params) -> None:
    _common.hostname(params.name, "instance")
    _common.unique_instance_name(state, params.name)
    if not params.os:
        raise PrereqError(WRONG_INPUT, "No guest OS or OS image specified; give --os NAME (see 'cairn os list')")
    _check_template(state, params)
    _common.hypervisor(state, params.hypervisor or state.cluster.default_hypervisor)
    _common.positive(params.memory_mib, "memory (MiB)")
    _common.positive(params.vcpus, "vcpus")
    primary, secondary = _check_nodes(state, params)
    if not params.ignore_ipolicy:
        spec = {"memory_mib": params.memory_mib, "cpu_count": params.vcpus, "nic_count": len(params.nics)}
        if params.disk_template != "diskless":
            spec["disk_count"] = len(params.disks)
        _common.policy(state, primary.group, spec, params.disks)
    _check_nics(state, params)
    disk_total = sum(params.disks)
    _common.memory_fits(state, primary, params.memory_mib, params.name, "creating")
    if params.disk_template != "diskless":
        _common.disk_fits(state, primary, disk_total, params.name, "creating")
    if secondary is not None:
        _common.disk_fits(state, secondary, disk_total, params.name, "creating")


def _check_template(state, params: Params) -> None:
    _common.disk_template(state, params.disk_template)
    if params.disk_template == "diskless":
        if params.disks:
            raise PrereqError(WRONG_INPUT, "Diskless instance but disk information passed")
        return
    if not params.disks:
        raise PrereqError(WRONG_INPUT, f"The {params.disk_template} template needs at least one disk; give --disk SIZE")
    for index, size in enumerate(params.disks):
        _common.positive(size, f"size of disk {index} (MiB)")


def _check_nodes(state, params: Params):
    primary = _common.node(state, params.primary)
    _common.vm_capable(primary, "primary")
    if params.disk_template != "replicated":
        if params.secondary:
            raise PrereqError(WRONG_INPUT, f"The {params.disk_template} template takes no secondary node; "
                                           "give only the primary (use 'replicated' for a mirrored instance)")
        return primary, None
    if not params.secondary:
        raise PrereqError(WRONG_INPUT, "The replicated disk template needs a secondary node; "
                                       "give --node PRIMARY:SECONDARY")
    secondary = _common.node(state, params.secondary)
    if secondary.id == primary.id:
        raise PrereqError(WRONG_INPUT, f"The secondary node cannot be the primary node ({primary.name}); "
                                       "pick another node for the secondary")
    _common.vm_capable(secondary, "secondary")
    return primary, secondary


def _check_nics(state, params: Params) -> None:
    _common.new_nics(state, params.nics, DEFAULT_LINK)


def plan(state, params: Params) -> Plan:
    primary = _common.node(state, params.primary)
    secondary = _common.node(state, params.secondary) if params.secondary else None
    disk_total = 0 if params.disk_template == "diskless" else sum(params.disks)
    added = ev.InstanceAdded(
        instance=params.instance_id, name=params.name, primary=primary.id,
        secondary=secondary.id if secondary else "", disk_template=params.disk_template,
        disks=tuple({"size_mib": size} for size in params.disks),
        nics=tuple({"mac": n["mac"], "mode": n.get("mode", "bridged"), "link": n.get("link", DEFAULT_LINK)}
                   for n in params.nics),
        memory_mib=params.memory_mib, vcpus=params.vcpus,
        hypervisor=params.hypervisor or state.cluster.default_hypervisor, hvparams=dict(params.hvparams or {}),
        os=params.os, admin_state="up" if params.start else "down")
    waits = (Wait("observed_running", params.instance_id, primary.id),) if params.start else ()
    reservations = [Reservation(primary.id, params.memory_mib, disk_total)]
    if secondary is not None:
        reservations.append(Reservation(secondary.id, 0, disk_total))
    chosen = None
    if params.iallocator:
        names = ", ".join(node.name for node in (primary, secondary) if node is not None)
        chosen = f"Selected nodes for instance {params.name} via iallocator {params.iallocator}: {names}"
    return Plan(steps=(Step(f"adding instance {params.name} to cluster config", (added,), waits),),
                reservations=tuple(reservations), macs=tuple(n["mac"] for n in params.nics), result=chosen)
