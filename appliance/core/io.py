"""The inputs a node core takes and the `Ready` it returns (etcd-raft's shape, for Cairn)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from appliance.model.codec import Envelope


# --- inputs -----------------------------------------------------------------

@dataclass(frozen=True)
class Committed:
    """A record the log committed, in order (the payload is an encoded envelope)."""

    seq: int
    payload: bytes


@dataclass(frozen=True)
class CommittedBatch:
    """Records the log committed together, in order: applied one by one, decided on once (etcd-raft's
    Ready.CommittedEntries)."""

    records: tuple


def op(operation: str, /, **params) -> dict:
    """One operation of a job, as a client sends it: `{"op": NAME, "params": {...}}`."""
    return {"op": operation, "params": params}


@dataclass(frozen=True)
class Submitted:
    """A caller submits a job: operations are `{"op": NAME, "params": {...}}` with names as typed."""

    token: Any
    operations: tuple
    actor: str
    reason: str = ""
    request_id: str = ""


@dataclass(frozen=True)
class CancelRequested:
    """A caller asks to cancel a job."""

    token: Any
    job: int
    actor: str


@dataclass(frozen=True)
class WaitForSeq:
    """A caller waits until this node has applied `seq` (a read after a write: Raft's ReadIndex)."""

    token: Any
    seq: int


@dataclass(frozen=True)
class WaitForJob:
    """A caller waits until a job ends (`cairn job watch`); the reply carries its end state."""

    token: Any
    job: int


@dataclass(frozen=True)
class DriverDone:
    """A driver action finished: `ok`, a message, and for a listing the value it read."""

    action_id: int
    ok: bool
    message: str = ""
    value: Any = None


@dataclass(frozen=True)
class Tick:
    """Time passes: `now` is the shell's wall clock, in seconds."""

    now: float


@dataclass(frozen=True)
class LeadershipChanged:
    """The log's view of who leads in which term (`leader` is a node name, or None)."""

    leader: str | None
    term: int


@dataclass(frozen=True)
class LeaderCommit:
    """The leader's commit seq, as this node has just heard it, and the lease the leader granted with it.

    The reconciler starts or migrates an instance only while it has applied
    at least this seq and holds the lease: `lease_until` is in the core's
    time (the shell converts the lease it measured on its monotonic clock
    from when it sent the request). A node that lags behind the log, or whose
    lease has lapsed (cut off, or paused and continued), may be acting on a
    superseded state. Without `lease_until` the seq counts for FRESH_S.
    """

    seq: int
    lease_until: float | None = None


@dataclass(frozen=True)
class LeaseLost:
    """This node holds no lease any more (the leader refused to renew it, or it lapsed): start nothing."""


@dataclass(frozen=True)
class NodeLapsed:
    """(To the leader.) `node` has held no lease for the recovery interval: it may be fenced.

    The leader's shell tracks liveness outside the log, on its monotonic
    clock: the last lease it granted each node, and when its own term began
    (a new leader waits a whole interval, since it cannot know what its
    predecessor granted). `detail` says it, with the times, for the proof.
    """

    node: str
    detail: str


@dataclass(frozen=True)
class WatchdogArmed:
    """(To the leader.) A node whose watchdog the state holds as possibly stood down reports it armed."""

    node: str


@dataclass(frozen=True)
class NodeReturned:
    """(To the leader.) A fenced node asks for a lease again, having applied its fence and running nothing."""

    node: str


@dataclass(frozen=True)
class ProposalLost:
    """A proposal did not commit or its outcome is unknown; the core may propose it again."""

    event_id: bytes


# --- outputs ----------------------------------------------------------------

@dataclass(frozen=True)
class Proposal:
    """An event to propose; `key` says what made it (for the simulator's checks and for logs)."""

    envelope: Envelope
    key: tuple


@dataclass(frozen=True)
class Action:
    """A driver action for this node's hypervisor or storage.

    Kinds: start (args: spec), stop (timeout_s), migrate (target), list (hypervisor
    listing), disk_create (index, size_mib), disk_remove (index), disk_list,
    disk_states (the replicated copies' states), disk_set_peer (index, peer, role),
    disk_resync (index, peer).
    """

    id: int
    kind: str
    instance: str = ""
    args: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Reply:
    """The answer to a caller waiting on a submission or a cancel: `ok` with a value, or an error."""

    token: Any
    ok: bool
    value: Any = None
    code: str = ""
    message: str = ""


@dataclass
class Ready:
    """Everything one step asks the shell to do, in order."""

    proposals: list = field(default_factory=list)
    actions: list = field(default_factory=list)
    replies: list = field(default_factory=list)
    wake_at: float | None = None

    def extend(self, other: Ready) -> None:
        self.proposals += other.proposals
        self.actions += other.actions
        self.replies += other.replies
        if other.wake_at is not None and (self.wake_at is None or other.wake_at < self.wake_at):
            self.wake_at = other.wake_at
