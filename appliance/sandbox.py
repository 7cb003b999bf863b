"""In-process drivers of operations: `Sandbox` applies plans directly; `InProcessCluster` runs them as jobs.

`Sandbox` prepares, admits, plans and applies with no log and no jobs: the
operation tests use it to look at one operation's checks and events.
`InProcessCluster` is the job engine with the shell reduced to a list: one
leading `NodeCore` over an in-process log, every proposal committed in order
and fed back, and an `Observer` standing in for the nodes' reconcilers. The
demo history and the engine benchmark are built through it, so they show
exactly what the engine commits. Neither touches the clock, a socket or a
thread: time passes only when the caller says so.
"""

from __future__ import annotations

import itertools
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from appliance.core.io import CommittedBatch, Committed, LeadershipChanged, Ready, Reply, Submitted, Tick
from appliance.core.node import NodeCore
from appliance.core.plans import event_id
from appliance.core.reconciler import RECONCILER_ACTOR
from appliance.model import events as ev
from appliance.model import replay
from appliance.model.codec import Envelope, encode
from appliance.model.ids import EVENT_ID_BYTES
from appliance.model.state import ClusterState
from ops import base, registry


START = 1_764_633_600.0


@dataclass
class Sandbox:
    """A cluster state that operations run against directly."""

    seed: int = 0
    state: ClusterState = field(default_factory=ClusterState)
    actor: str = "admin"
    now: float = START
    keep: bool = True
    envelopes: list = field(default_factory=list)
    sink: Callable[[Envelope], None] | None = None

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def plan(self, operation: str, params: object = None, /, *, actor: str | None = None,
             **fields: object) -> base.Plan:
        """Prepare and admit one operation and return its plan, applying nothing; PrereqError if refused."""
        op = registry.get(operation)
        params = params if params is not None else op.Params(**fields)
        params = base.prepared(self.state, op, params, self.rng)
        return base.admit(self.state, op, params, base.Context(actor or self.actor, self.now, self.rng))

    def run(self, operation: str, params: object = None, /, *, actor: str | None = None, reason: str = "",
            **fields: object) -> base.Plan:
        """Run one operation to completion (all steps applied); PrereqError if it is refused."""
        actor = actor or self.actor
        plan = self.plan(operation, params, actor=actor, **fields)
        self.apply_plan(plan, actor, reason or f"{registry.get(operation).OPCODE.lower()} by {actor}")
        return plan

    def apply_plan(self, plan: base.Plan, actor: str, reason: str) -> None:
        """Commit every event of a plan, in order."""
        for event in plan.events:
            self.commit(event, actor, reason)

    def commit(self, event: object, actor: str | None = None, reason: str = "") -> Envelope:
        """Apply one event as if it had been committed."""
        envelope = Envelope(self.rng.randbytes(EVENT_ID_BYTES), event, actor or self.actor, reason, self.now)
        self.state = replay.apply(self.state, envelope)
        if self.keep:
            self.envelopes.append(envelope)
        if self.sink is not None:
            self.sink(envelope)
        return envelope

    def tick(self, seconds: float) -> None:
        """Let simulated time pass."""
        self.now += seconds


# --- jobs through the engine ---------------------------------------------------------

OBSERVATIONS = (ev.InstanceObservedRunning, ev.InstanceObservedStopped, ev.InstanceMigrationFinished)


class Observer:
    """What the reconcilers of a healthy cluster report, answered the moment a committed event asks for it.

    It stands in for every node's reconciler where the machines are not the
    point (the demo, the engine benchmark). After each committed instance
    event it compares the instance's desired state with what was last
    observed and proposes what a reconciler would commit once its machine had
    done as asked: the migration finished, the old node confirms the
    instance is absent, it runs on its primary, it stopped. Each observation
    carries `seen_at_seq`, the seq the node acted on. Running every node's
    real reconciler instead would make each commit cost a pass over every
    instance on every node, and the benchmark would time the reconcilers,
    not the engine.
    """

    def __init__(self) -> None:
        self.pending: set[tuple] = set()     # (instance, event type, node) proposed and not yet committed

    def answer(self, state, envelope: Envelope, now: float) -> list[Envelope]:
        """The observations a committed event calls for (none for job events or observations)."""
        event = envelope.event
        kind = type(event)
        if kind in OBSERVATIONS:
            self.pending.discard((event.instance, kind, event.source if kind is ev.InstanceMigrationFinished
                                  else event.node))
            return []
        instance_id = getattr(event, "instance", None)
        if instance_id is None:
            return []
        instance = state.instances.get(instance_id)
        if instance is None:
            return []
        out: list[Envelope] = []
        seq = state.seq
        if instance.migration_status == "running":
            target = state.nodes[instance.migration_target].name
            self._add(out, now, instance.primary, f"migrated live to {target}", ev.InstanceMigrationFinished(
                instance.id, instance.primary, instance.migration_target, True, "migrated", seq))
            return out
        for node in instance.pending_stop:
            self._add(out, now, node, "not running here", ev.InstanceObservedStopped(instance.id, node, seq, "absent"))
        seen = (instance.observed_state, instance.observed_node)
        if instance.admin_state == "up":
            if seen != ("running", instance.primary):
                self._add(out, now, instance.primary, "seen running",
                          ev.InstanceObservedRunning(instance.id, instance.primary, seq))
        elif instance.observed_state == "running":
            self._add(out, now, instance.observed_node, "stopped as asked",
                      ev.InstanceObservedStopped(instance.id, instance.observed_node, seq, "shutdown"))
        return out

    def _add(self, out: list, now: float, node: str, reason: str, event: Any) -> None:
        key = (event.instance, type(event), node)
        if key in self.pending:
            return
        self.pending.add(key)
        eid = event_id("observer", event.instance, type(event).__name__, node, event.seen_at_seq)
        out.append(Envelope(eid, event, RECONCILER_ACTOR, f"{reason} on {node}", now, 0))


class InProcessCluster:
    """One leading NodeCore over an in-process log: jobs go in, committed records come out, in order.

    The shell of a real node reduced to a list: each proposal of a Ready is
    encoded and appended, each appended record is committed in order and fed
    back as `Committed` (so every event is encoded, decoded and applied, as on
    a real node), and the observer's answers are appended like any proposal.
    `on_commit(seq, payload, envelope)` sees every committed record.
    """

    def __init__(self, node_name: str, now: float = START,
                 on_commit: Callable[[int, bytes, Envelope], None] | None = None) -> None:
        self.core = NodeCore(node_name, reconcile=False)
        self.observer = Observer()
        self.now = now
        self.on_commit = on_commit
        self.appended: deque[tuple[bytes, Envelope]] = deque()
        self.seq = 0
        self.wake_at: float | None = None
        self.replies: dict[int, Reply] = {}
        self.tokens = itertools.count(1)
        self.core.step(Tick(now))
        self._perform(self.core.step(LeadershipChanged(node_name, 1)))
        self.settle()

    @property
    def state(self):
        return self.core.state

    def submit(self, operations: tuple, actor: str, reason: str = "", request_id: str = "") -> int:
        """Submit one job (operations `{"op": NAME, "params": {...}}`, names as typed); returns the reply token."""
        token = next(self.tokens)
        self._perform(self.core.step(Submitted(token, tuple(operations), actor, reason, request_id)))
        return token

    def tick(self, seconds: float) -> None:
        """Let time pass."""
        self.now += seconds
        self._perform(self.core.step(Tick(self.now)))

    def settle(self, limit_s: float = 3600.0) -> None:
        """Commit everything proposed until no job is active, passing time to the engine's wake-ups as needed.

        Returns early, leaving jobs active, if nothing would move within `limit_s`.
        """
        deadline = self.now + limit_s
        while True:
            self.drain()
            if not self.core.state.active_jobs or self.wake_at is None or self.wake_at > deadline:
                return
            # A deadline already reached that moved nothing: step past it rather than ask again forever.
            self.now = self.wake_at if self.wake_at > self.now else self.now + 1.0
            self._perform(self.core.step(Tick(self.now)))

    def drain(self) -> None:
        """Commit and feed back every appended record, and whatever they make the node propose, in order."""
        appended, core, observer = self.appended, self.core, self.observer
        while appended:
            # Everything appended so far commits as one batch, which the node applies and then decides on once.
            batch, envelopes = [], []
            while appended:
                payload, envelope = appended.popleft()
                self.seq += 1
                if self.on_commit is not None:
                    self.on_commit(self.seq, payload, envelope)
                batch.append(Committed(self.seq, payload))
                envelopes.append(envelope)
            self._perform(core.step(CommittedBatch(tuple(batch))))
            for envelope in envelopes:
                for answer in observer.answer(core.state, envelope, self.now):
                    appended.append((encode(answer), answer))

    def _perform(self, ready: Ready) -> None:
        for proposal in ready.proposals:
            self.appended.append((encode(proposal.envelope), proposal.envelope))
        for reply in ready.replies:
            self.replies[reply.token] = reply
        self.wake_at = ready.wake_at
