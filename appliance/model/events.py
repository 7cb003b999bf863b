"""The one registry of events: numbered, versioned, past-tense facts.

Type numbers are forever: never reuse one, never renumber. A new version of an
event adds an `upcast_vN_to_vM` static method so that old records are upcast on
read, never rewritten. `SINCE_LEVEL` is the cluster feature level from which
the event may be proposed. Payload values are plain data: int, str, bool,
float, None, bytes, tuples of those, dicts of those and tuples of such dicts.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any, NamedTuple

REGISTRY: dict[int, type] = {}
NAMES: dict[str, type] = {}

# Ranges by family, so a number tells what it is about.
CLUSTER, TAGS, USERS, GROUPS, NODES, INSTANCES, JOBS = 0x0100, 0x0110, 0x0200, 0x0300, 0x0400, 0x0500, 0x0600

# Annotations whose values may be lists or dicts after CBOR decoding (and so are frozen on read).
_CONTAINER_KINDS = ("tuple", "dict", "Any", "tuple | None", "dict | None")


def event(type: int, version: int = 1, since_level: int = 1):
    """Register an event class under a fixed type number and its current version."""

    def register(cls: type) -> type:
        if type in REGISTRY:
            raise ValueError(f"event type {type:#06x} is already {REGISTRY[type].__name__}")
        cls.TYPE = type
        cls.VERSION = version
        cls.SINCE_LEVEL = since_level
        cls.FIELDS = tuple(cls._fields)
        cls.FIELD_SET = frozenset(cls.FIELDS)
        # Reads a payload's values in field order in one C call (a 1-tuple for one-field events).
        cls.GETTER = itemgetter(*cls.FIELDS) if len(cls.FIELDS) > 1 else _single_getter(cls.FIELDS[0])
        # Fields that may hold lists after CBOR decoding; only these are frozen into tuples on read.
        cls.CONTAINER_INDEXES = tuple(i for i, name in enumerate(cls.FIELDS)
                                      if cls.ANNOTATIONS[name] in _CONTAINER_KINDS)
        for old in range(1, version):
            if not hasattr(cls, f"upcast_v{old}_to_v{old + 1}"):
                raise ValueError(f"{cls.__name__} v{version} lacks upcast_v{old}_to_v{old + 1}")
        REGISTRY[type] = cls
        NAMES[cls.__name__] = cls
        return cls

    return register


def _single_getter(name: str):
    def get(payload: dict) -> tuple:
        return (payload[name],)
    return get


def upcast(cls: type, version: int, payload: dict[str, Any]) -> dict[str, Any]:
    """Bring a payload written at `version` up to the class's current version."""
    for old in range(version, cls.VERSION):
        payload = getattr(cls, f"upcast_v{old}_to_v{old + 1}")(payload)
    return payload


def payload_of(event_value: Any) -> dict[str, Any]:
    """The payload dict of an event (its fields by name)."""
    return dict(zip(event_value.FIELDS, event_value))


def _same_event(self, other: object) -> bool:
    return type(self) is type(other) and tuple.__eq__(self, other)


def _other_event(self, other: object) -> bool:
    return not _same_event(self, other)


def _event_hash(self) -> int:
    return hash((type(self).__name__, tuple(self)))


def frozen(cls):
    """Events are immutable named tuples built from the class's annotations.

    Not dataclasses: replay decodes one event per record, and building a tuple
    is several times cheaper than a frozen dataclass's __init__. Equality also
    compares the class, so two events with equal fields but different types
    never compare equal. A field may have a default (only trailing fields, as
    in any named tuple) so that code written before a new version keeps
    building the event; the encoded payload always carries every field.
    """
    annotations = dict(cls.__dict__.get("__annotations__", {}))
    built = NamedTuple(cls.__name__, [(name, Any) for name in annotations])
    defaults = {name: cls.__dict__[name] for name in annotations if name in cls.__dict__}
    if defaults:
        if list(defaults) != list(annotations)[len(annotations) - len(defaults):]:
            raise ValueError(f"{cls.__name__}: only trailing fields may have defaults, got {sorted(defaults)}")
        built.__new__.__defaults__ = tuple(defaults.values())
        built._field_defaults = defaults
    for name, value in cls.__dict__.items():
        if name not in ("__annotations__", "__dict__", "__weakref__") and name not in annotations:
            setattr(built, name, value)
    built.__module__ = cls.__module__
    built.__qualname__ = cls.__qualname__
    built.ANNOTATIONS = {name: str(kind) for name, kind in annotations.items()}
    built.__eq__, built.__ne__, built.__hash__ = _same_event, _other_event, _event_hash
    return built


# --- cluster ---------------------------------------------------------------

@event(CLUSTER + 1)
@frozen
class ClusterInitialized:
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


@event(CLUSTER + 2, version=2)
@frozen
class ClusterModified:
    """Cluster parameters changed; None means unchanged (v1 held an open `changes` dict)."""
    enabled_hypervisors: tuple | None
    enabled_disk_templates: tuple | None
    default_hypervisor: str | None
    ipolicy: dict | None
    mac_prefix: str | None
    feature_level: int | None
    fencing_interval_s: int | None
    recovery_interval_s: int | None

    @staticmethod
    def upcast_v1_to_v2(payload: dict) -> dict:
        rest, changes = _split_v1(payload, "ClusterModified", "changes")
        return {**rest, **_typed_changes("ClusterModified", ClusterModified.FIELDS, changes)}


@event(CLUSTER + 3)
@frozen
class ModeSet:
    """An operational mode switched on: `target` is '' for the cluster or a node id."""
    mode: str
    target: str
    until: float | None


@event(CLUSTER + 4)
@frozen
class ModeCleared:
    mode: str
    target: str


@event(CLUSTER + 5)
@frozen
class LeaderElected:
    """A node became the leader for `term` (terms only go up: an older term's claim changes nothing)."""
    node: str
    term: int


@event(TAGS + 0)
@frozen
class TagsAdded:
    kind: str
    target: str
    tags: tuple


@event(TAGS + 1)
@frozen
class TagsRemoved:
    kind: str
    target: str
    tags: tuple


# --- users -----------------------------------------------------------------

@event(USERS + 1)
@frozen
class UserAdded:
    name: str
    role: str


@event(USERS + 2)
@frozen
class UserRemoved:
    name: str


@event(USERS + 3)
@frozen
class UserRoleSet:
    name: str
    role: str


@event(USERS + 4)
@frozen
class CredentialAdded:
    """A bearer token for `user`: only its SHA-256 (64 hex digits) is ever in the log."""
    user: str
    credential_hash: str
    label: str


@event(USERS + 5)
@frozen
class CredentialRemoved:
    credential_hash: str


# --- groups ----------------------------------------------------------------

@event(GROUPS + 1)
@frozen
class GroupAdded:
    group: str
    name: str


@event(GROUPS + 2)
@frozen
class GroupRemoved:
    group: str


@event(GROUPS + 3)
@frozen
class GroupRenamed:
    group: str
    name: str


@event(GROUPS + 4)
@frozen
class NodesAssignedToGroup:
    group: str
    nodes: tuple


# --- nodes -----------------------------------------------------------------

@event(NODES + 1)
@frozen
class NodeAdded:
    node: str
    name: str
    address: str
    group: str
    memory_mib: int
    disk_mib: int
    cpus: int
    master_capable: bool
    vm_capable: bool
    role: str


@event(NODES + 2)
@frozen
class NodeRemoved:
    node: str


@event(NODES + 3, version=2)
@frozen
class NodeModified:
    """A node's flags or role changed; None means unchanged (v1 held an open `changes` dict)."""
    node: str
    offline: bool | None
    drained: bool | None
    master_capable: bool | None
    vm_capable: bool | None
    role: str | None

    @staticmethod
    def upcast_v1_to_v2(payload: dict) -> dict:
        rest, changes = _split_v1(payload, "NodeModified", "changes")
        return {**rest, **_typed_changes("NodeModified", NodeModified.FIELDS[1:], changes)}


@event(NODES + 4)
@frozen
class NodeCapacityDetected:
    node: str
    memory_mib: int
    disk_mib: int
    cpus: int


@event(NODES + 5)
@frozen
class NodeFenced:
    """A fence proof: the node's instances are known dead (`proof` says how: "operator", "watchdog", ...)."""
    node: str
    proof: str
    detail: str


@event(NODES + 6)
@frozen
class JoinTokenIssued:
    """A one-time join token for the node called `node` at `address`: only its secret's SHA-256 is in the log.

    `expires_at` is in epoch seconds; the member that checks the token compares it with its clock.
    """
    node: str
    address: str
    token_hash: str
    expires_at: int


@event(NODES + 7)
@frozen
class JoinTokenUsed:
    """A join token was spent: it admits no second node."""
    token_hash: str


@event(NODES + 8)
@frozen
class NodeCertificateIssued:
    """The node called `node` (a name: its id may not exist yet) holds the certificate `serial` (lower-case hex)."""
    node: str
    serial: str


@event(NODES + 9)
@frozen
class NodeCertificateRevoked:
    """The certificate with `serial` (lower-case hex) of the node called `node` is refused at every handshake."""
    node: str
    serial: str


@event(NODES + 10)
@frozen
class NodeWatchdogArmed:
    """The node reported its watchdog armed again (after recovery was disarmed or it was in maintenance): its
    lease running out is a fence proof again."""
    node: str


# --- instances -------------------------------------------------------------

@event(INSTANCES + 1)
@frozen
class InstanceAdded:
    instance: str
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


@event(INSTANCES + 2)
@frozen
class InstanceRemoved:
    instance: str


@event(INSTANCES + 3)
@frozen
class InstanceStartupRequested:
    instance: str


@event(INSTANCES + 4)
@frozen
class InstanceShutdownRequested:
    instance: str
    timeout_s: int


@event(INSTANCES + 5)
@frozen
class InstanceRebootRequested:
    instance: str
    reboot_type: str


@event(INSTANCES + 6)
@frozen
class InstanceModified:
    """Memory, vcpus or hypervisor parameters changed; None means unchanged."""
    instance: str
    memory_mib: int | None
    vcpus: int | None
    hvparams: dict


@event(INSTANCES + 7)
@frozen
class InstanceDiskAdded:
    instance: str
    size_mib: int


@event(INSTANCES + 8)
@frozen
class InstanceDiskGrown:
    instance: str
    disk_index: int
    size_mib: int


@event(INSTANCES + 9)
@frozen
class InstanceNicAdded:
    instance: str
    mac: str
    mode: str
    link: str


@event(INSTANCES + 10)
@frozen
class InstanceNicRemoved:
    instance: str
    nic_index: int


@event(INSTANCES + 11)
@frozen
class InstanceNicModified:
    instance: str
    nic_index: int
    mode: str
    link: str


@event(INSTANCES + 12)
@frozen
class InstanceRenamed:
    instance: str
    name: str


@event(INSTANCES + 13)
@frozen
class InstanceMigrated:
    """The instance moved live to a new primary (live migration only: the old primary stopped it itself)."""
    instance: str
    primary: str
    secondary: str


# 0x050e and 0x050f are left alone on purpose.


@event(INSTANCES + 16, version=2)
@frozen
class InstanceObservedRunning:
    """A node saw the instance running, at the state of `seen_at_seq` (v1: 0)."""
    instance: str
    node: str
    seen_at_seq: int = 0

    @staticmethod
    def upcast_v1_to_v2(payload: dict) -> dict:
        return {**payload, "seen_at_seq": 0}


@event(INSTANCES + 17, version=2)
@frozen
class InstanceObservedStopped:
    """A node saw the instance not running there; `cause` is shutdown, crashed, guest or absent (v1: shutdown)."""
    instance: str
    node: str
    seen_at_seq: int = 0
    cause: str = "shutdown"

    @staticmethod
    def upcast_v1_to_v2(payload: dict) -> dict:
        return {**payload, "seen_at_seq": 0, "cause": "shutdown"}


@event(INSTANCES + 18)
@frozen
class InstanceFailedOver:
    """The instance's primary changed without a live migration: the old primary must confirm it stopped it."""
    instance: str
    primary: str
    secondary: str


@event(INSTANCES + 19)
@frozen
class InstanceMigrationStarted:
    """A live migration from `source` to `target` began."""
    instance: str
    source: str
    target: str


@event(INSTANCES + 20)
@frozen
class InstanceMigrationFinished:
    """The source node reports how a live migration ended, at the state of `seen_at_seq`."""
    instance: str
    source: str
    target: str
    ok: bool
    message: str
    seen_at_seq: int


@event(INSTANCES + 21)
@frozen
class InstanceMigrationAborted:
    """A live migration was given up (the compensating step): the target must confirm no copy runs there."""
    instance: str
    target: str


@event(INSTANCES + 22)
@frozen
class InstanceRestartDecided:
    """The instance crashed and will be restarted on `node` after `delay_s` (attempt 1, 2, ...)."""
    instance: str
    node: str
    attempt: int
    delay_s: float


@event(INSTANCES + 23)
@frozen
class InstanceRestartsExhausted:
    """The instance crashed again after `attempts` restarts: it is left in error for a person to look at."""
    instance: str
    node: str
    attempts: int


@event(INSTANCES + 24)
@frozen
class DiskStateObserved:
    """A node saw one replicated disk's state (SYNCING, UPTODATE or DEGRADED) and how far it has synced."""
    instance: str
    disk: int
    node: str
    state: str
    sync_percent: float


@event(INSTANCES + 25)
@frozen
class InstanceSecondaryReplaced:
    """A replicated instance's disks are to be mirrored on `new_secondary` instead of `old_secondary`.

    The new copy counts only once its node reports it UPTODATE (it starts SYNCING at 0 %).
    """
    instance: str
    new_secondary: str
    old_secondary: str


@event(INSTANCES + 30)
@frozen
class InstanceRecovered:
    """An instance of a fenced node was placed on `primary` to be started there (a diskless instance, whose
    whole state was its memory); `old_primary` is the fenced node. The secondary, if any, is unchanged."""
    instance: str
    primary: str
    old_primary: str


@event(INSTANCES + 31)
@frozen
class InstanceHaPrioritySet:
    """The order in which the instance is recovered after its node is fenced, when capacity is short: higher
    first (default 0)."""
    instance: str
    ha_priority: int


# --- jobs ------------------------------------------------------------------

@event(JOBS + 1)
@frozen
class JobSubmitted:
    """A job entered the queue; its integer id is assigned in commit order at apply."""
    operations: tuple
    request_id: str


@event(JOBS + 2, version=2)
@frozen
class JobAdmitted:
    """The leader admitted a job; `claims` (opaque plain data) say what it locks until it ends.

    Version 1 carried the job's reservations and MACs instead; they now come
    with each operation's plan (JobOperationPlanned). A v1 record is upcast to
    one claim holding them (see V1_HOLDINGS), which replay puts back on the
    job as the v1 handler did, so an old history folds to the state it always
    folded to.
    """
    job: int
    claims: tuple

    @staticmethod
    def upcast_v1_to_v2(payload: dict) -> dict:
        rest, reservations, macs = _split_v1(payload, "JobAdmitted", "reservations", "macs")
        # A list, as CBOR decodes one, so that decoding freezes it (and what it holds) like any payload.
        return {**rest, "claims": [{V1_HOLDINGS: True, "reservations": reservations, "macs": macs}]}


# The key that marks the one claim an upcast JobAdmitted v1 carries (its reservations and MACs).
V1_HOLDINGS = "admitted_v1_holdings"


@event(JOBS + 3)
@frozen
class JobProgressed:
    job: int
    operation_index: int
    step: int
    message: str


@event(JOBS + 4)
@frozen
class JobSucceeded:
    job: int
    result: Any


@event(JOBS + 5)
@frozen
class JobFailed:
    job: int
    code: str
    message: str


@event(JOBS + 6)
@frozen
class JobCanceled:
    job: int


@event(JOBS + 7)
@frozen
class JobOperationPlanned:
    """The committed plan of one operation of a job (`steps` are opaque plain data); the first one wins."""
    job: int
    operation_index: int
    params: dict
    steps: tuple
    reservations: tuple
    macs: tuple
    result: Any


@event(JOBS + 8)
@frozen
class JobCancelRequested:
    """Someone asked to cancel a job; the runner stops it at the next safe point."""
    job: int


def _split_v1(payload: dict[str, Any], name: str, *keys: str) -> tuple:
    """The payload less `keys`, then the value of each key; a v1 payload missing one is refused."""
    missing = [key for key in keys if key not in payload]
    if missing:
        raise ValueError(f"{name} v1 payload lacks {', '.join(missing)}")
    return ({k: v for k, v in payload.items() if k not in keys}, *[payload[key] for key in keys])


def _typed_changes(name: str, fields: tuple, changes: Any) -> dict[str, Any]:
    """A v1 open `changes` dict as typed fields (None: unchanged); a key that is no field is refused."""
    if not isinstance(changes, dict):
        raise ValueError(f"{name} v1 payload has no 'changes' map")
    unknown = sorted(repr(key) for key in changes if key not in fields)
    if unknown:
        raise ValueError(f"{name} v1 change {unknown[0]} is not one of {', '.join(fields)} "
                         "(the record was written by a build that knew another field, or is corrupt)")
    return {field: changes.get(field) for field in fields}


def for_level(level: int) -> list[type]:
    """The event classes a cluster at feature `level` may propose."""
    return [cls for cls in REGISTRY.values() if cls.SINCE_LEVEL <= level]
