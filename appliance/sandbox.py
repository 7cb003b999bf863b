"""An in-process driver of operations: prepare, admit, plan and apply, with no log and no jobs.

The demo generator and tests use it to build histories through the real
operations; every event it applies is also kept as an envelope, in order, so
the history can be written to a record file.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from appliance.model import replay
from appliance.model.codec import Envelope
from appliance.model.ids import EVENT_ID_BYTES
from appliance.model.state import ClusterState
from ops import base, registry


@dataclass
class Sandbox:
    """A cluster state that operations run against directly."""

    seed: int = 0
    state: ClusterState = field(default_factory=ClusterState)
    actor: str = "admin"
    now: float = 1_764_633_600.0
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
