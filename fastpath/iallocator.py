"""Ganeti's iallocator protocol: read a request document, answer allocate, relocate, node-evacuate,
change-group and multi-allocate the way hail does, as one line of JSON.

Written from the protocol description in shared/reference/htools.md section 4.
"""

import json

from fastpath import dedicated
from fastpath.allocate import GroupOutcome, allocate, try_group
from fastpath.forthmove import ForthcomingSearch
from fastpath.model import Cluster, Group, Instance, Node, Policy, Spec as PolicySpec
from fastpath.request_shape import RequestError, check_document
from fastpath.session import Options, Session, group_text, network_check, no_solution_text, policy_refusals
from fastpath.spec import (ALLOC_NEVER, ALLOC_PRIMARY, ALLOC_SECONDARY, FAILOVER_TO_ANY, IGNORE_SOFT, KIND_MIRRORED,
                           KIND_SHARED, REPLACE_SECONDARY)

ADMIN_STATES = {"up": "running", "down": "ADMIN_down", "offline": "ADMIN_offline"}


def _key(obj: dict, key: str, what: str):
    if not isinstance(obj, dict) or key not in obj:
        keys = sorted(obj) if isinstance(obj, dict) else []
        raise RequestError(f"invalid iallocator message: key '{key}' not found in {what}, "
                           f"object contains only {keys}")
    return obj[key]


def _spec(obj: dict) -> PolicySpec:
    return PolicySpec(obj.get("memory-size", 128), obj.get("cpu-count", 1), obj.get("disk-size", 1024),
                      obj.get("disk-count", 1), obj.get("nic-count", 1), obj.get("spindle-use", 1))


def _policy(obj: dict | None) -> Policy:
    if not obj:
        return Policy()
    policy = Policy()
    if "std" in obj:
        policy.std = _spec(obj["std"])
    if obj.get("minmax"):
        policy.minmax = [(_spec(p["min"]), _spec(p["max"])) for p in obj["minmax"]]
    policy.templates = list(obj.get("disk-templates", policy.templates))
    policy.vcpu_ratio = float(obj.get("vcpu-ratio", policy.vcpu_ratio))
    policy.spindle_ratio = float(obj.get("spindle-ratio", policy.spindle_ratio))
    return policy


def _node(name: str, obj: dict, kvm_memory: int) -> Node:
    offline = bool(obj.get("offline")) or bool(obj.get("drained")) or not obj.get("vm_capable", True)
    ndparams = obj.get("ndparams", {})
    excl = bool(ndparams.get("exclusive_storage", False))
    # Like hail: total spindles are the node's own figure under exclusive storage (0 for a node
    # that is offline or not vm-capable), else spindle_count.
    live = not obj.get("offline") and obj.get("vm_capable", True)
    spindles = int((obj.get("total_spindles", 0) if live else 0) if excl else ndparams.get("spindle_count", 1))
    node = Node(name=name, t_mem=0.0, n_mem=0, f_mem=0, t_dsk=0.0, f_dsk=0, t_cpu=0.0, offline=offline,
                group=_key(obj, "group", f"node {name}"), spindles=spindles,
                tags=list(obj.get("tags", [])), excl_stor=excl)
    if not offline:
        node.t_mem = float(_key(obj, "total_memory", f"node {name}"))
        node.n_mem = kvm_memory if kvm_memory else int(obj.get("reserved_memory", 0))
        node.f_mem = int(_key(obj, "free_memory", f"node {name}"))
        node.t_dsk = float(_key(obj, "total_disk", f"node {name}"))
        node.f_dsk = int(_key(obj, "free_disk", f"node {name}"))
        node.t_cpu = float(_key(obj, "total_cpus", f"node {name}"))
        node.node_cpus = int(obj.get("reserved_cpus", 1))
        node.free_spindles = int(obj.get("free_spindles", 0))
    return node


def _instance(name: str, obj: dict) -> Instance:
    nodes = list(_key(obj, "nodes", f"instance {name}"))
    disks = [int(d.get("size", 0)) for d in obj.get("disks", [])]
    dsk = int(obj.get("disk_space_total", sum(disks)))
    given = [d for d in obj.get("disks", []) if d.get("spindles") is not None]
    spindles = str(sum(int(d["spindles"]) for d in given)) if len(given) == len(obj.get("disks", [])) else "-"
    return Instance(name=name, mem=int(_key(obj, "memory", f"instance {name}")), dsk=dsk,
                    vcpus=int(_key(obj, "vcpus", f"instance {name}")),
                    status=ADMIN_STATES.get(obj.get("admin_state", "up"), "running"), auto_balance=True,
                    pnode=nodes[0] if nodes else "", snode=nodes[1] if len(nodes) > 1 else "",
                    template=obj.get("disk_template", "plain"), tags=list(obj.get("tags", [])),
                    spindle_use=int(obj.get("spindle_use", 1)), spindles=spindles,
                    forthcoming=bool(obj.get("forthcoming", False)),
                    disks=disks or [dsk], networks=nic_networks(obj))


def nic_networks(obj: dict) -> list[str]:
    """The networks an instance's NICs name (hail allocates only to groups connected to all)."""
    return [nic["network"] for nic in obj.get("nics", []) if isinstance(nic, dict) and nic.get("network")]


def load(document: dict, options: Options) -> Cluster:
    """The cluster described by an iallocator request document."""
    hypervisors = document.get("enabled_hypervisors") or []
    kvm_memory = options.static_kvm_node_memory if hypervisors and hypervisors[0] == "kvm" else 0
    cluster = Cluster(tags=list(document.get("cluster_tags", [])))
    for uuid, obj in _key(document, "nodegroups", "the request").items():
        group = Group(obj.get("name", uuid), uuid, obj.get("alloc_policy", "preferred"), list(obj.get("tags", [])),
                      list(obj.get("networks", [])))
        cluster.groups.append(group)
        cluster.group_policies[group.name] = _policy(obj.get("ipolicy"))
    uuids = {g.uuid for g in cluster.groups}
    for name, obj in _key(document, "nodes", "the request").items():
        node = _node(name, obj, kvm_memory)
        if node.group not in uuids:
            raise RequestError(f"node {name} is in unknown group '{node.group}'; list it under 'nodegroups'")
        cluster.nodes.append(node)
    names = {n.name for n in cluster.nodes}
    for name, obj in _key(document, "instances", "the request").items():
        inst = _instance(name, obj)
        for node in (inst.pnode, inst.snode):
            if node and node not in names:
                raise RequestError(f"Unknown node '{node}' for instance {name}")
        cluster.instances.append(inst)
    return cluster


def _new_instance(obj: dict) -> Instance:
    inst = _instance(_key(obj, "name", "the request"), {**obj, "nodes": []})
    return inst


def _allocation_groups(session: Session, request: dict) -> list[int]:
    wanted = request.get("group_name")
    groups = list(range(len(session.cluster.groups)))
    if wanted:
        groups = [g for g in groups if wanted in (session.cluster.groups[g].name, session.cluster.groups[g].uuid)]
        if not groups:
            raise RequestError(f"unknown group '{wanted}' in group_name; use one of the request's node groups")
    return groups


def _allocate_one(session: Session, request: dict, inst: int, obj: dict):
    required = int(obj.get("required_nodes", 2 if obj.get("disk_template") == "drbd" else 1))
    restrict = obj.get("restrict-to-nodes") or request.get("restrict-to-nodes")
    mask = None
    if restrict:
        allowed = set(restrict)
        mask = [name in allowed for name in session.names]

    groups = _allocation_groups(session, request)
    unconnected = network_check(session.cluster, nic_networks(obj), obj.get("name", ""),
                                bool(request.get("group_name")))
    if _dedicated(session, request, groups):
        return dedicated.allocate(dedicated.Dedicated(session.engine, session.spec, session.cluster,
                                                      session.used_spindles),
                                  _dedicated_instance(session, inst, obj), required, groups, mask,
                                  session.options.ignore_soft_errors,
                                  network_check(session.cluster, nic_networks(obj), obj.get("name", ""), True))
    new = _dedicated_instance(session, inst, obj)

    refused_primaries = policy_refusals(session, new.mem, new.vcpus, new.disks, new.template, new.spindle_use,
                                        new.spindles)
    return allocate(session.engine, session.spec, session.cluster, inst, required, groups, mask,
                    session.options.ignore_soft_errors, session.options.capacity_checks,
                    whole_cluster=not request.get("group_name"), unconnected=unconnected,
                    refused_primaries=refused_primaries)


def _dedicated(session: Session, request: dict, groups: list[int]) -> bool:
    """hail's test for its dedicated allocation: every node of the named group, or of every group
    that is not unallocable, has exclusive storage."""
    cluster = session.cluster
    wanted = groups if request.get("group_name") else [g for g in groups
                                                       if cluster.groups[g].alloc_policy != "unallocable"]
    return dedicated.is_dedicated(session.spec, wanted)


def _dedicated_instance(session: Session, inst: int, obj: dict) -> dedicated.NewInstance:
    """The new instance as the dedicated checks see it: the engine's figures, the request's disks."""
    value = session.engine.instance_value
    disks = obj.get("disks", [])
    spindles = sum(int(d["spindles"]) for d in disks) if all(d.get("spindles") is not None for d in disks) else None
    return dedicated.NewInstance(*(value(inst, name) for name in ("mem", "dsk", "vcpus", "kind", "uses_mem",
                                                                  "uses_cpu", "sec_mem", "excl_mask")),
                                 disks=[int(d.get("size", 0)) for d in disks], spindles=spindles,
                                 template=obj.get("disk_template", "plain"),
                                 spindle_use=int(obj.get("spindle_use", 1)))


def _solution_text(session: Session, outcome) -> str:
    """hail's description of a group's solution: score, successes, failures and nodes."""
    nodes = "/".join(session.names[k] for k in outcome.nodes if k >= 0)
    score = dedicated.metric_text(outcome.score) if isinstance(outcome.score, tuple) else f"{outcome.score:.8f}"
    return (f"score: {score}, successes {outcome.successes}, failures {sum(outcome.failures.values())} "
            f"({outcome.reasons()}) for node(s) {nodes}")


def answer_allocate(document: dict, options: Options) -> dict:
    """hail's answer to an allocate request."""
    request = document["request"]
    session = Session(load(document, options), options, [_new_instance(request)])
    chosen, outcomes = _allocate_one(session, request, session.new[0], request)
    return _allocation_response(session, chosen, outcomes, not request.get("group_name"))


def _allocation_response(session: Session, chosen, outcomes, say_group: bool = True) -> dict:
    if chosen is None:
        text = ", ".join(group_text(o) for o in outcomes)
        return {"success": False, "info": f"Request failed: {text}", "result": []}
    # hail names the selected group unless the request named it.
    parts = [f"Selected group: {chosen.name}"] if say_group else []
    for o in outcomes:
        if o.nodes is None:
            parts.append(group_text(o))
            continue
        parts.append(f"Group {o.name} ({o.policy}): {_solution_text(session, o)}")
    result = [session.names[k] for k in chosen.nodes if k >= 0]
    return {"success": True, "info": "Request successful: " + ", ".join(parts), "result": result}


def answer_allocate_secondary(document: dict, options: Options) -> dict:
    """hail's answer to allocate-secondary (converting an instance to drbd): the best secondary for
    it with its primary kept, any other node of the primary's group as candidate."""
    name = _key(document["request"], "name", "the request")
    obj = _key(document, "instances", "the document").get(name)
    if obj is None:
        raise RequestError(f"Unknown instance '{name}'")
    if len(obj.get("nodes", [])) > 1:
        return {"success": False, "info": "Request failed: Instance already has a secondary", "result": []}
    session = Session(load(document, options), options, [_instance(name, {**obj, "nodes": [],
                                                                           "disk_template": "drbd"})])
    inst = session.spec.instance_names.index(name)
    primary = session.moves.nodes_of(inst)[0]
    group = session.group_of_node(primary)
    # Like hail, the instance leaves its primary and comes back to it as a drbd instance; a
    # forthcoming one comes back forthcoming (only the forthcoming checks and figures).
    search = try_group
    if inst in session.moves.forth:
        session.moves.place(inst, -1, -1)
        search = ForthcomingSearch(session.moves)
    else:
        session.engine.place(inst, -1, -1)
    mask = [ALLOC_PRIMARY if k == primary else ALLOC_SECONDARY if session.group_of_node(k) == group else
            ALLOC_NEVER for k in range(session.spec.n_nodes)]
    outcome = GroupOutcome(session.cluster.groups[group].name, session.cluster.groups[group].alloc_policy, group)
    flags = IGNORE_SOFT if options.ignore_soft_errors else 0
    search(session.engine, session.spec, outcome, (group, session.new[0], 2, mask, flags, -1),
           options.capacity_checks)
    if outcome.nodes is None:
        return {"success": False, "info": f"Request failed: {no_solution_text(outcome)}", "result": []}
    return {"success": True, "info": f"Request successful: {_solution_text(session, outcome)}",
            "result": session.names[outcome.nodes[1]]}


def answer_multi_allocate(document: dict, options: Options) -> dict:
    """hail's answer to a multi-allocate request: one after another, each seeing the previous."""
    request = document["request"]
    objs = list(_key(request, "instances", "the request"))
    session = Session(load(document, options), options, [_new_instance(o) for o in objs])
    allocated, failed = [], []
    for inst, obj in zip(session.new, objs):
        chosen, outcomes = _allocate_one(session, request, inst, obj)
        if chosen is None:
            # As with hail, one instance that fits nowhere fails the whole request.
            text = ", ".join(group_text(o) for o in outcomes)
            return {"success": False, "info": f"Request failed: {text}", "result": []}
        session.engine.place(inst, chosen.nodes[0], chosen.nodes[1])
        spindles = [int(d["spindles"]) for d in obj.get("disks", []) if d.get("spindles") is not None]
        for k in chosen.nodes:
            if k >= 0:
                session.used_spindles[k] = session.used_spindles.get(k, 0) + sum(spindles)
        allocated.append([obj["name"], [session.names[k] for k in chosen.nodes if k >= 0]])
    info = f"{len(failed)} instances failed to allocate and {len(allocated)} were allocated successfully"
    if failed:
        return {"success": False, "info": f"Request failed: {info}", "result": [allocated, failed]}
    return {"success": True, "info": f"Request successful: {info}", "result": [allocated, failed]}


def answer_relocate(document: dict, options: Options) -> dict:
    """hail's answer to relocate: a new secondary (drbd) or primary (shared storage) for one instance."""
    # Here, not at the top: only relocate and evacuation requests need it, and every allocate
    # process would pay its import (about 0.7 ms).
    from fastpath.evacuate import best_target, no_target_text

    request = document["request"]
    session = Session(load(document, options), options, [])
    name = _key(request, "name", "the request")
    if name not in session.spec.instance_names:
        raise RequestError(f"relocate: unknown instance '{name}'; it must be listed under 'instances'")
    inst = session.spec.instance_names.index(name)
    kind = session.spec.instances["kind"][inst]
    if kind not in (KIND_MIRRORED, KIND_SHARED):
        return {"success": False, "info": "Request failed: Can't relocate non-mirrored instances", "result": []}
    _, secondary = session.moves.nodes_of(inst)
    given = list(request.get("relocate_from", []))
    if kind == KIND_MIRRORED and given != [session.names[secondary]]:
        return {"success": False, "info": "Request failed: Unsupported request: excluded nodes not equal to "
                f"instance's secondary({secondary} versus {json.dumps(given)})", "result": []}
    move = REPLACE_SECONDARY if kind == KIND_MIRRORED else FAILOVER_TO_ANY
    best = best_target(session, inst, move)
    if best is None:
        return {"success": False, "info": f"Request failed: {no_target_text(session, inst, move)}", "result": []}
    return {"success": True, "info": "Request successful: success", "result": [session.names[best[0]]]}


def answer_node_evacuate(document: dict, options: Options) -> dict:
    """hail's answer to node-evacuate: [moved, failed, jobs]."""
    from fastpath.evacuate import evacuate_many  # here for the reason answer_relocate gives

    request = document["request"]
    mode = request.get("evac_mode", "all")
    if mode not in ("primary-only", "secondary-only", "all"):
        raise RequestError(f"unknown evac_mode '{mode}'; use primary-only, secondary-only or all")
    session = Session(load(document, options), options, [])
    names = list(_key(request, "instances", "the request"))
    return evacuate_many(session, names, mode)


def answer_change_group(document: dict, options: Options) -> dict:
    """hail's answer to change-group: re-place instances in the best of the target groups."""
    from fastpath.evacuate import evacuate_many  # here for the reason answer_relocate gives

    request = document["request"]
    session = Session(load(document, options), options, [])
    wanted = list(request.get("target_groups") or [])
    groups = [k for k, g in enumerate(session.cluster.groups) if not wanted or g.uuid in wanted or g.name in wanted]
    names = list(_key(request, "instances", "the request"))
    current = set()
    for name in names:
        if name in session.spec.instance_names:
            p, _ = session.moves.nodes_of(session.spec.instance_names.index(name))
            current.add(session.group_of_node(p))
    # hail leaves out every group holding a primary of the request's instances, named or not.
    targets = [g for g in groups if g not in current]
    return evacuate_many(session, names, "all", targets)


HANDLERS = {"allocate": answer_allocate, "multi-allocate": answer_multi_allocate, "relocate": answer_relocate,
            "node-evacuate": answer_node_evacuate, "change-group": answer_change_group,
            "allocate-secondary": answer_allocate_secondary}


def answer(text: str, options: Options | None = None) -> str:
    """The one-line JSON response to an iallocator request; raises RequestError for bad input."""
    options = options or Options()
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise RequestError(f"Parsing input IAllocator message: Malformed JSON: {error}") from None
    check_document(document)
    request = _key(document, "request", "the document")
    kind = _key(request, "type", "the request")
    if kind not in HANDLERS:
        response = {"success": False, "info": f"Request failed: request type '{kind}' is not supported "
                    f"(supported: {', '.join(HANDLERS)})", "result": []}
    else:
        response = HANDLERS[kind](document, options)
    return json.dumps(response, separators=(",", ":"))


def _policy_json(policy: Policy) -> dict:
    def spec(s: PolicySpec) -> dict:
        return {"memory-size": s.memory, "cpu-count": s.cpu, "disk-size": s.disk, "disk-count": s.disk_count,
                "nic-count": s.nic_count, "spindle-use": s.spindle_use}
    return {"std": spec(policy.std), "minmax": [{"min": spec(lo), "max": spec(hi)} for lo, hi in policy.minmax],
            "disk-templates": list(policy.templates), "vcpu-ratio": policy.vcpu_ratio,
            "spindle-ratio": policy.spindle_ratio}


def request_document(cluster: Cluster, request: dict, hypervisor: str = "xen-pvm") -> dict:
    """An iallocator input document embedding `cluster` (how Ganeti would describe it) and `request`."""
    states = {"running": "up", "ADMIN_offline": "offline"}
    nodes = {}
    for n in cluster.nodes:
        nodes[n.name] = {"group": n.group, "offline": n.offline, "drained": False, "vm_capable": True,
                         "tags": list(n.tags), "total_memory": int(n.t_mem), "reserved_memory": n.n_mem,
                         "free_memory": n.f_mem, "total_disk": int(n.t_dsk), "free_disk": n.f_dsk,
                         "total_cpus": int(n.t_cpu), "reserved_cpus": n.node_cpus, "total_spindles": n.spindles,
                         "free_spindles": n.free_spindles,
                         "ndparams": {"spindle_count": n.spindles, "exclusive_storage": n.excl_stor}}
    instances = {}
    for i in cluster.instances:
        instances[i.name] = {"memory": i.mem, "vcpus": i.vcpus, "disk_space_total": i.dsk,
                             "disks": [{"size": d} for d in (i.disks or [i.dsk])], "disk_template": i.template,
                             "spindle_use": i.spindle_use, "tags": list(i.tags), "nics": [],
                             "nodes": [x for x in (i.pnode, i.snode) if x],
                             "admin_state": states.get(i.status, "down")}
        if i.forthcoming:
            instances[i.name]["forthcoming"] = True
    groups = {g.uuid: {"name": g.name, "alloc_policy": g.alloc_policy, "networks": list(g.networks),
                       "tags": list(g.tags), "ipolicy": _policy_json(cluster.policy_of(g.uuid))}
              for g in cluster.groups}
    return {"version": 2, "cluster_name": "cairn", "cluster_tags": list(cluster.tags),
            "enabled_hypervisors": [hypervisor], "nodegroups": groups, "nodes": nodes, "instances": instances,
            "request": request}
