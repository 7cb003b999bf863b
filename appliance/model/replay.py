"""The only place state changes: `apply` one committed event, `fold` many.

Each event type has one small handler returning the next state. Handlers never
raise for a committed event and never read the clock: validation happened in
`ops.*.check` before the event was proposed, so a handler that meets something
odd (an unknown id) leaves the state as it is. An event id already applied
within the dedup window changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from appliance.model import events as ev
from appliance.model.codec import Envelope, decode
from appliance.model.state import (
    ClusterParams, ClusterState, Disk, Group, Instance, Job, JOB_FINISHED, JoinTokenEntry, Nic, Node, NodeUsage, User,
    NO_IDS, RecentIds, add_usage, gc_paused, used_disk_mib,
)

# A handler returns the next state, or (on hot paths) a dict of the state fields it changes.
Handler = Callable[[ClusterState, object, Envelope, int], "ClusterState | dict"]
HANDLERS: dict[type, Handler] = {}


def handles(cls: type):
    def register(function: Handler) -> Handler:
        HANDLERS[cls] = function
        return function
    return register


def apply(state: ClusterState, envelope: Envelope, seq: int | None = None) -> ClusterState:
    """The state after one committed event (at `seq`, default the next one)."""
    seq = state.seq + 1 if seq is None else seq
    recent = state.recent_events
    event_id = envelope.event_id
    if event_id in recent:
        return state.evolve(seq=seq)
    result = HANDLERS[type(envelope.event)](state, envelope.event, envelope, seq)
    return _stamped(state, result, seq, recent.push(event_id))


_SEQ_INDEX = ClusterState._index["seq"]
_RECENT_INDEX = ClusterState._index["recent_events"]
_STATE_INDEX = ClusterState._index
_tuple_new = tuple.__new__
_NEVER = float("inf")


def _stamped(state: ClusterState, result, seq: int, recent) -> ClusterState:
    """The handler's result with the new seq and dedup window: one state copy per event.

    Hot handlers return only the fields they change (a dict) so that the state
    is copied once; the others return a whole state.
    """
    values = list(result) if type(result) is not dict else list(state)
    if type(result) is dict:
        for name, value in result.items():
            values[_STATE_INDEX[name]] = value
    values[_SEQ_INDEX] = seq
    values[_RECENT_INDEX] = recent
    return _tuple_new(ClusterState, values)


def fold(records: Iterable, state: ClusterState | None = None, until: int | None = None) -> ClusterState:
    """Apply committed records (anything with `.seq` and `.payload`) in order, up to seq `until`.

    This is `apply` in a loop, written out so the loop pays for no calls it
    does not need. The cyclic garbage collector is paused meanwhile: the state
    is acyclic, and a full collection walks every object of a large state
    again and again.
    """
    state = state if state is not None else ClusterState()
    handlers, _decode, index, seq_index, recent_index = HANDLERS, decode, _STATE_INDEX, _SEQ_INDEX, _RECENT_INDEX
    limit = until if until is not None else float("inf")
    with gc_paused():
        for record in records:
            seq = record.seq
            if seq > limit:
                break
            envelope = _decode(record.payload, seq)
            recent = state.recent_events
            event_id = envelope.event_id
            # RecentIds.__contains__ and the common case of RecentIds.push (at the head), written out.
            generation, start, count, current, previous = recent
            if event_id in previous or current.get(event_id, _NEVER) < count:
                state = state.evolve(seq=seq)
                continue
            if count - start < generation and len(current) == count - start and current is not NO_IDS:
                current[event_id] = count
                recent = _tuple_new(RecentIds, (generation, start, count + 1, current, previous))
            else:
                recent = recent.push(event_id)
            event = envelope.event
            result = handlers[type(event)](state, event, envelope, seq)
            # _stamped, written out.
            if type(result) is dict:
                values = list(state)
                for name, value in result.items():
                    values[index[name]] = value
            else:
                values = list(result)
            values[seq_index] = seq
            values[recent_index] = recent
            state = _tuple_new(ClusterState, values)
    return state


def fold_envelopes(envelopes: Iterable[Envelope], state: ClusterState | None = None) -> ClusterState:
    """Apply envelopes in order, numbering them from the state's seq."""
    state = state if state is not None else ClusterState()
    for envelope in envelopes:
        state = apply(state, envelope)
    return state


# --- cluster, modes, tags --------------------------------------------------

@handles(ev.ClusterInitialized)
def _cluster_initialized(state, e, envelope, seq):
    params = ClusterParams(e.name, e.enabled_hypervisors, e.enabled_disk_templates, e.default_hypervisor,
                           e.ipolicy, e.mac_prefix, e.feature_level, e.fencing_interval_s,
                           e.recovery_interval_s, e.default_group)
    group = Group(e.default_group, "default")
    return state.evolve(cluster=params, groups=state.groups.set(group.id, group),
                        group_names=state.group_names.set(group.name, group.id))


@handles(ev.ClusterModified)
def _cluster_modified(state, e, envelope, seq):
    # Every field of the event is a cluster parameter of the same name; None leaves it unchanged.
    if state.cluster is None:
        return state
    changes = {name: value for name, value in zip(e.FIELDS, e) if value is not None}
    return state.evolve(cluster=state.cluster.evolve(**changes))


@handles(ev.LeaderElected)
def _leader_elected(state, e, envelope, seq):
    if e.term <= state.leader_term:
        return {}
    return {"leader_node": e.node, "leader_term": e.term}


@handles(ev.ModeSet)
def _mode_set(state, e, envelope, seq):
    # Disarming recovery (or a node's maintenance) stands watchdogs down with the next grant: until a node
    # reports its watchdog armed again (NodeWatchdogArmed), its lease running out proves nothing.
    nodes = state.nodes
    if e.mode == "recovery_disarmed":
        for node in state.nodes.values():
            if not node.watchdog_down:
                nodes = nodes.set(node.id, node.evolve(watchdog_down=True))
    elif e.mode == "maintenance" and e.target in nodes and not nodes[e.target].watchdog_down:
        nodes = nodes.set(e.target, nodes[e.target].evolve(watchdog_down=True))
    return state.evolve(modes=state.modes.set((e.mode, e.target), e.until), nodes=nodes)


@handles(ev.NodeWatchdogArmed)
def _node_watchdog_armed(state, e, envelope, seq):
    node = state.nodes.get(e.node)
    if node is None or not node.watchdog_down:
        return state
    return state.evolve(nodes=state.nodes.set(e.node, node.evolve(watchdog_down=False)))


@handles(ev.ModeCleared)
def _mode_cleared(state, e, envelope, seq):
    key = (e.mode, e.target)
    return state.evolve(modes=state.modes.delete(key)) if key in state.modes else state


def _retag(tags: tuple, add: tuple, remove: tuple) -> tuple:
    return tuple(sorted((set(tags) | set(add)) - set(remove)))


def _tags(state, e, add: tuple, remove: tuple):
    if e.kind == "cluster":
        if state.cluster is None:
            return state
        cluster = state.cluster
        return state.evolve(cluster=cluster.evolve(tags=_retag(cluster.tags, add, remove)))
    collection = {"node": "nodes", "group": "groups", "instance": "instances"}.get(e.kind)
    mapping = getattr(state, collection) if collection else None
    if mapping is None or e.target not in mapping:
        return state
    target = mapping[e.target]
    updated = target.evolve(tags=_retag(target.tags, add, remove))
    return state.evolve(**{collection: mapping.set(e.target, updated)})


@handles(ev.TagsAdded)
def _tags_added(state, e, envelope, seq):
    return _tags(state, e, e.tags, ())


@handles(ev.TagsRemoved)
def _tags_removed(state, e, envelope, seq):
    return _tags(state, e, (), e.tags)


# --- users and groups ------------------------------------------------------

@handles(ev.UserAdded)
def _user_added(state, e, envelope, seq):
    return state.evolve(users=state.users.set(e.name, User(e.name, e.role)))


@handles(ev.UserRemoved)
def _user_removed(state, e, envelope, seq):
    if e.name not in state.users:
        return state
    # A removed user's tokens go with it.
    credentials = state.credentials
    for credential_hash, user in state.credentials.items():
        if user == e.name:
            credentials = credentials.delete(credential_hash)
    return state.evolve(users=state.users.delete(e.name), credentials=credentials)


@handles(ev.CredentialAdded)
def _credential_added(state, e, envelope, seq):
    if e.user not in state.users:
        return state
    return state.evolve(credentials=state.credentials.set(e.credential_hash, e.user))


@handles(ev.CredentialRemoved)
def _credential_removed(state, e, envelope, seq):
    if e.credential_hash not in state.credentials:
        return state
    return state.evolve(credentials=state.credentials.delete(e.credential_hash))


@handles(ev.UserRoleSet)
def _user_role_set(state, e, envelope, seq):
    return state.evolve(users=state.users.set(e.name, User(e.name, e.role))) if e.name in state.users else state


@handles(ev.GroupAdded)
def _group_added(state, e, envelope, seq):
    return state.evolve(groups=state.groups.set(e.group, Group(e.group, e.name)),
                        group_names=state.group_names.set(e.name, e.group))


@handles(ev.GroupRemoved)
def _group_removed(state, e, envelope, seq):
    group = state.groups.get(e.group)
    if group is None:
        return state
    return state.evolve(groups=state.groups.delete(e.group), group_names=state.group_names.delete(group.name))


@handles(ev.GroupRenamed)
def _group_renamed(state, e, envelope, seq):
    group = state.groups.get(e.group)
    if group is None:
        return state
    return state.evolve(groups=state.groups.set(e.group, Group(e.group, e.name, group.tags)),
                        group_names=state.group_names.delete(group.name).set(e.name, e.group))


@handles(ev.NodesAssignedToGroup)
def _nodes_assigned(state, e, envelope, seq):
    if e.group not in state.groups:
        return state
    nodes = state.nodes
    for node_id in e.nodes:
        if node_id in nodes:
            nodes = nodes.set(node_id, nodes[node_id].evolve(group=e.group))
    return state.evolve(nodes=nodes)


# --- nodes -----------------------------------------------------------------

@handles(ev.NodeAdded)
def _node_added(state, e, envelope, seq):
    node = Node(e.node, e.name, e.address, e.group, e.memory_mib, e.disk_mib, e.cpus,
                master_capable=e.master_capable, vm_capable=e.vm_capable, role=e.role,
                watchdog_down=("recovery_disarmed", "") in state.modes)
    return state.evolve(nodes=state.nodes.set(node.id, node), node_names=state.node_names.set(node.name, node.id),
                        usage=state.usage.set(node.id, NodeUsage()))


@handles(ev.NodeRemoved)
def _node_removed(state, e, envelope, seq):
    node = state.nodes.get(e.node)
    if node is None:
        return state
    return state.evolve(nodes=state.nodes.delete(e.node), node_names=state.node_names.delete(node.name),
                        usage=state.usage.delete(e.node) if e.node in state.usage else state.usage)


@handles(ev.NodeModified)
def _node_modified(state, e, envelope, seq):
    # Every field but `node` is a node flag of the same name; None leaves it unchanged.
    node = state.nodes.get(e.node)
    if node is None:
        return state
    changes = {name: value for name, value in zip(e.FIELDS[1:], e[1:]) if value is not None}
    if e.offline is False:
        # A node back online may run instances again: an old fence proof says nothing about them.
        changes["fenced"] = False
    return state.evolve(nodes=state.nodes.set(e.node, node.evolve(**changes)))


@handles(ev.NodeFenced)
def _node_fenced(state, e, envelope, seq):
    node = state.nodes.get(e.node)
    if node is None:
        return {}
    instances = state.instances
    for instance in state.instances.values():
        if e.node in instance.pending_stop:
            pending = tuple([n for n in instance.pending_stop if n != e.node])
            instances = instances.set(instance.id, instance.evolve(pending_stop=pending))
    return {"nodes": state.nodes.set(e.node, node.evolve(fenced=True, fenced_seq=seq, fence_proof=e.proof)),
            "instances": instances}


@handles(ev.JoinTokenIssued)
def _join_token_issued(state, e, envelope, seq):
    # A hash already known keeps its entry: a spent token must never become unspent again.
    if e.token_hash in state.join_tokens:
        return {}
    entry = JoinTokenEntry(e.node, e.address, e.expires_at, False, envelope.actor)
    return {"join_tokens": state.join_tokens.set(e.token_hash, entry)}


@handles(ev.JoinTokenUsed)
def _join_token_used(state, e, envelope, seq):
    # A spent token stays, marked used, so that a second join with it is refused; expired ones stay too.
    entry = state.join_tokens.get(e.token_hash)
    if entry is None or entry.used:
        return {}
    return {"join_tokens": state.join_tokens.set(e.token_hash, entry.evolve(used=True))}


@handles(ev.NodeCertificateIssued)
def _node_certificate_issued(state, e, envelope, seq):
    # A revoked serial is revoked for good: it never becomes a node's current certificate again.
    if e.serial in state.revoked_serials or state.certificates.get(e.node) == e.serial:
        return {}
    return {"certificates": state.certificates.set(e.node, e.serial)}


@handles(ev.NodeCertificateRevoked)
def _node_certificate_revoked(state, e, envelope, seq):
    # The serial is refused from now on, even one the state never saw issued: revoking more is the safe side.
    # A node's current certificate goes only if it has this serial (a newer one stays valid).
    if e.serial in state.revoked_serials:
        return {}
    certificates = state.certificates
    for name, serial in state.certificates.items():
        if serial == e.serial:
            certificates = certificates.delete(name)
    return {"certificates": certificates, "revoked_serials": state.revoked_serials.set(e.serial, e.node)}


@handles(ev.NodeCapacityDetected)
def _node_capacity(state, e, envelope, seq):
    node = state.nodes.get(e.node)
    if node is None:
        return state
    updated = node.evolve(memory_mib=e.memory_mib, disk_mib=e.disk_mib, cpus=e.cpus)
    return state.evolve(nodes=state.nodes.set(e.node, updated))


# --- instances -------------------------------------------------------------

def _accounted(state: ClusterState, instance: Instance, sign: int):
    """The usage map with an instance's share of its nodes added (1) or removed (-1).

    The same sums as `state.add_usage`, written out for the two roles: this runs
    for every instance added or removed.
    """
    usage = state.usage
    disk = sign * used_disk_mib(instance)
    primary, secondary = instance.primary, instance.secondary
    if primary:
        memory, used, vcpus, primaries, secondaries = usage.get(primary, _NO_USAGE)
        usage = usage.set(primary, _tuple_new(NodeUsage, (
            memory + sign * instance.memory_mib, used + disk, vcpus + sign * instance.vcpus,
            primaries + sign, secondaries)))
    if secondary:
        memory, used, vcpus, primaries, secondaries = usage.get(secondary, _NO_USAGE)
        usage = usage.set(secondary, _tuple_new(NodeUsage, (memory, used + disk, vcpus, primaries,
                                                            secondaries + sign)))
    return usage


_NO_USAGE = NodeUsage()


def _replace_instance(state: ClusterState, old: Instance, new: Instance) -> dict:
    """The changes that swap an instance for its new version, keeping usage right."""
    usage = state.usage
    for node_id in {old.primary, old.secondary, new.primary, new.secondary} - {""}:
        current = usage.get(node_id, _NO_USAGE)
        for instance, sign in ((old, -1), (new, 1)):
            if node_id == instance.primary:
                current = add_usage(current, instance, "primary", sign)
            elif node_id == instance.secondary:
                current = add_usage(current, instance, "secondary", sign)
        usage = usage.set(node_id, current)
    return {"usage": usage, "instances": state.instances.set(new.id, new)}


@handles(ev.InstanceAdded)
def _instance_added(state, e, envelope, seq):
    # Built with tuple.__new__ (all twenty-four fields given), the cheapest way to make a named tuple.
    instance = _tuple_new(Instance, (
        e.instance, e.name, e.primary, e.secondary, e.disk_template,
        tuple([_tuple_new(Disk, (d["size_mib"],)) for d in e.disks]),
        tuple([_tuple_new(Nic, (n["mac"], n["mode"], n["link"])) for n in e.nics]),
        e.memory_mib, e.vcpus, e.hypervisor, e.hvparams, e.os, e.admin_state, "unknown", "", (),
        (), 0, "", "", 0, (), 0, 120))
    macs = state.macs
    for nic in instance.nics:
        macs = macs.set(nic.mac, instance.id)
    return {"usage": _accounted(state, instance, 1), "instances": state.instances.set(instance.id, instance),
            "instance_names": state.instance_names.set(instance.name, instance.id), "macs": macs}


@handles(ev.InstanceRemoved)
def _instance_removed(state, e, envelope, seq):
    instance = state.instances.get(e.instance)
    if instance is None:
        return state
    macs = state.macs
    for nic in instance.nics:
        if nic.mac in macs:
            macs = macs.delete(nic.mac)
    return {"usage": _accounted(state, instance, -1), "instances": state.instances.delete(e.instance),
            "instance_names": state.instance_names.delete(instance.name), "macs": macs}


_PRIMARY = Instance._index["primary"]
_ADMIN_STATE = Instance._index["admin_state"]
_OBSERVED_STATE = Instance._index["observed_state"]
_OBSERVED_NODE = Instance._index["observed_node"]
_PENDING_STOP = Instance._index["pending_stop"]
_MOVED_AT_SEQ = Instance._index["moved_at_seq"]
_RESTARTS = Instance._index["restarts"]
# Observed states an explicit start or reboot turns back into "stopped", so the reconciler starts the instance
# (a crashed one too: a paused watcher restarts nothing on its own, but an operator's start still works).
_AWAITING_REQUEST = ("user_down", "error", "crashed")
# What a node saw stop, by the cause it gave.
_STOPPED_STATES = {"shutdown": "stopped", "absent": "stopped", "crashed": "crashed", "guest": "user_down"}


def _admin_state(state: ClusterState, instance_id: str, value: str) -> dict:
    """The changes that set an instance's admin state (the hot path of replay: no copy when unchanged)."""
    instance = state.instances.get(instance_id)
    if instance is None or instance[_ADMIN_STATE] == value:
        return {}
    values = list(instance)
    values[_ADMIN_STATE] = value
    return {"instances": state.instances.set(instance_id, _tuple_new(Instance, values))}


def _observed(state: ClusterState, instance_id: str, value: str, node_id: str) -> dict:
    """The changes that record what a node saw of an instance (no copy when nothing changed)."""
    instance = state.instances.get(instance_id)
    if instance is None or (instance[_OBSERVED_STATE] == value and instance[_OBSERVED_NODE] == node_id):
        return {}
    values = list(instance)
    values[_OBSERVED_STATE] = value
    values[_OBSERVED_NODE] = node_id
    return {"instances": state.instances.set(instance_id, _tuple_new(Instance, values))}


def _requested_up(state: ClusterState, instance_id: str) -> dict:
    """The changes of a start or reboot request: admin state up, restarts reset, the reconciler to act again."""
    instance = state.instances.get(instance_id)
    if instance is None:
        return {}
    observed = instance[_OBSERVED_STATE]
    if instance[_ADMIN_STATE] == "up" and instance[_RESTARTS] == 0 and observed not in _AWAITING_REQUEST:
        return {}
    values = list(instance)
    values[_ADMIN_STATE] = "up"
    values[_RESTARTS] = 0
    if observed in _AWAITING_REQUEST:
        values[_OBSERVED_STATE] = "stopped"
    return {"instances": state.instances.set(instance_id, _tuple_new(Instance, values))}


def _changed_instance(state: ClusterState, instance_id: str, **changes) -> dict:
    """The changes that update fields of an instance that usage does not depend on."""
    instance = state.instances.get(instance_id)
    if instance is None:
        return {}
    return {"instances": state.instances.set(instance_id, instance.evolve(**changes))}


def _with_pending_stop(state: ClusterState, pending: tuple, node_id: str, primary: str) -> tuple:
    """`pending` with a node added that must confirm it runs no copy.

    Not added: no node, the primary itself, a fenced node (its instances are
    known dead) or a node no longer in the cluster (nobody is left to confirm).
    """
    node = state.nodes.get(node_id)
    if not node_id or node_id == primary or node is None or node.fenced or node_id in pending:
        return pending
    return tuple(sorted(pending + (node_id,)))


@handles(ev.InstanceStartupRequested)
def _instance_startup(state, e, envelope, seq):
    return _requested_up(state, e.instance)


@handles(ev.InstanceShutdownRequested)
def _instance_shutdown(state, e, envelope, seq):
    changes = _admin_state(state, e.instance, "down")
    instance = (changes.get("instances") or state.instances).get(e.instance)
    if instance is None or instance.stop_timeout_s == e.timeout_s:
        return changes
    return {"instances": (changes.get("instances") or state.instances).set(
        e.instance, instance.evolve(stop_timeout_s=e.timeout_s))}


@handles(ev.InstanceRebootRequested)
def _instance_reboot(state, e, envelope, seq):
    return _requested_up(state, e.instance)


@handles(ev.InstanceModified)
def _instance_modified(state, e, envelope, seq):
    old = state.instances.get(e.instance)
    if old is None:
        return state
    new = old.evolve(memory_mib=old.memory_mib if e.memory_mib is None else e.memory_mib,
                     vcpus=old.vcpus if e.vcpus is None else e.vcpus, hvparams={**old.hvparams, **e.hvparams})
    return _replace_instance(state, old, new)


@handles(ev.InstanceDiskAdded)
def _instance_disk_added(state, e, envelope, seq):
    old = state.instances.get(e.instance)
    if old is None:
        return state
    return _replace_instance(state, old, old.evolve(disks=old.disks + (Disk(e.size_mib),)))


@handles(ev.InstanceDiskGrown)
def _instance_disk_grown(state, e, envelope, seq):
    old = state.instances.get(e.instance)
    if old is None or not 0 <= e.disk_index < len(old.disks):
        return state
    disks = old.disks[:e.disk_index] + (Disk(e.size_mib),) + old.disks[e.disk_index + 1:]
    return _replace_instance(state, old, old.evolve(disks=disks))


@handles(ev.InstanceNicAdded)
def _instance_nic_added(state, e, envelope, seq):
    old = state.instances.get(e.instance)
    if old is None:
        return {}
    return {"instances": state.instances.set(e.instance, old.evolve(nics=old.nics + (Nic(e.mac, e.mode, e.link),))),
            "macs": state.macs.set(e.mac, e.instance)}


@handles(ev.InstanceNicRemoved)
def _instance_nic_removed(state, e, envelope, seq):
    old = state.instances.get(e.instance)
    if old is None or not 0 <= e.nic_index < len(old.nics):
        return {}
    mac = old.nics[e.nic_index].mac
    nics = old.nics[:e.nic_index] + old.nics[e.nic_index + 1:]
    return {"instances": state.instances.set(e.instance, old.evolve(nics=nics)),
            "macs": state.macs.delete(mac) if mac in state.macs else state.macs}


@handles(ev.InstanceNicModified)
def _instance_nic_modified(state, e, envelope, seq):
    old = state.instances.get(e.instance)
    if old is None or not 0 <= e.nic_index < len(old.nics):
        return {}
    nic = Nic(old.nics[e.nic_index].mac, e.mode, e.link)
    nics = old.nics[:e.nic_index] + (nic,) + old.nics[e.nic_index + 1:]
    return {"instances": state.instances.set(e.instance, old.evolve(nics=nics))}


@handles(ev.InstanceRenamed)
def _instance_renamed(state, e, envelope, seq):
    old = state.instances.get(e.instance)
    if old is None:
        return {}
    return {"instances": state.instances.set(e.instance, old.evolve(name=e.name)),
            "instance_names": state.instance_names.delete(old.name).set(e.name, e.instance)}


@handles(ev.InstanceMigrated)
def _instance_migrated(state, e, envelope, seq):
    old = state.instances.get(e.instance)
    if old is None:
        return state
    return _replace_instance(state, old, old.evolve(primary=e.primary, secondary=e.secondary, moved_at_seq=seq,
                                                    migration_target="", migration_status="", restarts=0))


@handles(ev.InstanceFailedOver)
def _instance_failed_over(state, e, envelope, seq):
    old = state.instances.get(e.instance)
    if old is None:
        return state
    pending = _with_pending_stop(state, old.pending_stop, old.primary, e.primary)
    return _replace_instance(state, old, old.evolve(primary=e.primary, secondary=e.secondary, pending_stop=pending,
                                                    moved_at_seq=seq, migration_target="", migration_status="",
                                                    restarts=0))


@handles(ev.InstanceRecovered)
def _instance_recovered(state, e, envelope, seq):
    old = state.instances.get(e.instance)
    if old is None or old.primary != e.old_primary:
        return state
    pending = _with_pending_stop(state, old.pending_stop, old.primary, e.primary)
    return _replace_instance(state, old, old.evolve(primary=e.primary, pending_stop=pending, moved_at_seq=seq,
                                                    migration_target="", migration_status="", restarts=0))


@handles(ev.InstanceHaPrioritySet)
def _instance_ha_priority_set(state, e, envelope, seq):
    return _changed_instance(state, e.instance, ha_priority=e.ha_priority)


@handles(ev.InstanceMigrationStarted)
def _instance_migration_started(state, e, envelope, seq):
    return _changed_instance(state, e.instance, migration_target=e.target, migration_status="running")


@handles(ev.InstanceMigrationFinished)
def _instance_migration_finished(state, e, envelope, seq):
    instance = state.instances.get(e.instance)
    if instance is None or instance.migration_target != e.target:
        return {}
    return _changed_instance(state, e.instance, migration_status="done" if e.ok else "failed")


@handles(ev.InstanceMigrationAborted)
def _instance_migration_aborted(state, e, envelope, seq):
    instance = state.instances.get(e.instance)
    if instance is None or not instance.migration_target:
        return {}
    pending = _with_pending_stop(state, instance.pending_stop, instance.migration_target, instance.primary)
    return _changed_instance(state, e.instance, pending_stop=pending, moved_at_seq=seq, migration_target="",
                             migration_status="")


@handles(ev.InstanceRestartDecided)
def _instance_restart_decided(state, e, envelope, seq):
    return _changed_instance(state, e.instance, restarts=e.attempt)


@handles(ev.InstanceRestartsExhausted)
def _instance_restarts_exhausted(state, e, envelope, seq):
    return _changed_instance(state, e.instance, observed_state="error")


@handles(ev.DiskStateObserved)
def _disk_state_observed(state, e, envelope, seq):
    instance = state.instances.get(e.instance)
    if instance is None:
        return {}
    entries = [entry for entry in instance.disk_states if (entry[0], entry[1]) != (e.disk, e.node)]
    entries.append((e.disk, e.node, e.state, e.sync_percent))
    entries.sort(key=lambda entry: (entry[0], entry[1]))
    return _changed_instance(state, e.instance, disk_states=tuple(entries))


@handles(ev.InstanceSecondaryReplaced)
def _instance_secondary_replaced(state, e, envelope, seq):
    # The job checked all this before proposing; a record that no longer fits (the instance moved
    # meanwhile, the node is gone) changes nothing rather than break the usage or the placement.
    old = state.instances.get(e.instance)
    if (old is None or old.secondary != e.old_secondary or e.new_secondary in ("", old.primary)
            or e.new_secondary not in state.nodes):
        return {}
    # The old secondary's copies are no copies any more; the new one's count only once UPTODATE.
    entries = [entry for entry in old.disk_states if entry[1] not in (e.old_secondary, e.new_secondary)]
    entries += [(index, e.new_secondary, "SYNCING", 0.0) for index in range(len(old.disks))]
    entries.sort(key=lambda entry: (entry[0], entry[1]))
    return _replace_instance(state, old, old.evolve(secondary=e.new_secondary, disk_states=tuple(entries)))


@handles(ev.InstanceObservedRunning)
def _instance_observed_running(state, e, envelope, seq):
    return _observed(state, e.instance, "running", e.node)


@handles(ev.InstanceObservedStopped)
def _instance_observed_stopped(state, e, envelope, seq):
    # (a) A node the instance moved away from confirms it stopped there, if it saw the move.
    # (b) What was observed is taken from the primary, or from the node it was last seen on.
    instance = state.instances.get(e.instance)
    if instance is None:
        return {}
    node = e.node
    values = None
    pending = instance[_PENDING_STOP]
    if pending and node in pending and e.seen_at_seq >= instance[_MOVED_AT_SEQ]:
        values = list(instance)
        values[_PENDING_STOP] = tuple([n for n in pending if n != node])
    observed_node = instance[_OBSERVED_NODE]
    if node == instance[_PRIMARY] or observed_node == "" or observed_node == node:
        # A cause this build does not know still means the instance is not running there.
        observed = _STOPPED_STATES.get(e.cause, "stopped")
        if instance[_OBSERVED_STATE] != observed or observed_node != node:
            values = values or list(instance)
            values[_OBSERVED_STATE] = observed
            values[_OBSERVED_NODE] = node
    if values is None:
        return {}
    return {"instances": state.instances.set(e.instance, _tuple_new(Instance, values))}


# --- jobs ------------------------------------------------------------------

_NEW_JOB = tuple(Job._field_defaults[name] for name in Job._fields[7:])


@handles(ev.JobSubmitted)
def _job_submitted(state, e, envelope, seq):
    # A request id already naming a job in the state is a resubmission: the client gets that job again.
    request_id = e.request_id
    requests = state.job_requests
    job_id = state.next_job_id
    if request_id:
        known = requests.get(request_id)
        if known is not None and known in state.jobs:
            return {}
        requests = requests.set(request_id, job_id)
    # Every field given, through tuple.__new__: a named tuple's own __new__ with defaults costs several times more.
    job = _tuple_new(Job, (job_id, e.operations, request_id, envelope.actor, envelope.reason,
                           envelope.proposed_at, seq) + _NEW_JOB)
    return {"jobs": state.jobs.set(job_id, job), "next_job_id": job_id + 1,
            "active_jobs": state.active_jobs.set(job_id, True), "job_requests": requests}


def _set_job(state: ClusterState, job_id: int, **changes) -> dict:
    """The changes that update an unfinished job (a dict, so the state is copied once)."""
    job = state.jobs.get(job_id)
    if job is None or job.status in JOB_FINISHED:
        return {}
    return {"jobs": state.jobs.set(job_id, job.evolve(**changes))}


def _finish_job(state: ClusterState, job_id: int, envelope: Envelope, **changes) -> ClusterState:
    """End a job: it leaves the active set and, once old enough, the state."""
    job = state.jobs.get(job_id)
    if job_id not in state.active_jobs or job is None:
        return {}
    jobs = state.jobs.set(job_id, job.evolve(finished_at=envelope.proposed_at, **changes))
    window, evicted = state.finished_jobs.push(job_id)
    requests = state.job_requests
    if evicted is not None and evicted in jobs:
        request_id = jobs[evicted].request_id
        jobs = jobs.delete(evicted)
        if request_id and requests.get(request_id) == evicted:
            requests = requests.delete(request_id)
    return {"active_jobs": state.active_jobs.delete(job_id), "finished_jobs": window, "jobs": jobs,
            "job_requests": requests}


@handles(ev.JobAdmitted)
def _job_admitted(state, e, envelope, seq):
    claims = e.claims
    if len(claims) == 1 and type(claims[0]) is dict and claims[0].get(ev.V1_HOLDINGS) is True:
        # An upcast v1 record: its reservations and MACs go on the job, as the v1 handler put them.
        held = claims[0]
        return _set_job(state, e.job, status="running", reservations=held.get("reservations", ()),
                        macs=held.get("macs", ()))
    return _set_job(state, e.job, status="running", claims=claims)


@handles(ev.JobOperationPlanned)
def _job_operation_planned(state, e, envelope, seq):
    # The first plan of an operation wins: a late duplicate (another leader's, a retry's) changes nothing.
    job = state.jobs.get(e.job)
    index = e.operation_index
    # Only a running job takes a plan: the leader proposes a job's first plan right behind its admission, and a
    # plan whose admission did not commit is ignored (the next leader admits and plans the job afresh).
    if job is None or job.status != "running" or index <= job.planned:
        return {}
    results = job.results + (job.op_result,) if index > 0 else job.results
    return _set_job(state, e.job, plan=e.steps, operation_index=index, reservations=e.reservations, macs=e.macs,
                    op_result=e.result, step_done=-1, step_done_at=envelope.proposed_at, results=results,
                    planned=index)


@handles(ev.JobCancelRequested)
def _job_cancel_requested(state, e, envelope, seq):
    return _set_job(state, e.job, cancel_requested=True)


@handles(ev.JobProgressed)
def _job_progressed(state, e, envelope, seq):
    job = state.jobs.get(e.job)
    if job is None:
        return state
    return _set_job(state, e.job, progress=job.progress + ((e.operation_index, e.step),),
                    log=job.log + ((envelope.proposed_at, e.message),), step_done=e.step,
                    step_done_at=envelope.proposed_at)


@handles(ev.JobSucceeded)
def _job_succeeded(state, e, envelope, seq):
    return _finish_job(state, e.job, envelope, status="success", result=e.result)


@handles(ev.JobFailed)
def _job_failed(state, e, envelope, seq):
    return _finish_job(state, e.job, envelope, status="error", error_code=e.code, error_message=e.message)


@handles(ev.JobCanceled)
def _job_canceled(state, e, envelope, seq):
    return _finish_job(state, e.job, envelope, status="canceled")


_missing = set(ev.REGISTRY.values()) - set(HANDLERS)
if _missing:
    raise RuntimeError(f"events without a replay handler: {sorted(c.__name__ for c in _missing)}")
