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
                                      if cls.ANNOTATIONS[name] in ("tuple", "dict", "Any"))
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
    never compare equal.
    """
    annotations = dict(cls.__dict__.get("__annotations__", {}))
    built = NamedTuple(cls.__name__, [(name, Any) for name in annotations])
    for name, value in cls.__dict__.items():
        if name not in ("__annotations__", "__dict__", "__weakref__"):
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


@event(CLUSTER + 2)
@frozen
class ClusterModified:
    changes: dict


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


@event(NODES + 3)
@frozen
class NodeModified:
    """Flags changed: keys among offline, drained, master_capable, vm_capable, role."""
    node: str
    changes: dict


@event(NODES + 4)
@frozen
class NodeCapacityDetected:
    node: str
    memory_mib: int
    disk_mib: int
    cpus: int


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
    """The instance's primary (and secondary) changed; used by migrate, failover and move."""
    instance: str
    primary: str
    secondary: str


@event(INSTANCES + 16)
@frozen
class InstanceObservedRunning:
    instance: str
    node: str


@event(INSTANCES + 17)
@frozen
class InstanceObservedStopped:
    instance: str
    node: str


# --- jobs ------------------------------------------------------------------

@event(JOBS + 1)
@frozen
class JobSubmitted:
    """A job entered the queue; its integer id is assigned in commit order at apply."""
    operations: tuple
    request_id: str


@event(JOBS + 2)
@frozen
class JobAdmitted:
    """The leader admitted a job; `reservations` hold what it will consume until it ends."""
    job: int
    reservations: tuple
    macs: tuple


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


def for_level(level: int) -> list[type]:
    """The event classes a cluster at feature `level` may propose."""
    return [cls for cls in REGISTRY.values() if cls.SINCE_LEVEL <= level]
