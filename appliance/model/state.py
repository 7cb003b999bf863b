"""The cluster state: what replaying the log derives, held in persistent maps.

Every entity is an immutable named tuple and every collection an `immutables.Map`, so
taking a snapshot is O(1) (keep a reference) and readers never block the apply
path. The state changes only in `appliance.model.replay`. Per-node usage is
kept incrementally so checks need not scan every instance.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
from typing import Any, NamedTuple

import cbor2
import immutables

from appliance.model.codec import _CONTAINERS, freeze

# Replay ignores an event id seen within the recent events: ids are kept in two
# generations of DEDUP_GENERATION events each, so an id is remembered for at
# least DEDUP_GENERATION and at most 2 * DEDUP_GENERATION events. It is part of
# the format: every node must use the same number to decide identically.
DEDUP_GENERATION = 50_000
# Finished jobs beyond this many (oldest first) leave the state; the log keeps them.
FINISHED_JOBS_KEPT = 5_000
CHECKPOINT_FORMAT = 2

ROLES = ("admin", "operator", "read-only")
NODE_ROLES = ("voter", "non-voter")
ADMIN_STATES = ("up", "down", "offline")
JOB_ACTIVE = ("queued", "waiting", "running")
JOB_FINISHED = ("success", "error", "canceled")
MODES = ("queue_drained", "watcher_paused", "recovery_disarmed", "maintenance")
EMPTY = immutables.Map()


def _evolve(self, **changes: Any):
    """A copy with some fields changed (one list copy, one tuple build)."""
    values = list(self)
    index = self._index
    for name, value in changes.items():
        values[index[name]] = value
    return _tuple_new(type(self), values)


_tuple_new = tuple.__new__


def entity(cls):
    """Entities are named tuples with an `evolve(**changes)` method.

    Replay copies an entity and the state for nearly every event; copying a
    tuple with a few slots changed is several times cheaper than
    dataclasses.replace, which is why these are not dataclasses.
    """
    cls._index = {name: i for i, name in enumerate(cls._fields)}
    cls.evolve = _evolve
    return cls


@entity
class ClusterParams(NamedTuple):
    name: str
    enabled_hypervisors: tuple
    enabled_disk_templates: tuple
    default_hypervisor: str
    ipolicy: dict
    mac_prefix: str
    feature_level: int
    fencing_interval_s: int
    recovery_interval_s: int
    default_group: str
    tags: tuple = ()


@entity
class Group(NamedTuple):
    id: str
    name: str
    tags: tuple = ()


@entity
class Node(NamedTuple):
    id: str
    name: str
    address: str
    group: str
    memory_mib: int
    disk_mib: int
    cpus: int
    offline: bool = False
    drained: bool = False
    master_capable: bool = True
    vm_capable: bool = True
    role: str = "voter"
    tags: tuple = ()
    fenced: bool = False          # a fence proof was recorded: its instances are known dead
    fenced_seq: int = 0           # the seq of the last fence proof (0: never fenced)
    fence_proof: str = ""         # how it was fenced: "operator" (marked offline) or "lease" (its lease lapsed)
    watchdog_down: bool = False   # its watchdog may be stood down (recovery disarmed, or it was in maintenance)
                                  # since it last reported it armed: it is never fenced by its lease meanwhile


@entity
class NodeUsage(NamedTuple):
    """What the node's instances take: memory and vcpus of primaries, disk of primaries and secondaries."""
    memory_mib: int = 0
    disk_mib: int = 0
    vcpus: int = 0
    primaries: int = 0
    secondaries: int = 0


@entity
class Disk(NamedTuple):
    size_mib: int


@entity
class Nic(NamedTuple):
    mac: str
    mode: str
    link: str


@entity
class Instance(NamedTuple):
    id: str
    name: str
    primary: str
    secondary: str
    disk_template: str
    disks: tuple
    nics: tuple
    memory_mib: int
    vcpus: int
    hypervisor: str
    hvparams: dict
    os: str
    admin_state: str
    observed_state: str = "unknown"
    observed_node: str = ""
    tags: tuple = ()
    # Nodes that must confirm the instance is not running there before its primary may start it.
    pending_stop: tuple = ()
    moved_at_seq: int = 0         # the seq of the last event that changed where it should run
    migration_target: str = ""
    migration_status: str = ""    # "", "running", "done" or "failed"
    restarts: int = 0             # consecutive crash restarts decided
    disk_states: tuple = ()       # (disk_index, node, state, sync_percent), sorted by disk and node
    ha_priority: int = 0          # recovery order after its node is fenced: higher first
    stop_timeout_s: int = 120     # how long its last shutdown request lets the guest power off before a kill

    @property
    def disk_mib(self) -> int:
        return sum([disk[0] for disk in self.disks])


@entity
class User(NamedTuple):
    name: str
    role: str


@entity
class JoinTokenEntry(NamedTuple):
    """An issued join token, kept under its secret's hash: whom it admits, until when, and whether it was spent."""
    node: str
    address: str
    expires_at: int               # epoch seconds; the member checking the token compares it with its clock
    used: bool = False
    issued_by: str = ""           # the user who issued it: the node is added in their name when it joins


@entity
class Job(NamedTuple):
    id: int
    operations: tuple
    request_id: str
    actor: str
    reason: str
    submitted_at: float
    submit_seq: int
    status: str = "queued"
    reservations: tuple = ()
    macs: tuple = ()
    progress: tuple = ()
    log: tuple = ()
    result: Any = None
    error_code: str = ""
    error_message: str = ""
    finished_at: float | None = None
    claims: tuple = ()
    operation_index: int = 0      # the operation whose plan is current
    plan: tuple = ()              # that operation's steps (plain data, opaque to the model)
    step_done: int = -1           # the last step of that plan known done; -1: none yet
    step_done_at: float = 0.0
    op_result: Any = None         # that operation's result
    cancel_requested: bool = False
    results: tuple = ()           # the results of the operations before the current one
    planned: int = -1             # the last operation index with a plan (-1: none); a plan up to it is a duplicate


@entity
class Window(NamedTuple):
    """A persistent ring of the last `size` keys; used for finished job ids (one Map.set per push)."""
    size: int
    count: int = 0
    ring: immutables.Map = EMPTY      # slot (count % size) -> key

    def __contains__(self, key: Any) -> bool:
        return key in self.ring.values()

    def push(self, key: Any) -> tuple[Window, Any]:
        """Add a key; return the new window and the key that fell out (or None)."""
        size, count, ring = self
        slot = count % size
        return _tuple_new(Window, (size, count + 1, ring.set(slot, key))), ring.get(slot)

    def ordered(self) -> list:
        """Keys oldest first."""
        size, count, ring = self
        return [ring[n % size] for n in range(max(0, count - size), count)]

    @classmethod
    def rebuilt(cls, size: int, count: int, keys: list) -> Window:
        start = count - len(keys)
        return cls(size, count, immutables.Map({(start + i) % size: key for i, key in enumerate(keys)}))


NO_IDS: dict = {}     # the empty generation every fresh window starts from; never written to
_NEVER = float("inf")


class RecentIds(NamedTuple):
    """The dedup window: the ids of recent events in two generations.

    The current generation is a plain dict (id -> position in this history)
    shared by every snapshot of one line of history: a push at the head adds
    one key in place, and a snapshot behind the head sees only the keys below
    its own `count`. A push from a snapshot that is not at the head (a fork:
    someone already went on from it) copies the part it sees first, so no
    snapshot ever sees another's future. A full generation is never written
    to again. Taking a snapshot stays O(1); only a fork pays a copy of at most
    one generation. Reads that copy (`plain`) take the dict in one C call, so
    a reader on another thread never sees it change under it.
    """
    generation: int
    start: int = 0            # the position of the current generation's first id
    count: int = 0            # ids pushed in this history up to this snapshot
    current: dict = NO_IDS
    previous: dict = NO_IDS

    def __contains__(self, key: Any) -> bool:
        return key in self.previous or self.current.get(key, _NEVER) < self.count

    def __eq__(self, other: object) -> bool:
        return type(other) is RecentIds and self.generation == other.generation and self.plain() == other.plain()

    __hash__ = None  # type: ignore[assignment]

    def push(self, key: Any) -> RecentIds:
        generation, start, count, current, previous = self
        if count - start >= generation:
            return _tuple_new(RecentIds, (generation, count, count + 1, {key: count}, current))
        if len(current) != count - start or current is NO_IDS:
            current = {k: n for k, n in current.copy().items() if n < count}
        current[key] = count
        return _tuple_new(RecentIds, (generation, start, count + 1, current, previous))

    def _current_ids(self) -> list:
        count = self.count
        return [key for key, n in self.current.copy().items() if n < count]

    def plain(self) -> list:
        return [sorted(self.previous), sorted(self._current_ids())]

    @classmethod
    def rebuilt(cls, generation: int, previous: list, current: list) -> RecentIds:
        return cls(generation, 0, len(current), {key: n for n, key in enumerate(current)}, dict.fromkeys(previous, True))


@entity
class ClusterState(NamedTuple):
    """Everything the log says, at `seq`.

    A named tuple rather than a dataclass: replay copies it for every event,
    and copying a tuple with a few slots changed is several times cheaper.
    """
    seq: int = 0
    cluster: ClusterParams | None = None
    modes: immutables.Map = EMPTY          # (mode, target) -> until (None: until cleared)
    groups: immutables.Map = EMPTY
    nodes: immutables.Map = EMPTY
    instances: immutables.Map = EMPTY
    users: immutables.Map = EMPTY
    jobs: immutables.Map = EMPTY
    usage: immutables.Map = EMPTY          # node id -> NodeUsage
    node_names: immutables.Map = EMPTY
    instance_names: immutables.Map = EMPTY
    group_names: immutables.Map = EMPTY
    macs: immutables.Map = EMPTY           # mac -> instance id
    active_jobs: immutables.Map = EMPTY    # job id -> True, for reservations
    next_job_id: int = 1
    recent_events: RecentIds = RecentIds(DEDUP_GENERATION)
    finished_jobs: Window = Window(FINISHED_JOBS_KEPT)
    leader_node: str = ""
    leader_term: int = 0
    job_requests: immutables.Map = EMPTY   # request id -> job id, for the jobs in `jobs` that gave one
    credentials: immutables.Map = EMPTY    # SHA-256 hex of a bearer token -> user name
    join_tokens: immutables.Map = EMPTY    # SHA-256 hex of a join token's secret -> JoinTokenEntry
    certificates: immutables.Map = EMPTY   # node name -> serial (hex) of its current certificate
    revoked_serials: immutables.Map = EMPTY  # serial (hex) of a revoked certificate -> the node name it had

    # --- reads used by ops and the CLI ---------------------------------

    def node_by_name(self, name: str) -> Node | None:
        node_id = self.node_names.get(name)
        return self.nodes.get(node_id) if node_id is not None else self.nodes.get(name)

    def instance_by_name(self, name: str) -> Instance | None:
        instance_id = self.instance_names.get(name)
        return self.instances.get(instance_id) if instance_id is not None else self.instances.get(name)

    def group_by_name(self, name: str) -> Group | None:
        group_id = self.group_names.get(name)
        return self.groups.get(group_id) if group_id is not None else self.groups.get(name)

    def mode_active(self, mode: str, now: float, target: str = "") -> bool:
        """True when the mode is on for the target at time `now` (expiry is read, never applied)."""
        key = (mode, target)
        if key not in self.modes:
            return False
        until = self.modes[key]
        return until is None or now < until

    def reserved(self, node_id: str) -> tuple[int, int]:
        """Memory and disk (MiB) that admitted-but-unfinished jobs hold on a node."""
        memory = disk = 0
        for job_id in self.active_jobs:
            for reservation in self.jobs[job_id].reservations:
                if reservation["node"] == node_id:
                    memory += reservation["memory_mib"]
                    disk += reservation["disk_mib"]
        return memory, disk

    def reserved_macs(self) -> set[str]:
        return {mac for job_id in self.active_jobs for mac in self.jobs[job_id].macs}

    def free_memory_mib(self, node_id: str) -> int:
        node = self.nodes[node_id]
        return node.memory_mib - self.usage.get(node_id, NodeUsage()).memory_mib - self.reserved(node_id)[0]

    def free_disk_mib(self, node_id: str) -> int:
        node = self.nodes[node_id]
        return node.disk_mib - self.usage.get(node_id, NodeUsage()).disk_mib - self.reserved(node_id)[1]

    def instances_on(self, node_id: str) -> list[Instance]:
        return [i for i in self.instances.values() if node_id in (i.primary, i.secondary)]

    def digest(self) -> str:
        """sha256 of the canonical encoding: two nodes at the same seq have the same digest."""
        return hashlib.sha256(encode_checkpoint(self)).hexdigest()


# --- canonical encoding (checkpoints and digest) ----------------------------

def _plain_entity(value: Any) -> list:
    return [_plain(v) for v in value]


def _plain(value: Any) -> Any:
    if isinstance(value, (Disk, Nic)):
        return _plain_entity(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _plain_map(mapping: immutables.Map) -> list:
    return [[key, _plain_entity(value)] for key, value in sorted(mapping.items())]


def to_plain(state: ClusterState) -> dict[str, Any]:
    """The state as plain data with every collection in sorted order."""
    return {
        "format": CHECKPOINT_FORMAT,
        "seq": state.seq,
        "cluster": _plain_entity(state.cluster) if state.cluster else None,
        "modes": sorted([mode, target, until] for (mode, target), until in state.modes.items()),
        "groups": _plain_map(state.groups),
        "nodes": _plain_map(state.nodes),
        "instances": _plain_map(state.instances),
        "users": _plain_map(state.users),
        "jobs": _plain_map(state.jobs),
        "next_job_id": state.next_job_id,
        "recent_events": state.recent_events.plain(),
        "finished_jobs": [state.finished_jobs.count, state.finished_jobs.ordered()],
        "leader": [state.leader_node, state.leader_term],
        "credentials": sorted([h, user] for h, user in state.credentials.items()),
        "join_tokens": _plain_map(state.join_tokens),
        "certificates": sorted([name, serial] for name, serial in state.certificates.items()),
        "revoked_serials": sorted([serial, name] for serial, name in state.revoked_serials.items()),
    }


def encode_checkpoint(state: ClusterState) -> bytes:
    """Canonical CBOR of the state."""
    return cbor2.dumps(to_plain(state), canonical=True)


# Lists become tuples, recursively, exactly as when an event is decoded.
_tuple = freeze


def _row(cls, values: list):
    if len(values) != len(cls._fields):
        raise ValueError(f"checkpoint row of {cls.__name__} has {len(values)} fields, expected {len(cls._fields)}; "
                         "rebuild the checkpoints with 'cairn events checkpoint'")
    return _tuple_new(cls, [_tuple(v) if type(v) in _CONTAINERS else v for v in values])


def _instance_from(values: list) -> Instance:
    instance = _row(Instance, values)
    return instance.evolve(disks=tuple([_tuple_new(Disk, d) for d in instance.disks]),
                           nics=tuple([_tuple_new(Nic, n) for n in instance.nics]))


@contextlib.contextmanager
def gc_paused():
    """Pause the cyclic garbage collector while building or folding a large state.

    The state is acyclic, so nothing is left for the collector to find, yet
    each full collection walks every object already alive: building a state
    of a few hundred thousand objects would otherwise pay for many such walks.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def decode_checkpoint(data: bytes) -> ClusterState:
    """The state from its canonical encoding; the indexes are rebuilt, not stored."""
    with gc_paused():
        return _decode_checkpoint(data)


def _decode_checkpoint(data: bytes) -> ClusterState:
    plain = cbor2.loads(data)
    if plain.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint format {plain.get('format')} is not {CHECKPOINT_FORMAT}; rebuild the checkpoints")

    def build(cls, rows):
        return immutables.Map({key: _row(cls, values) for key, values in rows})

    instances = immutables.Map({key: _instance_from(values) for key, values in plain["instances"]})
    jobs = build(Job, plain["jobs"])
    state = ClusterState(
        seq=plain["seq"],
        cluster=_row(ClusterParams, plain["cluster"]) if plain["cluster"] else None,
        modes=immutables.Map({(m, t): u for m, t, u in plain["modes"]}),
        groups=build(Group, plain["groups"]),
        nodes=build(Node, plain["nodes"]),
        instances=instances,
        users=build(User, plain["users"]),
        jobs=jobs,
        next_job_id=plain["next_job_id"],
        recent_events=RecentIds.rebuilt(DEDUP_GENERATION, *plain["recent_events"]),
        finished_jobs=Window.rebuilt(FINISHED_JOBS_KEPT, *plain["finished_jobs"]),
        leader_node=plain["leader"][0],
        leader_term=plain["leader"][1],
        credentials=immutables.Map({h: user for h, user in plain.get("credentials", ())}),
        join_tokens=build(JoinTokenEntry, plain.get("join_tokens", ())),
        certificates=immutables.Map({name: serial for name, serial in plain.get("certificates", ())}),
        revoked_serials=immutables.Map({serial: name for serial, name in plain.get("revoked_serials", ())}),
    )
    return with_indexes(state)


def usage_of(instances: immutables.Map) -> immutables.Map:
    """Per-node usage computed from scratch (checkpoint load; tests compare it to the incremental one)."""
    usage: dict[str, NodeUsage] = {}
    for instance in instances.values():
        for node_id, role in ((instance.primary, "primary"), (instance.secondary, "secondary")):
            if node_id:
                usage[node_id] = add_usage(usage.get(node_id, NodeUsage()), instance, role, 1)
    return immutables.Map(usage)


def add_usage(usage: NodeUsage, instance: Instance, role: str, sign: int) -> NodeUsage:
    """Usage with one instance added (sign 1) or taken away (sign -1) in a role."""
    disk = used_disk_mib(instance)
    memory, used_disk, vcpus, primaries, secondaries = usage
    if role == "primary":
        return _tuple_new(NodeUsage, (memory + sign * instance.memory_mib, used_disk + sign * disk,
                                      vcpus + sign * instance.vcpus, primaries + sign, secondaries))
    return _tuple_new(NodeUsage, (memory, used_disk + sign * disk, vcpus, primaries, secondaries + sign))


def used_disk_mib(instance: Instance) -> int:
    """The disk an instance takes on each of its nodes (diskless takes none)."""
    if instance.disk_template == "diskless":
        return 0
    return sum([disk[0] for disk in instance.disks])


def with_indexes(state: ClusterState) -> ClusterState:
    """Rebuild every derived index (names, usage, MACs, active jobs, request ids) from the entities."""
    return state.evolve(
        usage=usage_of(state.instances),
        node_names=immutables.Map({n.name: n.id for n in state.nodes.values()}),
        instance_names=immutables.Map({i.name: i.id for i in state.instances.values()}),
        group_names=immutables.Map({g.name: g.id for g in state.groups.values()}),
        macs=immutables.Map({nic.mac: i.id for i in state.instances.values() for nic in i.nics}),
        active_jobs=immutables.Map({j.id: True for j in state.jobs.values() if j.status in JOB_ACTIVE}),
        job_requests=immutables.Map({j.request_id: j.id for j in state.jobs.values() if j.request_id}),
    )
