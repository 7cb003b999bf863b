"""The event-log contract every implementation (memory, simulated, pysyncobj) fulfils.

A log orders opaque payloads. `propose` returns the `seq` the payload was
committed at; committed records are read back in order, each chained to the
one before it (see consensus.record). A proposal whose outcome cannot be known
(a timeout, a leader lost mid-flight) raises OutcomeUnknown: the caller retries
with the same payload, and the layer above ignores a repeated event id.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

from consensus.record import ChainHead, Record


class LogError(RuntimeError):
    """Base of every error a log reports."""


class NotLeader(LogError):
    """This member cannot accept proposals; `leader` names the one that can, if known."""

    def __init__(self, leader: str | None) -> None:
        self.leader = leader
        hint = f"; propose to {leader}" if leader else "; no leader is known yet, retry shortly"
        super().__init__(f"this node is not the leader{hint}")


class NoQuorum(LogError):
    """A majority of voters cannot be reached, so nothing can commit."""


class OutcomeUnknown(LogError):
    """The proposal may or may not have committed; retry with the same payload."""


class LogClosed(LogError):
    """The log was closed while the call was waiting."""


class Overloaded(LogError):
    """The proposal was not sent (the queue is full or it waited too long); it did not commit, retry later."""


class MembershipError(LogError):
    """A membership change or leadership transfer was refused; the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class Leadership:
    """Who leads in which term, as one member sees it."""

    leader: str | None
    term: int


@dataclass(frozen=True, slots=True)
class LogStatus:
    """A member's view of the log, for `cairn cluster info` and health checks."""

    self_address: str
    leader: str | None
    term: int
    commit_seq: int
    voters: tuple[str, ...] = ()
    non_voters: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)


class EventLog(abc.ABC):
    """An ordered, hash-chained, replicated log of opaque payloads."""

    @abc.abstractmethod
    async def propose(self, payload: bytes, timeout_s: float = 5.0) -> int:
        """Commit one payload; return its seq. Raises NotLeader, NoQuorum or OutcomeUnknown."""

    @abc.abstractmethod
    def head(self) -> ChainHead:
        """The last committed seq and hash this member knows."""

    @abc.abstractmethod
    def read(self, first_seq: int = 1, last_seq: int | None = None) -> Iterator[Record]:
        """Committed records from first_seq to last_seq (inclusive), in order, from local history."""

    @abc.abstractmethod
    def committed(self, after_seq: int = 0) -> AsyncIterator[Record]:
        """Every committed record after `after_seq`, in order, waiting for new ones forever."""

    @abc.abstractmethod
    def leader(self) -> str | None:
        """The address of the current leader, if known."""

    @abc.abstractmethod
    def is_leader(self) -> bool:
        """True when this member is the leader and may accept proposals."""

    @abc.abstractmethod
    def status(self) -> LogStatus:
        """This member's view of the log."""

    @abc.abstractmethod
    def leadership_changes(self) -> AsyncIterator[Leadership]:
        """Yields the current leadership, then every change."""

    def set_snapshot(self, seq: int, data: bytes) -> None:
        """Offer the application's checkpoint at `seq`, so the log may compact before it."""

    def latest_snapshot(self) -> tuple[int, bytes] | None:
        """The newest checkpoint offered, if any."""
        return None

    async def aclose(self) -> None:
        """Stop the member; waiting calls raise LogClosed."""


def check_proposal(closed: bool, payload: object) -> None:
    """Refuse a proposal before anything is sent: LogClosed on a closed log, TypeError for a payload not in bytes."""
    if closed:
        raise LogClosed("the log is closed")
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError(f"a payload is bytes, not {type(payload).__name__}; encode the event first")


@contextlib.contextmanager
def unwrap_single_exception():
    """Re-raise the caller's own exception rather than the one-member group a nursery wraps it in."""
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], BaseExceptionGroup):
            raise group.exceptions[0] from None
        raise
