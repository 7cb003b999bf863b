"""Checks and look-ups that many operations share, with Ganeti's error texts.

Every function here either returns what was looked up or raises PrereqError
with a stable code and a message that says what to do.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from appliance.model.errors import (
    ALREADY_EXISTS, INSUFFICIENT_RESOURCES, UNKNOWN_ENTITY, WRONG_INPUT, WRONG_STATE, PrereqError,
)
from appliance.model.ids import DEFAULT_GROUP_NAME, is_hostname, is_mac, is_simple_name, is_tag, mac_from_int
from appliance.model.state import ROLES, ClusterState, Group, Instance, Node, User
from ops.base import Claims, new_name

HYPERVISORS = ("kvm", "fake")
DISK_TEMPLATES = ("diskless", "file", "replicated")
NIC_MODES = ("bridged", "routed")
SPEC_KEYS = ("memory_mib", "cpu_count", "disk_size_mib", "disk_count", "nic_count", "spindle_use")
DEFAULT_IPOLICY = {
    "min": {"memory_mib": 128, "cpu_count": 1, "disk_size_mib": 1024, "disk_count": 1, "nic_count": 1, "spindle_use": 1},
    "max": {"memory_mib": 32768, "cpu_count": 8, "disk_size_mib": 1048576, "disk_count": 16, "nic_count": 8,
            "spindle_use": 12},
    "std": {"memory_mib": 128, "cpu_count": 1, "disk_size_mib": 1024, "disk_count": 1, "nic_count": 1, "spindle_use": 1},
    "vcpu_ratio": 4.0,
    "spindle_ratio": 32.0,
}
# Ganeti's policy words for our spec keys, so violations read as they do in Ganeti.
_POLICY_WORDS = {"memory_mib": "memory-size", "cpu_count": "cpu-count", "disk_size_mib": "disk-size",
                 "disk_count": "disk-count", "nic_count": "nic-count"}
MAX_TAGS = 4096
TAG_KINDS = ("cluster", "node", "group", "instance")


def node(state: ClusterState, name: str) -> Node:
    """The node called `name` (or with that id)."""
    found = state.node_by_name(name)
    if found is None:
        raise PrereqError(UNKNOWN_ENTITY, f"Node '{name}' not known; 'cairn node list' shows the nodes")
    return found


def instance(state: ClusterState, name: str) -> Instance:
    """The instance called `name` (or with that id)."""
    found = state.instance_by_name(name)
    if found is None:
        raise PrereqError(UNKNOWN_ENTITY, f"Instance '{name}' not known; 'cairn instance list' shows the instances")
    return found


def group(state: ClusterState, name: str) -> Group:
    """The node group called `name` (or with that id)."""
    found = state.group_by_name(name)
    if found is None and name == DEFAULT_GROUP_NAME and state.cluster is not None:
        # "default" always means the cluster's default group, even after that group was renamed.
        found = state.groups.get(state.cluster.default_group)
    if found is None:
        raise PrereqError(UNKNOWN_ENTITY, f"Group '{name}' not known; 'cairn group list' shows the groups")
    return found


def hostname(name: str, what: str) -> None:
    """Refuse a name that is not a lower-case DNS host name."""
    if not is_hostname(name):
        raise PrereqError(WRONG_INPUT, f"Invalid hostname '{name}' for the {what}: use lower-case letters, "
                                       "digits, '-' and '.', as in 'web1.example.com'")


def positive(value: int, what: str, minimum: int = 1) -> None:
    """Refuse a number below `minimum` (and anything that is not an integer)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PrereqError(WRONG_INPUT, f"{what} must be a whole number of at least {minimum}, got {value!r}")


def unique_instance_name(state: ClusterState, name: str) -> None:
    """Refuse a name an instance already has."""
    if name in state.instance_names:
        raise PrereqError(ALREADY_EXISTS, f"Instance '{name}' is already in the cluster")


def vm_capable(found: Node, role: str) -> None:
    """Refuse a node that may not hold instances now: offline, drained, or not vm_capable."""
    if found.offline:
        raise PrereqError(WRONG_STATE, f"Node '{found.name}' is offline; it cannot be the {role} node of an instance")
    if found.drained:
        raise PrereqError(WRONG_STATE, f"Node '{found.name}' is drained and gets no new instances; "
                                       f"undrain it with 'cairn node modify --drained no {found.name}' or pick another")
    if not found.vm_capable:
        raise PrereqError(WRONG_STATE, f"Node '{found.name}' is not vm_capable; it cannot hold instances")


def hypervisor(state: ClusterState, name: str) -> None:
    """Refuse a hypervisor the cluster has not enabled."""
    enabled = state.cluster.enabled_hypervisors
    if name not in enabled:
        raise PrereqError(WRONG_INPUT, f"Hypervisor '{name}' is not enabled in cluster. Enabled hypervisors are: "
                                       f"{','.join(enabled)}")


def disk_template(state: ClusterState, template: str) -> None:
    """Refuse a disk template that is unknown or not enabled (Ganeti's text)."""
    if template not in DISK_TEMPLATES:
        raise PrereqError(WRONG_INPUT, f"Unknown disk template '{template}'; choose one of {', '.join(DISK_TEMPLATES)}")
    enabled = state.cluster.enabled_disk_templates
    if template not in enabled:
        raise PrereqError(WRONG_INPUT, f"Disk template '{template}' is not enabled in cluster. "
                                       f"Enabled disk templates are: {','.join(enabled)}")


def policy(state: ClusterState, group_id: str, spec: dict[str, int], disk_sizes: Iterable[int] | dict) -> None:
    """Refuse values outside the instance policy's min/max (each disk's size on its own).

    `disk_sizes` is a list of sizes numbered from 0, or a dict from disk index to size.
    """
    ipolicy = state.cluster.ipolicy
    group_name = state.groups[group_id].name if group_id in state.groups else group_id
    lows, highs = ipolicy["min"], ipolicy["max"]
    values = [(key, spec[key]) for key in ("memory_mib", "cpu_count", "disk_count", "nic_count") if key in spec]
    numbered = disk_sizes.items() if isinstance(disk_sizes, dict) else enumerate(disk_sizes)
    values += [(f"disk_size_mib/{i}", size) for i, size in numbered]
    for key, value in values:
        base = key.split("/")[0]
        low, high = lows[base], highs[base]
        if not low <= value <= high:
            word = _POLICY_WORDS[base] + (("/" + key.split("/")[1]) if "/" in key else "")
            raise PrereqError(WRONG_INPUT, f"Instance allocation to group {group_id} ({group_name}) violates policy: "
                                           f"{word} value {value} is not in range [{low}, {high}]")


def memory_fits(state: ClusterState, found: Node, needed_mib: int, instance_name: str, doing: str) -> None:
    """Refuse when the node's free memory (after reservations) is below what is needed."""
    if found.memory_mib == 0:
        raise PrereqError(INSUFFICIENT_RESOURCES, f"Node {found.name} has not reported its memory yet; wait for its "
                                                  "daemon to detect it, or give the capacity with 'cairn node modify'")
    free = state.free_memory_mib(found.id)
    if needed_mib > free:
        raise PrereqError(INSUFFICIENT_RESOURCES, f"Not enough memory on node {found.name} for {doing} instance "
                                                  f"{instance_name}: needed {needed_mib} MiB, available {free} MiB")


def disk_fits(state: ClusterState, found: Node, needed_mib: int, instance_name: str, doing: str) -> None:
    """Refuse when the node's free disk (after reservations) is below what is needed."""
    if found.disk_mib == 0:
        raise PrereqError(INSUFFICIENT_RESOURCES, f"Node {found.name} has not reported its disk space yet; wait for its "
                                                  "daemon to detect it, or give the capacity with 'cairn node modify'")
    free = state.free_disk_mib(found.id)
    if needed_mib > free:
        raise PrereqError(INSUFFICIENT_RESOURCES, f"Not enough disk space on node {found.name} for {doing} instance "
                                                  f"{instance_name}: needed {needed_mib} MiB, available {free} MiB")


def tags(values: Iterable[str]) -> tuple:
    """Refuse malformed tags; return them sorted and unique."""
    result = tuple(sorted(set(values)))
    if not result:
        raise PrereqError(WRONG_INPUT, "No tags given; name at least one tag")
    for tag in result:
        if not is_tag(tag):
            raise PrereqError(WRONG_INPUT, f"Invalid tag '{tag}': use 1-128 letters, digits or ._+*/:@-")
    return result


def check_ipolicy(ipolicy: dict) -> None:
    """Refuse an instance policy that lacks a spec key, has min above max, or a bad ratio."""
    for part in ("min", "max", "std"):
        spec = ipolicy.get(part)
        if not isinstance(spec, dict) or set(spec) != set(SPEC_KEYS):
            raise PrereqError(WRONG_INPUT, f"Instance policy '{part}' must give exactly {', '.join(SPEC_KEYS)}")
        for key in SPEC_KEYS:
            positive(spec[key], f"instance policy {part}/{key}", minimum=0)
    for key in SPEC_KEYS:
        low, std, high = ipolicy["min"][key], ipolicy["std"][key], ipolicy["max"][key]
        if not low <= std <= high:
            raise PrereqError(WRONG_INPUT, f"Instance policy {key}: need min <= std <= max, got {low}, {std}, {high}")
    for ratio in ("vcpu_ratio", "spindle_ratio"):
        value = ipolicy.get(ratio)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise PrereqError(WRONG_INPUT, f"Instance policy {ratio} must be a positive number, got {value!r}")


def user(state: ClusterState, name: str) -> User:
    """The user called `name`."""
    found = state.users.get(name)
    if found is None:
        raise PrereqError(UNKNOWN_ENTITY, f"User '{name}' not known; 'cairn user list' shows the users")
    return found


def role(value: str) -> None:
    """Refuse a user role that is not one of the known ones."""
    if value not in ROLES:
        raise PrereqError(WRONG_INPUT, f"Invalid role '{value}'; choose one of {', '.join(ROLES)}")


def credential_hash(value: str, what: str = "credential hash", of: str = "the token") -> None:
    """Refuse anything but a SHA-256 in 64 lower-case hex digits (the log never holds a token itself)."""
    if not isinstance(value, str) or len(value) != 64 or any(c not in _HEX for c in value):
        raise PrereqError(WRONG_INPUT, f"A {what} is the SHA-256 of {of} in 64 lower-case hex digits; "
                                       "send the hash, never the token")


_HEX = "0123456789abcdef"
# RFC 5280 allows a certificate serial of at most 20 octets.
_SERIAL_DIGITS_MAX = 40


def certificate_serial(value: str) -> None:
    """Refuse a certificate serial not in lower-case hex without '0x' or leading zeros (one spelling per serial)."""
    if (not isinstance(value, str) or not 0 < len(value) <= _SERIAL_DIGITS_MAX or value[0] == "0"
            or any(c not in _HEX for c in value)):
        raise PrereqError(WRONG_INPUT, f"Invalid certificate serial {value!r}: give it in lower-case hex without "
                                       "'0x' or leading zeros, as in '3f2a9c'")


DEFAULT_NODE_PORT = 7800


def node_address(name: str, address: str) -> str:
    """The address a node is reached at: the one given, or NAME:7800."""
    return address or f"{name}:{DEFAULT_NODE_PORT}"


def new_node(state: ClusterState, name: str, address: str) -> str:
    """Refuse a malformed node name or address, or one a node already has; return the address (HOST:PORT)."""
    hostname(name, "node")
    if state.node_by_name(name) is not None:
        raise PrereqError(ALREADY_EXISTS, f"Node '{name}' is already in the cluster")
    address = node_address(name, address)
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65534:
        raise PrereqError(WRONG_INPUT, f"Invalid address '{address}' for node '{name}': give HOST:PORT "
                                       "(the API port; Raft uses PORT+1, the data plane PORT+2)")
    if any(n.address == address for n in state.nodes.values()):
        raise PrereqError(ALREADY_EXISTS, f"Address {address} is already used by another node")
    return address


def node_ids_of(found: Instance) -> frozenset:
    """The ids of an instance's primary and (if any) secondary node, for claims."""
    return frozenset(node_id for node_id in (found.primary, found.secondary) if node_id)


def claim_key(state: ClusterState, kind: str, name: str) -> str:
    """The claim key of an entity: its id when it exists, else the name marked as new."""
    found = {"instance": state.instance_by_name, "node": state.node_by_name,
             "group": state.group_by_name}[kind](name)
    return found.id if found is not None else new_name(name)


def instance_claims(state: ClusterState, name: str, *extra_names: str) -> Claims:
    """The instance exclusively (by id; by name while it does not exist) and its nodes shared.

    `extra_names` are names the operation will give (a rename's new name).
    """
    found = state.instance_by_name(name)
    extra = {new_name(extra) for extra in extra_names}
    if found is None:
        return Claims(instances=frozenset({new_name(name), *extra}))
    return Claims(instances=frozenset({found.id, *extra}), shared_nodes=node_ids_of(found))


def primary_online(state: ClusterState, found: Instance, doing: str) -> Node:
    """The instance's primary node, refused when it is offline (nothing there could act)."""
    primary = state.nodes[found.primary]
    if primary.offline:
        raise PrereqError(WRONG_STATE, f"Cannot {doing} instance '{found.name}': its primary node {primary.name} "
                                       f"is offline; bring it back online with 'cairn node modify --offline no "
                                       f"{primary.name}' or fail the instance over")
    return primary


def node_name(state: ClusterState, node_id: str) -> str:
    """A node's name for messages (its id when it is gone)."""
    found = state.nodes.get(node_id)
    return found.name if found is not None else node_id


# Fencing timing (docs/fencing.md): the lease outlasts a daemon restart and an election; the recovery wait covers the
# lease, the watchdog's kill, clock-rate error and the overlap of an old and a new leader.
MIN_FENCING_S = 3
RECOVERY_MARGIN_S = 2


def intervals(fencing_interval_s: int, recovery_interval_s: int) -> None:
    """Refuse intervals that could let a lost node's instances run twice, or fence a node for a short pause.

    A node whose lease lapses has its instances killed by its watchdog after
    the fencing interval; the leader records the fence proof only after the
    recovery interval, which must cover the fencing interval, the kill, and a
    margin for clock rates, scheduling and a leader change (RECOVERY_MARGIN_S).
    The lease must outlast a daemon restart and a leader election.
    """
    positive(fencing_interval_s, "fencing interval (s)", minimum=MIN_FENCING_S)
    positive(recovery_interval_s, "recovery interval (s)")
    if recovery_interval_s < fencing_interval_s + RECOVERY_MARGIN_S:
        raise PrereqError(WRONG_INPUT, f"The recovery interval ({recovery_interval_s} s) must be at least the "
                                       f"fencing interval ({fencing_interval_s} s) plus {RECOVERY_MARGIN_S} s, so a "
                                       "lost node's watchdog has killed its instances before they are started "
                                       f"elsewhere; use at least {fencing_interval_s + RECOVERY_MARGIN_S}")


def nothing_given(what: str, names: Iterable[str]) -> PrereqError:
    """The refusal of a modify that names no change (Ganeti: 'No changes submitted')."""
    return PrereqError(WRONG_INPUT, f"No changes submitted for {what}; give at least one of {', '.join(names)}")


def spec_of(found: Instance) -> dict[str, int]:
    """The policy spec an instance has now."""
    spec = {"memory_mib": found.memory_mib, "cpu_count": found.vcpus, "nic_count": len(found.nics)}
    if found.disk_template != "diskless":
        spec["disk_count"] = len(found.disks)
    return spec


def used_disk_nodes(state: ClusterState, found: Instance) -> list[Node]:
    """The nodes that hold the instance's disks: none if diskless, the primary, and the secondary if any."""
    if found.disk_template == "diskless":
        return []
    return [state.nodes[n] for n in (found.primary, found.secondary) if n and n in state.nodes]


def with_macs(state: ClusterState, nics: Iterable[dict], rng: random.Random, default_link: str) -> tuple:
    """NIC specs with defaults filled in and a fresh cluster-unique MAC for each that has none."""
    nics = [{"mode": "bridged", "link": default_link, "mac": "", **nic} for nic in nics]
    # Membership is tested against the state's map directly: copying it would cost O(instances) per call.
    taken = state.reserved_macs() | {nic["mac"] for nic in nics}
    prefix = state.cluster.mac_prefix if state.cluster else "aa:00:00"
    for nic in nics:
        while not nic["mac"]:
            candidate = mac_from_int(prefix, rng.getrandbits(24))
            if candidate not in taken and candidate not in state.macs:
                taken.add(candidate)
                nic["mac"] = candidate
    return tuple(nics)


def new_nics(state: ClusterState, nics: Iterable[dict], default_link: str, first_index: int = 0) -> None:
    """Refuse NIC specs with a bad mode, no link, or a MAC that is malformed or already used (or reserved)."""
    reserved = state.reserved_macs()
    seen = set()
    for index, nic in enumerate(nics, start=first_index):
        mode, mac = nic.get("mode", "bridged"), nic.get("mac", "")
        if mode not in NIC_MODES:
            raise PrereqError(WRONG_INPUT, f"NIC {index}: invalid mode '{mode}'; use bridged or routed")
        if not nic.get("link", default_link):
            raise PrereqError(WRONG_INPUT, f"NIC {index}: no link given; name the bridge or routing table")
        if not mac:
            raise PrereqError(WRONG_INPUT, f"NIC {index} has no MAC: run ops.base.prepared() before check")
        if not is_mac(mac):
            raise PrereqError(WRONG_INPUT, f"NIC {index}: invalid MAC address '{mac}'; use the form aa:00:00:12:34:56")
        if mac in state.macs or mac in reserved or mac in seen:
            raise PrereqError(ALREADY_EXISTS, f"MAC address {mac} is already in use in this cluster; "
                                              "leave the MAC out to have one generated")
        seen.add(mac)


def not_last_admin(state: ClusterState, found: User, doing: str) -> None:
    """Refuse to remove or demote the only admin: nobody could manage users or the cluster afterwards."""
    if found.role == "admin" and sum(1 for u in state.users.values() if u.role == "admin") == 1:
        raise PrereqError(WRONG_STATE, f"User '{found.name}' is the last admin, cannot {doing} it; "
                                       "make another user admin first with 'cairn user set-role NAME admin'")


def group_name(state: ClusterState, name: str) -> None:
    """Refuse a group name that is malformed or already taken (Ganeti's text)."""
    if not is_simple_name(name):
        raise PrereqError(WRONG_INPUT, f"Invalid group name '{name}': use lower-case letters, digits, ._-")
    existing = state.group_by_name(name)
    if existing is not None:
        raise PrereqError(ALREADY_EXISTS, f"Desired group name '{name}' already exists as a node group "
                                          f"(id {existing.id})")



def tag_target(state: ClusterState, kind: str, target: str) -> tuple[str, str, tuple]:
    """The id, display name and current tags of what a tag operation names ('' for the cluster)."""
    if kind not in TAG_KINDS:
        raise PrereqError(WRONG_INPUT, f"Invalid tag kind '{kind}'; choose one of {', '.join(TAG_KINDS)}")
    if kind == "cluster":
        if target:
            raise PrereqError(WRONG_INPUT, "Cluster tags take no target name")
        return "", state.cluster.name, state.cluster.tags
    found = {"node": node, "group": group, "instance": instance}[kind](state, target)
    return found.id, found.name, found.tags


def tag_claims(state: ClusterState, kind: str, target: str) -> Claims:
    """Claims of a tag operation: the tagged object by name (the whole cluster for cluster tags)."""
    if kind == "node":
        return Claims(nodes=frozenset({claim_key(state, "node", target)}))
    if kind == "group":
        return Claims(groups=frozenset({claim_key(state, "group", target)}))
    if kind == "instance":
        return Claims(instances=frozenset({claim_key(state, "instance", target)}))
    return Claims(cluster=True)
