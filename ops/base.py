"""The operations framework: the Operation protocol, claims, steps, plans, name resolution and admission.

An operation is a module that fulfils `Operation`: constants `NAME`
(`instance_add`), `OPCODE` (Ganeti's summary word, `INSTANCE_CREATE`), `ROLE`
(the least role that may run it), `DRAIN_EXEMPT` (runs while the queue is
drained), `BEFORE_INIT` (runs before the cluster exists) and `REFERENCES`
(which Params fields name existing entities, and of which kind); a frozen
`Params`; and five pure functions: `prepare(state, params, rng)` (fills in
generated values such as ids and MACs), `claims(state, params)`,
`check(state, params)` (raises PrereqError) and `plan(state, params)` (a
straight-line Plan). The registry refuses a module that lacks any of them, so a
misspelt constant fails at import, not at run time. `resolve` turns the names
a user typed into ids (Ganeti's ExpandNames) before claims are taken; `admit`
runs the checks every operation shares, then the operation's own.
"""

from __future__ import annotations

import dataclasses
import functools
import random
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

from appliance.model.errors import PERMISSION_DENIED, QUEUE_DRAINED, UNKNOWN_ENTITY, WRONG_STATE, PrereqError
from appliance.model.state import ClusterState

ROLE_RANK = {"read-only": 0, "operator": 1, "admin": 2}
REFERENCE_KINDS = ("instance", "node", "group", "nodes", "tag_target")


@runtime_checkable
class Operation(Protocol):
    """What every operation module provides (checked by `conforms`, since modules are not classes)."""

    NAME: str
    OPCODE: str
    ROLE: str
    DRAIN_EXEMPT: bool
    BEFORE_INIT: bool
    REFERENCES: Mapping[str, str]
    Params: type
    prepare: Callable
    claims: Callable
    check: Callable
    plan: Callable


OPERATION_MEMBERS = tuple(Operation.__annotations__)


def conforms(module: ModuleType) -> ModuleType:
    """The module itself when it fulfils Operation; TypeError naming what is missing or wrong otherwise."""
    missing = [name for name in OPERATION_MEMBERS if not hasattr(module, name)]
    if missing:
        raise TypeError(f"operation module {module.__name__} lacks {', '.join(missing)}")
    if module.ROLE not in ROLE_RANK:
        raise TypeError(f"operation {module.NAME}: ROLE {module.ROLE!r} is not one of {', '.join(ROLE_RANK)}")
    fields = {f.name for f in dataclasses.fields(module.Params)}
    for name, kind in module.REFERENCES.items():
        if name not in fields or kind not in REFERENCE_KINDS:
            raise TypeError(f"operation {module.NAME}: REFERENCES names {name!r} as {kind!r}; fields are "
                            f"{sorted(fields)}, kinds {', '.join(REFERENCE_KINDS)}")
    return module


def no_prepare(state: ClusterState, params: Any, rng: random.Random) -> Any:
    """`prepare` of an operation that generates nothing."""
    return params


@dataclass(frozen=True)
class Claims:
    """What a job locks while it runs, by entity id (by `new_name(...)` for what does not exist yet).

    `instances`, `nodes` and `groups` are exclusive; `shared_nodes` and
    `shared_groups` are shared: two adds on one node share it, a node removal
    takes it exclusively. Two claims conflict when they hold one key and either
    holds it exclusively; a cluster claim conflicts with everything.
    """

    instances: frozenset = frozenset()
    nodes: frozenset = frozenset()
    groups: frozenset = frozenset()
    cluster: bool = False
    shared_nodes: frozenset = frozenset()
    shared_groups: frozenset = frozenset()

    def conflicts(self, other: Claims) -> bool:
        """True when the two claims hold a key that either holds exclusively."""
        if self.cluster or other.cluster or self.instances & other.instances:
            return True
        return bool(self.nodes & (other.nodes | other.shared_nodes) or other.nodes & self.shared_nodes
                    or self.groups & (other.groups | other.shared_groups) or other.groups & self.shared_groups)

    def __or__(self, other: Claims) -> Claims:
        nodes, groups = self.nodes | other.nodes, self.groups | other.groups
        return Claims(self.instances | other.instances, nodes, groups, self.cluster or other.cluster,
                      (self.shared_nodes | other.shared_nodes) - nodes,
                      (self.shared_groups | other.shared_groups) - groups)

    def as_payload(self) -> tuple:
        """The claims as plain data, as JobAdmitted commits them: sorted (kind, key) pairs."""
        pairs = [("cluster", "")] if self.cluster else []
        for kind in CLAIM_KINDS:
            pairs += [(kind, key) for key in sorted(getattr(self, kind))]
        return tuple(pairs)

    @classmethod
    def from_payload(cls, pairs: tuple) -> Claims:
        """The claims a JobAdmitted committed."""
        sets: dict[str, set] = {kind: set() for kind in CLAIM_KINDS}
        for kind, key in pairs:
            if kind != "cluster":
                sets[kind].add(key)
        return cls(cluster=any(kind == "cluster" for kind, _ in pairs),
                   **{kind: frozenset(keys) for kind, keys in sets.items()})


CLAIM_KINDS = ("instances", "nodes", "groups", "shared_nodes", "shared_groups")


class HeldClaims:
    """The union of many jobs' claims, indexed, so a new claim is tested against all of them at once.

    Gives the same answer as testing `Claims.conflicts` against each held
    claim, in time proportional to the new claim's size, not to how many are held.
    """

    def __init__(self) -> None:
        self.exclusive: set = set()     # (kind, key) held exclusively by someone
        self.shared: set = set()        # (kind, key) held shared by someone
        self.anything = False
        self.cluster = False

    def conflicts(self, claims: Claims) -> bool:
        if self.cluster or (claims.cluster and self.anything):
            return True
        exclusive, shared = self.exclusive, self.shared
        for kind, keys in (("i", claims.instances), ("n", claims.nodes), ("g", claims.groups)):
            for key in keys:
                if (kind, key) in exclusive or (kind, key) in shared:
                    return True
        for kind, keys in (("n", claims.shared_nodes), ("g", claims.shared_groups)):
            for key in keys:
                if (kind, key) in exclusive:
                    return True
        return False

    def add(self, claims: Claims) -> None:
        self.anything = True
        self.cluster = self.cluster or claims.cluster
        self.exclusive.update([("i", k) for k in claims.instances] + [("n", k) for k in claims.nodes]
                              + [("g", k) for k in claims.groups])
        self.shared.update([("n", k) for k in claims.shared_nodes] + [("g", k) for k in claims.shared_groups])


def new_name(name: str) -> str:
    """The claim key of a name no entity has yet (ids never start with 'name:')."""
    return f"name:{name}"


WAIT_KINDS = ("observed_running", "observed_stopped", "migration_finished", "stop_confirmed")
ON_TIMEOUT = ("fail", "compensate", "retry")
# How many times a step whose wait says "retry" is run again before its job fails.
STEP_RETRIES = 2


@dataclass(frozen=True)
class Wait:
    """A typed predicate over state that a step waits for, with a timeout and what to do when it expires.

    - observed_running: the instance is seen running on `node`;
    - observed_stopped: the instance is seen stopped (or absent) on `node`;
    - migration_finished: the live migration the step started has finished (a failure counts as expiry);
    - stop_confirmed: no node is left that must confirm the instance stopped.
    `on_timeout` is "fail" (the job fails), "compensate" (the step's compensation commits first) or
    "retry" (the step's events are committed again, up to STEP_RETRIES times, then the job fails); only
    steps made of requests that mean the same when repeated (start, reboot) retry.
    """

    what: str
    instance: str
    node: str
    timeout_s: int = 300
    on_timeout: str = "fail"

    def __post_init__(self) -> None:
        if self.what not in WAIT_KINDS:
            raise ValueError(f"unknown wait {self.what!r}; use one of {', '.join(WAIT_KINDS)}")
        if self.on_timeout not in ON_TIMEOUT:
            raise ValueError(f"unknown timeout action {self.on_timeout!r}; use one of {', '.join(ON_TIMEOUT)}")


@dataclass(frozen=True)
class Step:
    """Events committed together, then conditions to wait for; `compensation` undoes it when a wait fails."""

    message: str
    events: tuple
    waits: tuple = ()
    compensation: tuple = ()


@dataclass(frozen=True)
class ResultWithJobs:
    """An operation's result that asks for follow-up jobs (Ganeti's ResultWithJobs).

    Each job is a tuple of operations, each `{"op": NAME, "params": {...}}`;
    the engine submits them, one job each, before the parent succeeds.
    """

    jobs: tuple
    summary: Any = None


@dataclass(frozen=True)
class Reservation:
    """Resources an admitted job holds on a node until it ends."""

    node: str
    memory_mib: int = 0
    disk_mib: int = 0

    def as_payload(self) -> dict[str, Any]:
        return {"node": self.node, "memory_mib": self.memory_mib, "disk_mib": self.disk_mib}


@dataclass(frozen=True)
class Plan:
    """What an operation will do, as data: steps in order, and what it reserves meanwhile."""

    steps: tuple
    reservations: tuple = ()
    macs: tuple = ()
    result: Any = None

    @property
    def events(self) -> tuple:
        return tuple(e for step in self.steps for e in step.events)


def one_step(message: str, *events_: Any, waits: tuple = (), **extra: Any) -> Plan:
    """A plan of a single step."""
    return Plan(steps=(Step(message, tuple(events_), waits),), **extra)


@dataclass(frozen=True)
class Context:
    """Who runs the operation and when: the framework's checks need both, the operation's own neither."""

    actor: str
    now: float
    rng: random.Random = field(default_factory=lambda: random.Random(0), compare=False)


# Actors that are the cluster itself, not a user: the leader's healer fences lapsed nodes and recovers their
# instances. No user can be called this (user names cannot start with "cairn-").
SYSTEM_ACTORS = frozenset({"cairn-healer"})


def check_role(state: ClusterState, op: ModuleType, actor: str) -> None:
    """Refuse an actor whose role is below the operation's."""
    if state.cluster is None or actor in SYSTEM_ACTORS:
        return
    user = state.users.get(actor)
    if user is None:
        raise PrereqError(PERMISSION_DENIED, f"User '{actor}' is not known in this cluster; "
                                             "ask an admin to run 'cairn user add'")
    needed = op.ROLE
    if ROLE_RANK[user.role] < ROLE_RANK[needed]:
        raise PrereqError(PERMISSION_DENIED, f"User '{actor}' has role {user.role}; "
                                             f"{op.NAME} needs role {needed} or higher")


def queue_admits(state: ClusterState, ops: list, now: float) -> bool:
    """False while the queue is drained, unless every operation is drain-exempt (undraining must work)."""
    return all(op.DRAIN_EXEMPT for op in ops) or not state.mode_active("queue_drained", now)


def check_queue(state: ClusterState, op: ModuleType, now: float) -> None:
    """Refuse new work while the job queue is drained (Ganeti: 'Queue drained')."""
    if op.DRAIN_EXEMPT:
        return
    if state.mode_active("queue_drained", now):
        raise PrereqError(QUEUE_DRAINED, "The job queue is drained: no new jobs are accepted; "
                                         "run 'cairn cluster queue undrain' to accept jobs again")


def admit(state: ClusterState, op: ModuleType, params: Any, context: Context) -> Plan:
    """Run every check (shared, then the operation's own) and return the operation's plan."""
    if state.cluster is None and not op.BEFORE_INIT:
        raise PrereqError(WRONG_STATE, "The cluster is not initialised; run 'cairn cluster init' first")
    check_role(state, op, context.actor)
    check_queue(state, op, context.now)
    op.check(state, params)
    plan = op.plan(state, params)
    check_maintenance(state, plan, context.now)
    return plan


def check_maintenance(state: ClusterState, plan: Plan, now: float) -> None:
    """Refuse a plan that brings an instance to a node in maintenance (it gets no new instances)."""
    from appliance.model import events as ev

    for event in plan.events:
        kind = type(event)
        if kind is ev.InstanceAdded:
            nodes = (event.primary, event.secondary)
        elif kind in (ev.InstanceMigrationStarted,):
            nodes = (event.target,)
        elif kind in (ev.InstanceFailedOver, ev.InstanceMigrated):
            nodes = (event.primary,)
        elif kind is ev.InstanceSecondaryReplaced:
            nodes = (event.new_secondary,)
        else:
            continue
        for node_id in nodes:
            if node_id and state.mode_active("maintenance", now, node_id):
                name = state.nodes[node_id].name if node_id in state.nodes else node_id
                raise PrereqError(WRONG_STATE, f"Node '{name}' is in maintenance and gets no new instances; "
                                               "take it out of maintenance first, or pick another node")


def prepared(state: ClusterState, op: ModuleType, params: Any, rng: random.Random) -> Any:
    """Params with generated values (ids, MACs) filled in, for operations that generate any."""
    return op.prepare(state, params, rng)


def resolve(state: ClusterState, op: ModuleType, params: Any) -> Any:
    """Params with every reference to an existing entity turned into its id (Ganeti's ExpandNames).

    A name that is unknown is refused here, except a `tag_target` (checked by the
    operation); after this step claims and plans see only ids.
    """
    changes = {}
    for name, kind in op.REFERENCES.items():
        value = getattr(params, name)
        if not value:
            continue
        if kind == "nodes":
            changes[name] = tuple(_entity_id(state, "node", item) for item in value)
        elif kind == "tag_target":
            found = _lookup(state, params.kind, value)
            if found is not None:
                changes[name] = found.id
        else:
            changes[name] = _entity_id(state, kind, value)
    return dataclasses.replace(params, **changes) if changes else params


def _lookup(state: ClusterState, kind: str, name: str):
    if kind == "instance":
        return state.instance_by_name(name)
    if kind == "node":
        return state.node_by_name(name)
    if kind == "group":
        return state.group_by_name(name) or (state.groups.get(state.cluster.default_group)
                                             if name == "default" and state.cluster else None)
    return None


def _entity_id(state: ClusterState, kind: str, name: str) -> str:
    found = _lookup(state, kind, name)
    if found is None:
        raise PrereqError(UNKNOWN_ENTITY, f"{kind.capitalize()} '{name}' not known; "
                                          f"'cairn {kind} list' shows the {kind}s")
    return found.id


def params_payload(params: Any) -> dict[str, Any]:
    """Params as plain data, as a job commits them."""
    return {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}


@functools.lru_cache(maxsize=None)
def _field_names(params_class: type) -> frozenset:
    return frozenset(f.name for f in dataclasses.fields(params_class))


def params_from(op: ModuleType, payload: Mapping[str, Any]) -> Any:
    """An operation's Params from plain data; PrereqError naming an unknown or missing field."""
    from appliance.model.errors import WRONG_INPUT

    names = _field_names(op.Params)
    unknown = sorted(set(payload) - names)
    if unknown:
        raise PrereqError(WRONG_INPUT, f"{op.NAME} takes no field {', '.join(unknown)}; "
                                       f"its fields are {', '.join(sorted(names))}")
    try:
        return op.Params(**payload)
    except TypeError as error:
        raise PrereqError(WRONG_INPUT, f"{op.NAME}: {error}") from None
