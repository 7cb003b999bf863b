"""The live cluster as the placement engine reads it: iallocator documents and htools text from a ClusterState.

`document(state, request)` is the Ganeti iallocator input that `fastpath.iallocator` answers, and
`htools_text(state)` the htools text that `cairn balance` and `cairn capacity` read, both built
from the same per-node figures (`node_figures`). `allocate`, `relocate` and `evacuate` ask the
engine and turn its answer into node names or Cairn operations; operations call them from
`prepare`, so a choice is made once and committed with the job's plan. `n1_problems` is cluster
verify's N+1 memory check. Pure: the model and fastpath only, no I/O. It lives in `ops/` because
operations call it from `prepare` (and ops may import only the model, fastpath and images); the
rest of the appliance reads it as `appliance.allocator`.

What the engine sees of Cairn: a node's `memory_mib`, `disk_mib` and `cpus` are what it offers to
instances, so nothing is reserved for the host; free memory and disk are that less the usage of
its instances (every primary's memory, running or not) and what admitted jobs have reserved.
Offline nodes are offline; drained nodes, nodes that are not vm_capable and nodes with a
maintenance entry (whatever its end: a plan is made without a clock) are drained, which the
engine treats as offline, as Ganeti's exporters do. `replicated` is htools' `drbd`.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.model.state import ClusterState, NodeUsage, used_disk_mib

ALLOCATORS = ("hail",)
TEMPLATES = {"replicated": "drbd", "file": "file", "diskless": "diskless", "sharedfile": "sharedfile", "ext": "ext"}
EVACUATION_MODES = ("all", "primary-only", "secondary-only")
_NO_USAGE = NodeUsage()
# Our spec keys and Ganeti's, in Ganeti's SPEC order.
_SPEC_KEYS = (("memory_mib", "memory-size"), ("cpu_count", "cpu-count"), ("disk_size_mib", "disk-size"),
              ("disk_count", "disk-count"), ("nic_count", "nic-count"), ("spindle_use", "spindle-use"))


class AllocatorError(Exception):
    """The allocator found no answer; the message is its own (hail's info text)."""


def options():
    """The engine options for the live cluster: node memory as the state reports it (no kvm reserve)."""
    from fastpath.session import Options

    return Options(static_kvm_node_memory=0)


def check_allocator(name: str) -> None:
    """Refuse an allocator Cairn does not have (ValueError naming the ones it has)."""
    if name not in ALLOCATORS:
        raise ValueError(f"Unknown iallocator '{name}'; the only allocator is 'hail' (Cairn's placement engine)")


# --- the cluster as figures ------------------------------------------------------------

@dataclass(frozen=True)
class NodeFigures:
    """One node as the engine sees it (MiB, CPUs)."""

    name: str
    group: str
    offline: bool
    drained: bool
    total_memory: int
    free_memory: int
    total_disk: int
    free_disk: int
    total_cpus: int
    tags: tuple


def _in_maintenance(state: ClusterState) -> set:
    return {target for (mode, target) in state.modes.keys() if mode == "maintenance" and target}


def node_figures(state: ClusterState) -> list[NodeFigures]:
    """Every node by name, with free memory and disk after its instances' usage and admitted jobs' reservations."""
    maintenance = _in_maintenance(state)
    figures = []
    for node in sorted(state.nodes.values(), key=lambda n: n.name):
        figures.append(NodeFigures(
            node.name, node.group, node.offline, node.drained or not node.vm_capable or node.id in maintenance,
            node.memory_mib, state.free_memory_mib(node.id), node.disk_mib, state.free_disk_mib(node.id),
            node.cpus, tuple(node.tags)))
    return figures


def _spec(values: dict) -> dict:
    return {theirs: int(values[ours]) for ours, theirs in _SPEC_KEYS}


def ipolicy(state: ClusterState) -> dict:
    """The cluster's instance policy in the iallocator's words, with the enabled templates."""
    policy = state.cluster.ipolicy
    return {"std": _spec(policy["std"]), "minmax": [{"min": _spec(policy["min"]), "max": _spec(policy["max"])}],
            "disk-templates": [TEMPLATES.get(t, t) for t in state.cluster.enabled_disk_templates],
            "vcpu-ratio": float(policy["vcpu_ratio"]), "spindle-ratio": float(policy["spindle_ratio"])}


def _node_entry(node: NodeFigures) -> dict:
    return {"group": node.group, "offline": node.offline, "drained": node.drained, "vm_capable": True,
            "tags": list(node.tags), "total_memory": node.total_memory, "reserved_memory": 0,
            "free_memory": node.free_memory, "total_disk": node.total_disk, "free_disk": node.free_disk,
            "total_cpus": node.total_cpus, "reserved_cpus": 0, "total_spindles": 1, "free_spindles": 1,
            "ndparams": {"spindle_count": 1, "exclusive_storage": False}}


def _instances(state: ClusterState) -> dict:
    names = {node.id: node.name for node in state.nodes.values()}
    instances = {}
    for instance in sorted(state.instances.values(), key=lambda i: i.name):
        if instance.primary not in names or (instance.secondary and instance.secondary not in names):
            continue  # a dangling reference: cluster verify reports it; the engine cannot place it
        disks = [disk.size_mib for disk in instance.disks] if instance.disk_template != "diskless" else []
        instances[instance.name] = {
            "memory": instance.memory_mib, "vcpus": instance.vcpus, "disk_space_total": used_disk_mib(instance),
            "disks": [{"size": size} for size in disks], "spindle_use": 1,
            "disk_template": TEMPLATES.get(instance.disk_template, instance.disk_template),
            "tags": list(instance.tags), "nics": [{} for _ in instance.nics],
            "nodes": [names[n] for n in (instance.primary, instance.secondary) if n],
            "admin_state": instance.admin_state}
    return instances


def document(state: ClusterState, request: dict) -> dict:
    """The Ganeti iallocator input document of the cluster, with `request` (as `cairn iallocator` reads it)."""
    policy = ipolicy(state)
    groups = {group.id: {"name": group.name, "alloc_policy": "preferred", "networks": [], "tags": list(group.tags),
                         "ipolicy": policy}
              for group in sorted(state.groups.values(), key=lambda g: g.name)}
    hypervisors = [state.cluster.default_hypervisor] + [h for h in state.cluster.enabled_hypervisors
                                                        if h != state.cluster.default_hypervisor]
    return {"version": 2, "cluster_name": state.cluster.name, "cluster_tags": list(state.cluster.tags),
            "enabled_hypervisors": hypervisors, "ipolicy": policy, "nodegroups": groups,
            "nodes": {node.name: _node_entry(node) for node in node_figures(state)},
            "instances": _instances(state), "request": request}


def htools_text(state: ClusterState) -> str:
    """The cluster in htools text format (what hscan would write), for balance and capacity."""
    from fastpath.htools_text import write
    from fastpath.iallocator import load
    from fastpath.model import Policy, Spec

    if state.cluster is None:
        from fastpath.model import Cluster

        return write(Cluster())  # not initialised yet: no groups, no nodes
    cluster = load(document(state, {"type": "allocate"}), options())
    policy = state.cluster.ipolicy

    def spec(values: dict) -> Spec:
        return Spec(*(int(values[ours]) for ours, _ in _SPEC_KEYS))

    # The cluster's own policy line (hspace takes its specs and first template from it).
    cluster.policy = Policy(spec(policy["std"]), [(spec(policy["min"]), spec(policy["max"]))],
                            ipolicy(state)["disk-templates"], float(policy["vcpu_ratio"]),
                            float(policy["spindle_ratio"]))
    cluster.policy_given = True
    leader = state.node_by_name(state.leader_node) if state.leader_node else None
    for node in cluster.nodes:
        node.master = leader is not None and node.name == leader.name and not node.offline
    return write(cluster)


# --- requests -------------------------------------------------------------------------

def allocate_request(name: str, disk_template: str, memory_mib: int, vcpus: int, disks, nic_count: int = 1,
                     tags=()) -> dict:
    """An iallocator `allocate` request for a new instance (two nodes for a replicated one)."""
    sizes = [] if disk_template == "diskless" else [int(size) for size in disks]
    return {"type": "allocate", "name": name, "required_nodes": 2 if disk_template == "replicated" else 1,
            "disk_template": TEMPLATES.get(disk_template, disk_template), "memory": memory_mib, "vcpus": vcpus,
            "disk_space_total": sum(sizes), "disks": [{"size": size} for size in sizes],
            "nics": [{} for _ in range(nic_count)], "tags": list(tags), "spindle_use": 1}


def _answer(state: ClusterState, request: dict) -> dict:
    """The engine's answer to `request` on the state's document (ValueError for what it cannot read)."""
    from fastpath.iallocator import HANDLERS
    from fastpath.request_shape import check_document

    built = document(state, request)
    check_document(built)
    return HANDLERS[request["type"]](built, options())


def allocate(state: ClusterState, request: dict) -> tuple[str, str]:
    """(primary, secondary) node names hail chooses for a new instance ('' secondary for one node);
    AllocatorError with hail's text when nothing fits."""
    answer = _answer(state, request)
    if not answer["success"]:
        raise AllocatorError(answer["info"])
    nodes = list(answer["result"])
    return nodes[0], (nodes[1] if len(nodes) > 1 else "")


def relocate(state: ClusterState, instance_name: str) -> str:
    """The node hail chooses as the new secondary of a replicated instance; AllocatorError when none fits."""
    instance = state.instance_by_name(instance_name)
    old = state.nodes[instance.secondary].name
    answer = _answer(state, {"type": "relocate", "name": instance.name, "required_nodes": 1,
                             "relocate_from": [old]})
    if not answer["success"]:
        raise AllocatorError(answer["info"])
    return answer["result"][0]


@dataclass(frozen=True)
class Evacuation:
    """What hail answers to evacuating a node: the follow-up jobs (Cairn operations), and what fails."""

    jobs: tuple          # one tuple of {"op": NAME, "params": {...}} per instance
    moved: tuple         # (instance, group, (new nodes)) per instance
    failed: tuple        # (instance, why) per instance


def evacuated_instances(state: ClusterState, node_id: str, mode: str) -> list[str]:
    """The names of the node's instances that `mode` moves (primaries, secondaries or both), by name."""
    wanted = []
    for instance in state.instances.values():
        if (mode != "secondary-only" and instance.primary == node_id) or \
                (mode != "primary-only" and instance.secondary == node_id):
            wanted.append(instance.name)
    return sorted(wanted)


def evacuate(state: ClusterState, node_id: str, mode: str) -> Evacuation:
    """hail's node-evacuate answer for the node's instances, its opcodes turned into Cairn operations."""
    names = evacuated_instances(state, node_id, mode)
    if not names:
        return Evacuation((), (), ())
    answer = _answer(state, {"type": "node-evacuate", "instances": names, "evac_mode": mode})
    moved, failed, jobs = answer["result"]
    return Evacuation(tuple(tuple(operation(opcode) for opcode in job) for job in jobs),
                      tuple((name, group, tuple(nodes)) for name, group, nodes in moved),
                      tuple((name, why) for name, why in failed))


def operation(opcode: dict) -> dict:
    """The Cairn operation of one of hail's opcodes (ValueError for one Cairn cannot run)."""
    kind, instance = opcode.get("OP_ID"), opcode.get("instance_name")
    if opcode.get("target_node"):
        raise ValueError(f"moving instance {instance} to a chosen primary ({kind} with target_node) needs shared "
                         "storage, which Cairn does not have")
    if kind == "OP_INSTANCE_REPLACE_DISKS":
        return {"op": "instance_replace_disks", "params": {"instance": instance, "node": opcode["remote_node"]}}
    if kind == "OP_INSTANCE_MIGRATE":
        return {"op": "instance_migrate", "params": {"instance": instance, "allow_failover": True}}
    if kind == "OP_INSTANCE_FAILOVER":
        return {"op": "instance_failover", "params": {"instance": instance}}
    raise ValueError(f"the allocator answered with opcode {kind}, which Cairn does not run")


def move_operations(instance: str, code: str) -> tuple:
    """The operations of one hbal move (`f`, `r:NODE` and their combinations, in order), for `balance -X`."""
    operations = []
    for part in code.split():
        if part == "f":
            operations.append({"op": "instance_migrate", "params": {"instance": instance, "allow_failover": True}})
        elif part.startswith("r:"):
            operations.append({"op": "instance_replace_disks", "params": {"instance": instance, "node": part[2:]}})
        else:
            raise ValueError(f"move '{code}' of instance {instance} needs shared storage ('{part}'), which Cairn "
                             "does not have")
    return tuple(operations)


# --- N+1 ------------------------------------------------------------------------------

def n1_problems(state: ClusterState) -> list[str]:
    """Ganeti's N+1 memory check: for each online node, can it take over the instances it holds as
    secondary should their primary fail? One text per (secondary node, failing primary) that cannot."""
    needed: dict[tuple[str, str], int] = {}
    for instance in state.instances.values():
        if instance.secondary and instance.admin_state != "offline":
            key = (instance.secondary, instance.primary)
            needed[key] = needed.get(key, 0) + instance.memory_mib
    problems = []
    names = {node.id: node.name for node in state.nodes.values()}
    for (secondary, primary), memory in sorted(needed.items(), key=lambda item: (names.get(item[0][0], item[0][0]),
                                                                                names.get(item[0][1], item[0][1]))):
        node = state.nodes.get(secondary)
        if node is None or node.offline:
            continue
        free = state.free_memory_mib(secondary)
        if free < memory:
            problems.append(f"node {node.name}: not enough memory to accommodate instance failovers should node "
                            f"{names.get(primary, primary)} fail ({memory}MiB needed, {free}MiB available)")
    return problems
