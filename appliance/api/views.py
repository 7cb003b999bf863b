"""The API's answers as plain data: pure projections of a ClusterState (and committed records) into JSON rows.

Nothing here does I/O or knows HTTP; the rows and their keys are those of
docs/api.md, which follow Ganeti's field names where Ganeti has one. Listings
are sorted the way Ganeti sorts names ("nice": runs of digits compare as
numbers, so node2 comes before node10).
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from appliance.allocator import n1_problems
from appliance.model import codec
from appliance.model.errors import UNKNOWN_ENTITY, PrereqError
from appliance.model.state import (
    JOB_ACTIVE, JOB_FINISHED, ClusterState, Instance, Job, Node, NodeUsage, usage_of, used_disk_mib,
)
from ops import registry

REDACTED = "<redacted>"
# Payload and parameter keys that carry a secret's hash: shown to admins only.
SECRET_SUFFIXES = ("credential_hash", "token_hash")
JOB_STATUSES = JOB_ACTIVE + JOB_FINISHED
_DIGITS = re.compile(r"(\d+)")
_NO_USAGE = NodeUsage()


# --- sorting and plain data -------------------------------------------------

def nice_key(name: str) -> tuple:
    """Ganeti's NiceSort key: text and digit runs alternate, and digit runs compare as numbers."""
    parts = _DIGITS.split(name)
    # re.split with a group puts text at even and digits at odd positions, so equal positions hold equal types.
    return tuple(int(part) if index % 2 else part for index, part in enumerate(parts))


def nice_sorted(items: Iterable, name=lambda item: item) -> list:
    """Items sorted nicely by `name(item)`."""
    return sorted(items, key=lambda item: nice_key(name(item)))


def is_secret(key: Any) -> bool:
    return isinstance(key, str) and key.endswith(SECRET_SUFFIXES)


def plain(value: Any, redact: bool = False) -> Any:
    """A value as JSON-ready data: tuples as lists, bytes as hex, secret-bearing keys redacted on request."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (list, tuple)):
        return [plain(item, redact) for item in value]
    if isinstance(value, dict):
        return {str(key): REDACTED if redact and is_secret(key) else plain(item, redact)
                for key, item in value.items()}
    return str(value)


def node_name(state: ClusterState, node_id: str) -> str:
    """A node's name, or its id when the node is gone."""
    node = state.nodes.get(node_id)
    return node.name if node is not None else node_id


def _unknown(kind: str, name: str) -> PrereqError:
    return PrereqError(UNKNOWN_ENTITY, f"{kind.capitalize()} '{name}' not known; 'cairn {kind} list' shows the {kind}s")


# --- instances ---------------------------------------------------------------

def instance_status(state: ClusterState, instance: Instance) -> str:
    """Ganeti's status word for an instance, from its admin state, what its nodes saw and its primary node."""
    primary = state.nodes.get(instance.primary)
    if primary is None or primary.offline:
        return "ERROR_nodeoffline"
    if primary.fenced:
        return "ERROR_nodedown"
    if instance.observed_state == "running":
        if instance.observed_node != instance.primary:
            return "ERROR_wrongnode"
        return "running" if instance.admin_state == "up" else "ERROR_up"
    if instance.admin_state == "up":
        return "USER_down" if instance.observed_state == "user_down" else "ERROR_down"
    if instance.admin_state == "offline":
        return "ADMIN_offline"
    return "ADMIN_down"


def instance_row(state: ClusterState, instance: Instance) -> dict[str, Any]:
    """The instance row of docs/api.md."""
    running = instance.observed_state == "running"
    return {
        "name": instance.name,
        "id": instance.id,
        "pnode": node_name(state, instance.primary),
        "snodes": [node_name(state, instance.secondary)] if instance.secondary else [],
        "status": instance_status(state, instance),
        "admin_state": instance.admin_state,
        "oper_state": running,
        "os": instance.os, "ha_priority": instance.ha_priority,
        "hypervisor": instance.hypervisor,
        "disk_template": instance.disk_template,
        "be/maxmem": instance.memory_mib,
        "be/vcpus": instance.vcpus,
        "oper_ram": instance.memory_mib if running else None,
        "disk.sizes": [disk.size_mib for disk in instance.disks],
        "disk_usage": used_disk_mib(instance),
        "nic.macs": [nic.mac for nic in instance.nics],
        "nic.links": [nic.link for nic in instance.nics],
        "tags": list(instance.tags),
        "migration": instance.migration_status,
        "disk_states": [{"disk": disk, "node": node_name(state, node), "state": disk_state, "sync_percent": percent}
                        for disk, node, disk_state, percent in instance.disk_states],
    }


def instance_rows(state: ClusterState, names: list[str] | None = None) -> list[dict[str, Any]]:
    """Instance rows: the named ones in the order given (PrereqError for an unknown one), else all, nicely sorted."""
    if names is None:
        chosen = nice_sorted(state.instances.values(), lambda instance: instance.name)
    else:
        chosen = [find_instance(state, name) for name in names]
    return [instance_row(state, instance) for instance in chosen]


def find_instance(state: ClusterState, name: str) -> Instance:
    instance = state.instance_by_name(name)
    if instance is None:
        raise _unknown("instance", name)
    return instance


# --- nodes -------------------------------------------------------------------

def node_instances(state: ClusterState) -> dict[str, tuple[list[str], list[str]]]:
    """Per node id: the names of its primary and of its secondary instances (one pass over the instances)."""
    index: dict[str, tuple[list[str], list[str]]] = {}
    for instance in state.instances.values():
        index.setdefault(instance.primary, ([], []))[0].append(instance.name)
        if instance.secondary:
            index.setdefault(instance.secondary, ([], []))[1].append(instance.name)
    return index


def node_role_letter(state: ClusterState, node: Node) -> str:
    """Ganeti's role letter: M(aster), O(ffline), D(rained), C(andidate: master capable), R(egular)."""
    if node.name == state.leader_node:
        return "M"
    if node.offline:
        return "O"
    if node.drained:
        return "D"
    return "C" if node.master_capable else "R"


def node_row(state: ClusterState, node: Node, instances: dict | None = None) -> dict[str, Any]:
    """The node row of docs/api.md; `instances` is node_instances(state), passed in when listing many."""
    instances = node_instances(state) if instances is None else instances
    primaries, secondaries = instances.get(node.id, ([], []))
    usage = state.usage.get(node.id, _NO_USAGE)
    group = state.groups.get(node.group)
    return {
        "name": node.name,
        "id": node.id,
        "address": node.address,
        "group": group.name if group is not None else node.group,
        "mtotal": node.memory_mib,
        "mnode": 0,
        "mfree": node.memory_mib - usage.memory_mib,
        "dtotal": node.disk_mib,
        "dfree": node.disk_mib - usage.disk_mib,
        "ctotal": node.cpus,
        "pinst_cnt": len(primaries),
        "sinst_cnt": len(secondaries),
        "pinst_list": nice_sorted(primaries),
        "sinst_list": nice_sorted(secondaries),
        "offline": node.offline,
        "drained": node.drained,
        "master": node.name == state.leader_node,
        "master_capable": node.master_capable,
        "vm_capable": node.vm_capable,
        "role": node_role_letter(state, node),
        "voter": node.role == "voter",
        "fenced": node.fenced,
        "tags": list(node.tags),
    }


def node_rows(state: ClusterState, names: list[str] | None = None) -> list[dict[str, Any]]:
    """Node rows: the named ones in the order given (PrereqError for an unknown one), else all, nicely sorted."""
    if names is None:
        chosen = nice_sorted(state.nodes.values(), lambda node: node.name)
    else:
        chosen = [find_node(state, name) for name in names]
    instances = node_instances(state)
    return [node_row(state, node, instances) for node in chosen]


def find_node(state: ClusterState, name: str) -> Node:
    node = state.node_by_name(name)
    if node is None:
        raise _unknown("node", name)
    return node


# --- groups and users ------------------------------------------------------------

def group_rows(state: ClusterState) -> list[dict[str, Any]]:
    """Every node group with its node and primary instance counts, nicely sorted."""
    nodes: dict[str, int] = {}
    for node in state.nodes.values():
        nodes[node.group] = nodes.get(node.group, 0) + 1
    primaries: dict[str, int] = {}
    for instance in state.instances.values():
        node = state.nodes.get(instance.primary)
        if node is not None:
            primaries[node.group] = primaries.get(node.group, 0) + 1
    return [{"name": group.name, "node_cnt": nodes.get(group.id, 0), "pinst_cnt": primaries.get(group.id, 0),
             "tags": list(group.tags)}
            for group in nice_sorted(state.groups.values(), lambda group: group.name)]


def user_rows(state: ClusterState) -> list[dict[str, str]]:
    return [{"name": user.name, "role": user.role} for user in nice_sorted(state.users.values(), lambda u: u.name)]


# --- jobs ----------------------------------------------------------------------

def opcode(operation: Any) -> str:
    """The Ganeti opcode name of one submitted operation (its op name, upper-cased, if it is not known)."""
    name = operation.get("op", "") if isinstance(operation, dict) else ""
    module = registry.OPERATIONS.get(name)
    return module.OPCODE if module is not None else str(name).upper()


def job_results(job: Job) -> list:
    """The results of a job's operations so far (all of them once it succeeded)."""
    if job.status == "success" and job.result is not None:
        return list(job.result)
    return list(job.results)


def job_row(job: Job, redact: bool = True) -> dict[str, Any]:
    """The job row of docs/api.md; `redact` hides secret-bearing parameters (for every role but admin)."""
    return {
        "id": job.id,
        "status": job.status,
        "summary": [opcode(operation) for operation in job.operations],
        "ops": plain(job.operations, redact),
        "actor": job.actor,
        "reason": job.reason,
        "request_id": job.request_id,
        "received_ts": job.submitted_at,
        "end_ts": job.finished_at,
        "oplog": [[ts, message] for ts, message in job.log],
        "opresult": plain(job_results(job), redact),
        "error_code": job.error_code,
        "error_message": job.error_message,
    }


def job_rows(state: ClusterState, status: str | None = None, redact: bool = True) -> list[dict[str, Any]]:
    """Job rows, oldest first (newest last), optionally only those with one status."""
    return [job_row(job, redact) for job_id, job in sorted(state.jobs.items())
            if status is None or job.status == status]


def find_job(state: ClusterState, job_id: int) -> Job:
    job = state.jobs.get(job_id)
    if job is None:
        raise PrereqError(UNKNOWN_ENTITY, f"Job {job_id} not known (finished jobs leave the state after a while; "
                                          "the event log keeps them); 'cairn job list' shows the jobs")
    return job


# --- the cluster ---------------------------------------------------------------

def cluster_object(state: ClusterState, log_status: dict, node: str, digest: str,
                   at: int | None = None) -> dict[str, Any]:
    """The cluster object of docs/api.md, as this node (`node`, with its log view) sees it."""
    params = state.cluster
    return {
        "name": params.name if params else None,
        "master": state.leader_node or None,
        "leader": log_status.get("leader"),
        "term": log_status.get("term"),
        "seq": state.seq,
        "digest": digest,
        "node": node,
        "applied_seq": log_status.get("applied_seq"),
        "voters": list(log_status.get("voters") or []),     # the log's voters, as this node sees them
        "enabled_hypervisors": list(params.enabled_hypervisors) if params else [],
        "enabled_disk_templates": list(params.enabled_disk_templates) if params else [],
        "default_hypervisor": params.default_hypervisor if params else None,
        "mac_prefix": params.mac_prefix if params else None,
        "feature_level": params.feature_level if params else None,
        "modes": [{"mode": mode, "target": node_name(state, target) if target else target, "until": until}
                  for (mode, target), until in sorted(state.modes.items(), key=lambda item: item[0])],
        "tags": list(params.tags) if params else [],
        "node_count": len(state.nodes),
        "instance_count": len(state.instances),
        "at": at,
    }


def verify(state: ClusterState) -> list[str]:
    """What is wrong with the state, in words (none for a sound state): references, placement, capacity, usage."""
    problems = []
    for instance in nice_sorted(state.instances.values(), lambda instance: instance.name):
        primary = state.nodes.get(instance.primary)
        if primary is None:
            problems.append(f"instance {instance.name}: primary node {instance.primary} does not exist")
        elif primary.offline and instance.admin_state == "up":
            problems.append(f"instance {instance.name}: marked up, but its primary node {primary.name} is offline")
        if instance.secondary and instance.secondary not in state.nodes:
            problems.append(f"instance {instance.name}: secondary node {instance.secondary} does not exist")
        for disk, node_id, disk_state, percent in instance.disk_states:
            holder = state.nodes.get(node_id)
            if disk_state != "UPTODATE" and node_id in (instance.primary, instance.secondary) and holder is not None:
                problems.append(f"instance {instance.name}: disk {disk} on node {holder.name} is {disk_state}"
                                + (f" ({percent:g}%)" if disk_state == "SYNCING" else "")
                                + ("; it is being synced again" if disk_state == "DEGRADED" and not holder.offline
                                   else ""))
    for node in nice_sorted(state.nodes.values(), lambda node: node.name):
        usage = state.usage.get(node.id, _NO_USAGE)
        if usage.memory_mib > node.memory_mib:
            problems.append(f"node {node.name}: primaries need {usage.memory_mib} MiB of memory, "
                            f"it has {node.memory_mib} MiB")
        if usage.disk_mib > node.disk_mib:
            problems.append(f"node {node.name}: instances need {usage.disk_mib} MiB of disk, "
                            f"it has {node.disk_mib} MiB")
        if node.group not in state.groups:
            problems.append(f"node {node.name}: group {node.group} does not exist")
    if dict(usage_of(state.instances)) != {k: v for k, v in state.usage.items() if v != _NO_USAGE}:
        problems.append("the per-node usage kept by replay differs from the instances' usage; "
                        "replay the log ('cairn events replay') and report the difference")
    problems.extend(n1_problems(state))
    return problems


# --- events --------------------------------------------------------------------

def event_line(seq: int, payload: bytes, redact: bool = True) -> dict[str, Any]:
    """One committed record as an event line (the JSON Lines export's form); secret hashes redacted on request."""
    line = codec.to_json_ready(codec.decode(payload, seq), seq)
    if redact:
        line["payload"] = plain(line["payload"], redact=True)
    return line
