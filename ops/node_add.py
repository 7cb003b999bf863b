"""Add a node to the cluster, with its capacity given now or detected later by its daemon.

A node joining with a one-time token (issued by `node_token_issue`) names the
token's hash: the token must be known, unspent, and name this node and
address, and the plan spends it (JoinTokenUsed). Whether the token has expired
is checked by the daemon that takes the join, against its clock, before it
submits this operation: operations read no clock. The serial of the
certificate that daemon issued to the node goes into the log with it
(NodeCertificateIssued), so that removing the node can revoke it. Without a
token a node is added as before; that is how a new cluster adds its first
node.
"""

import random
from dataclasses import dataclass, replace

from appliance.model import events as ev
from appliance.model.errors import ALREADY_EXISTS, UNKNOWN_ENTITY, WRONG_INPUT, WRONG_STATE, PrereqError
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
DEFAULT_PORT = _common.DEFAULT_NODE_PORT


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
    # SHA-256 (hex) of the secret of the join token the node presented; "" for a node added without one.
    join_token_hash: str = ""
    # The serial (lower-case hex) of the certificate issued to the node; "" when none was issued here.
    certificate_serial: str = ""


def prepare(state, params: Params, rng: random.Random) -> Params:
    return params if params.node_id else replace(params, node_id=node_id(f"{rng.getrandbits(48):012x}"))


def claims(state, params: Params) -> Claims:
    return Claims(nodes=frozenset({new_name(params.name)}), shared_groups=frozenset({_common.claim_key(state, "group", params.group)}))


def address_of(params: Params) -> str:
    return _common.node_address(params.name, params.address)


def check(state, params: Params) -> None:
    address = _common.new_node(state, params.name, params.address)
    _common.group(state, params.group)
    for value, what in ((params.memory_mib, "memory (MiB)"), (params.disk_mib, "disk (MiB)"), (params.cpus, "cpus")):
        _common.positive(value, what, minimum=0)
    if params.role not in ("", "voter", "non-voter"):
        raise PrereqError(WRONG_INPUT, f"Invalid role '{params.role}': use voter or non-voter")
    if params.role == "voter" and not params.master_capable:
        raise PrereqError(WRONG_INPUT, f"Node '{params.name}' is not master_capable, so it cannot be a voter")
    if not params.node_id:
        raise PrereqError(WRONG_INPUT, "node_id missing: run ops.base.prepared() before check")
    if params.join_token_hash:
        _join_token(state, params.join_token_hash, params.name, address)
    if params.certificate_serial:
        _certificate(state, params.certificate_serial, params.name)


def _join_token(state, token_hash: str, name: str, address: str) -> None:
    """Refuse a join token that is malformed, unknown, spent, or issued for another node or address."""
    _common.credential_hash(token_hash, "join token hash", "the token's secret")
    entry = state.join_tokens.get(token_hash)
    again = f"issue a new token with 'cairn node add {name} --address {address}'"
    if entry is None:
        raise PrereqError(UNKNOWN_ENTITY, f"The join token for node '{name}' is not known to this cluster; {again}")
    if entry.used:
        raise PrereqError(WRONG_STATE, f"The join token for node '{name}' was already used, and a token admits "
                                       f"a node only once; {again}")
    if (entry.node, entry.address) != (name, address):
        raise PrereqError(WRONG_INPUT, f"The join token was issued for node '{entry.node}' at {entry.address}, "
                                       f"not '{name}' at {address}; {again}")


def _certificate(state, serial: str, name: str) -> None:
    """Refuse a malformed certificate serial, or one that is revoked or another node's."""
    _common.certificate_serial(serial)
    if serial in state.revoked_serials:
        raise PrereqError(WRONG_STATE, f"Certificate serial {serial} is revoked (it belonged to node "
                                       f"'{state.revoked_serials[serial]}'); issue node '{name}' a new certificate")
    holder = next((node for node, held in state.certificates.items() if held == serial and node != name), None)
    if holder is not None:
        raise PrereqError(ALREADY_EXISTS, f"Certificate serial {serial} belongs to node '{holder}'; "
                                          f"issue node '{name}' a new certificate")


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
    return one_step(f"adding node {params.name}", added, *_credential_events(state, params))


def _credential_events(state, params: Params) -> list:
    """The token spent and the certificate recorded with the node; a certificate it had before is revoked."""
    events = []
    if params.join_token_hash:
        events.append(ev.JoinTokenUsed(params.join_token_hash))
    if params.certificate_serial:
        # A certificate left from an earlier life of this name would stay valid unless revoked here.
        previous = state.certificates.get(params.name)
        if previous is not None and previous != params.certificate_serial:
            events.append(ev.NodeCertificateRevoked(params.name, previous))
        events.append(ev.NodeCertificateIssued(params.name, params.certificate_serial))
    return events
