"""Add a node to the cluster, with its capacity given now or detected later by its daemon."""

import random
from dataclasses import dataclass, replace

from appliance.model import events as ev
from appliance.model.errors import ALREADY_EXISTS, WRONG_INPUT, PrereqError
from appliance.model.ids import node_id
from ops import _common
from ops.base import Claims, Plan, new_name, one_step

NAME = "node_add"
OPCODE = "NODE_ADD"
ROLE = "admin"
DRAIN_EXEMPT = False
BEFORE_INIT = False
REFERENCES = {"group": "group"}
MAX_VOTERS = 5
DEFAULT_PORT = 7800


@dataclass(frozen=True)
class Params:
    name: str
    address: str = ""
    group: str = "default"
    memory_mib: int = 0
    disk_mib: int = 0
    cpus: int = 0
    master_capable: bool = True
    vm_capable: bool = True
    role: str = ""
    node_id: str = ""


def prepare(state, params: Params, rng: random.Random) -> Params:
    return params if params.node_id else replace(params, node_id=node_id(f"{rng.getrandbits(48):012x}"))


def claims(state, params: Params) -> Claims:
    return Claims(nodes=frozenset({new_name(params.name)}), shared_groups=frozenset({_common.claim_key(state, "group", params.group)}))


def address_of(params: Params) -> str:
    return params.address or f"{params.name}:{DEFAULT_PORT}"


def check(state, params: Params) -> None:
    _common.hostname(params.name, "node")
    if state.node_by_name(params.name) is not None:
        raise PrereqError(ALREADY_EXISTS, f"Node '{params.name}' is already in the cluster")
    address = address_of(params)
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65534:
        raise PrereqError(WRONG_INPUT, f"Invalid address '{address}' for node '{params.name}': give HOST:PORT "
                                       "(the API port; Raft uses PORT+1, the data plane PORT+2)")
    if any(n.address == address for n in state.nodes.values()):
        raise PrereqError(ALREADY_EXISTS, f"Address {address} is already used by another node")
    _common.group(state, params.group)
    for value, what in ((params.memory_mib, "memory (MiB)"), (params.disk_mib, "disk (MiB)"), (params.cpus, "cpus")):
        _common.positive(value, what, minimum=0)
    if params.role not in ("", "voter", "non-voter"):
        raise PrereqError(WRONG_INPUT, f"Invalid role '{params.role}': use voter or non-voter")
    if params.role == "voter" and not params.master_capable:
        raise PrereqError(WRONG_INPUT, f"Node '{params.name}' is not master_capable, so it cannot be a voter")
    if not params.node_id:
        raise PrereqError(WRONG_INPUT, "node_id missing: run ops.base.prepared() before check")


def role_of(state, params: Params) -> str:
    """Voters are master-capable nodes, up to five; the rest receive the log without voting."""
    if params.role:
        return params.role
    voters = sum(1 for n in state.nodes.values() if n.role == "voter")
    return "voter" if params.master_capable and voters < MAX_VOTERS else "non-voter"


def plan(state, params: Params) -> Plan:
    added = ev.NodeAdded(
        node=params.node_id, name=params.name, address=address_of(params),
        group=_common.group(state, params.group).id, memory_mib=params.memory_mib, disk_mib=params.disk_mib,
        cpus=params.cpus, master_capable=params.master_capable, vm_capable=params.vm_capable,
        role=role_of(state, params))
    return one_step(f"adding node {params.name}", added)
