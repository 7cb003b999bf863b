"""The operations framework: claims, steps, plans, the context a check runs in, and admission.

An operation is a module with a frozen `Params`, and four pure functions:
`claims(state, params)`, `check(state, params)` (raises PrereqError), `plan(state,
params)` (a straight-line Plan) and, where it generates values such as ids or
MAC addresses, `prepare(state, params, rng)`. Module constants: `NAME`
(`instance_add`), `OPCODE` (Ganeti's summary word, `INSTANCE_CREATE`), `ROLE`
(the least role that may run it) and `DRAIN_EXEMPT` (runs while the queue is
drained). `admit` runs the checks every operation shares, then the
operation's own.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from appliance.model.errors import PERMISSION_DENIED, QUEUE_DRAINED, WRONG_STATE, PrereqError
from appliance.model.state import ClusterState

ROLE_RANK = {"read-only": 0, "operator": 1, "admin": 2}


@dataclass(frozen=True)
class Claims:
    """What a job locks while it runs: two jobs with overlapping claims never run together."""

    instances: frozenset = frozenset()
    nodes: frozenset = frozenset()
    groups: frozenset = frozenset()
    cluster: bool = False

    def conflicts(self, other: Claims) -> bool:
        """True when the two claims share anything (a cluster claim conflicts with everything)."""
        return (self.cluster or other.cluster or bool(self.instances & other.instances)
                or bool(self.nodes & other.nodes) or bool(self.groups & other.groups))

    def __or__(self, other: Claims) -> Claims:
        return Claims(self.instances | other.instances, self.nodes | other.nodes,
                      self.groups | other.groups, self.cluster or other.cluster)


@dataclass(frozen=True)
class Wait:
    """A condition a step waits for before the next: an observation event from a node."""

    what: str            # "observed_running" | "observed_stopped"
    instance: str
    node: str
    timeout_s: int = 300


@dataclass(frozen=True)
class Step:
    """Events committed together, then (optionally) conditions to wait for."""

    message: str
    events: tuple
    waits: tuple = ()


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


def check_role(state: ClusterState, op: ModuleType, actor: str) -> None:
    """Refuse an actor whose role is below the operation's."""
    if state.cluster is None:
        return
    user = state.users.get(actor)
    if user is None:
        raise PrereqError(PERMISSION_DENIED, f"User '{actor}' is not known in this cluster; "
                                             "ask an admin to run 'cairn user add'")
    needed = getattr(op, "ROLE", "operator")
    if ROLE_RANK[user.role] < ROLE_RANK[needed]:
        raise PrereqError(PERMISSION_DENIED, f"User '{actor}' has role {user.role}; "
                                             f"{op.NAME} needs role {needed} or higher")


def check_queue(state: ClusterState, op: ModuleType, now: float) -> None:
    """Refuse new work while the job queue is drained (Ganeti: 'Queue drained')."""
    if getattr(op, "DRAIN_EXEMPT", False):
        return
    if state.mode_active("queue_drained", now):
        raise PrereqError(QUEUE_DRAINED, "The job queue is drained: no new jobs are accepted; "
                                         "run 'cairn cluster queue undrain' to accept jobs again")


def admit(state: ClusterState, op: ModuleType, params: Any, context: Context) -> Plan:
    """Run every check (shared, then the operation's own) and return the operation's plan."""
    if state.cluster is None and not getattr(op, "BEFORE_INIT", False):
        raise PrereqError(WRONG_STATE, "The cluster is not initialised; run 'cairn cluster init' first")
    check_role(state, op, context.actor)
    check_queue(state, op, context.now)
    op.check(state, params)
    return op.plan(state, params)


def prepared(state: ClusterState, op: ModuleType, params: Any, rng: random.Random) -> Any:
    """Params with generated values (ids, MACs) filled in, for operations that generate any."""
    prepare = getattr(op, "prepare", None)
    return prepare(state, params, rng) if prepare else params
