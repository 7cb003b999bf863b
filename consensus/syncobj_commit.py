"""Group commit on a pysyncobj member: proposals packed into Raft entries, and the tick thread's hand-over to Trio.

Payloads proposed while an entry is in flight are packed into one Raft entry
(a canonical CBOR array of byte strings), so Raft, pickle and encryption costs
are paid per entry, not per payload. Both Trio and the tick thread pack
entries, under the group lock. The tick thread never waits on Trio: it hands
results over with `TrioToken.run_sync_soon`, one wake-up per burst.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import heapq
import itertools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import cbor2
import trio
from pysyncobj import FAIL_REASON
from pysyncobj.monotonic import monotonic as pysyncobj_clock

from consensus.log import LogError, NoQuorum, NotLeader, OutcomeUnknown, Overloaded, check_proposal
from consensus.syncobj_raft import REASON_NAMES, ReplicatedEntries
from consensus.syncobj_settings import SyncObjSettings

_UNKNOWN = (FAIL_REASON.LEADER_CHANGED, FAIL_REASON.UNKNOWN_OUTCOME)
_NOT_COMMITTED = (FAIL_REASON.MISSING_LEADER, FAIL_REASON.NOT_LEADER, FAIL_REASON.DISCARDED)


# Called once with (seq, None) when the payload committed, or (None, error).
ProposalCallback = Callable[[int | None, LogError | None], None]


@dataclass(eq=False)
class Waiter:
    """One proposal waiting for its seq; `on_done` is called exactly once."""

    payload: bytes
    on_done: ProposalCallback
    deadline: float
    sent: bool = False
    resolved: bool = False

    def resolve(self, seq: int | None, error: LogError | None = None) -> None:
        if not self.resolved:
            self.resolved = True
            self.on_done(seq, error)


@dataclass(eq=False)
class Batch:
    """One Raft entry in flight and the proposers waiting on it."""

    waiters: list[Waiter]
    sent_at: float


class GroupCommit:
    """SyncObjLog's proposing side: the proposal queue, entries in flight and their answers."""

    address: str
    _settings: SyncObjSettings
    _closed: bool
    _token: trio.lowlevel.TrioToken
    _post_lock: threading.Lock
    _posted: list
    _drain_scheduled: bool
    _entries: ReplicatedEntries
    _group_lock: threading.RLock
    _packing: bool
    _holding: int
    _queue: collections.deque[Waiter]
    _in_flight: set[Batch]
    _deadlines: list
    _counter: itertools.count
    entries_sent: int
    payloads_sent: int
    entry_seconds: float

    # Provided by the leadership side (consensus.syncobj_membership).
    leader: Callable[[], str | None]
    has_quorum: Callable[[], bool]

    # -- tick thread -------------------------------------------------------------

    def _to_trio(self, function, *args) -> None:
        """Run `function(*args)` in Trio soon, in the order posted; never blocks the tick thread.

        Calls are queued under a short lock and drained by one run_sync_soon at
        a time, so a busy member wakes Trio once per burst, not once per entry.
        """
        with self._post_lock:
            self._posted.append((function, args))
        self._wake_trio()

    def _to_trio_soon(self, function, *args) -> None:
        """Queue `function(*args)` for Trio without waking it: the next _to_trio or the end of this tick does."""
        with self._post_lock:
            self._posted.append((function, args))

    def _wake_trio(self) -> None:
        with self._post_lock:
            if self._drain_scheduled or not self._posted:
                return
            self._drain_scheduled = True
        try:
            self._token.run_sync_soon(self._drain_posted)
        except trio.RunFinishedError:
            pass

    def _drain_posted(self) -> None:
        with self._post_lock:
            posted, self._posted = self._posted, []
            self._drain_scheduled = False
        for function, args in posted:
            function(*args)

    # -- Trio side: proposing (group commit) --------------------------------------------

    async def propose(self, payload: bytes, timeout_s: float = 5.0) -> int:
        done = trio.Event()
        outcome: list = []

        def on_done(seq: int | None, error: LogError | None) -> None:
            outcome.append((seq, error))
            done.set()

        self.submit(payload, timeout_s, on_done)
        await done.wait()
        seq, error = outcome[0]
        if error is not None:
            raise error
        return seq

    def submit(self, payload: bytes, timeout_s: float, on_done: ProposalCallback) -> None:
        """Propose without waiting: `on_done(seq, error)` is called from Trio once the outcome is known.

        Raises at once (LogClosed, TypeError, NoQuorum) when nothing can be sent.
        After `timeout_s` the callback gets OutcomeUnknown if the payload was
        sent, or NoQuorum / Overloaded if it never left this member.
        """
        check_proposal(self._closed, payload)
        if not self.has_quorum():
            raise NoQuorum(f"{self.address} reaches fewer than a majority of voters; nothing can commit "
                           "now, retry when the voters are back")
        waiter = Waiter(bytes(payload), on_done, trio.current_time() + timeout_s)
        heapq.heappush(self._deadlines, (waiter.deadline, next(self._counter), waiter))
        with self._group_lock:
            self._queue.append(waiter)
            if not self._holding:
                self._send_batches_locked()

    @contextlib.contextmanager
    def submitting_together(self) -> Iterator[None]:
        """Proposals submitted inside the block are packed into entries together when it ends.

        Otherwise the first proposal of a burst (a client frame holding many)
        would leave alone in an entry while the rest wait for it.
        """
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1
            if not self._holding:
                with self._group_lock:
                    self._send_batches_locked()

    def _expire(self, now: float) -> None:
        """Resolve proposals whose deadline passed; unsent ones are dropped from the queue."""
        while self._deadlines and self._deadlines[0][0] <= now:
            _deadline, _n, waiter = heapq.heappop(self._deadlines)
            with self._group_lock:
                # Decided under the lock: the tick thread may be packing this waiter right now.
                unsent = not waiter.sent and not waiter.resolved
                waiter.resolved = waiter.resolved or unsent
            if unsent:
                waiter.on_done(None, self._unsent_failure())
            else:
                waiter.resolve(None, OutcomeUnknown("no answer in time; the payload may still commit; retry "
                                                    "with the same payload (its event id makes the retry harmless)"))

    def _unsent_failure(self) -> LogError:
        if not self.has_quorum():
            return NoQuorum("the voters were lost while the proposal waited; it was not sent and did not "
                            "commit; retry when the voters are back")
        return Overloaded("the proposal waited behind other entries and was not sent; it did not commit; "
                          "retry, or propose less at once")

    def _send_batches_locked(self) -> None:
        """Pack waiting payloads into Raft entries while the in-flight limit allows; the group lock is held.

        Runs on Trio (a proposal arrives) and on the tick thread (an entry was
        answered), so the next entry leaves in the same tick that committed
        the previous one, without waiting for Trio to be scheduled.
        """
        if self._packing:
            return  # re-entered from put(): the loop below goes on by itself
        self._packing = True
        try:
            self._pack_entries_locked()
        finally:
            self._packing = False

    def _pack_entries_locked(self) -> None:
        settings = self._settings
        while self._queue and len(self._in_flight) < settings.max_entries_in_flight and not self._closed:
            # A further entry in flight only pays off when it carries a real
            # batch; otherwise the payloads wait for the next answer.
            if self._in_flight and len(self._queue) < settings.pipeline_min_payloads:
                return
            waiters: list[Waiter] = []
            size = 0
            while self._queue and len(waiters) < settings.max_batch_payloads:
                if waiters and size + len(self._queue[0].payload) > settings.max_batch_bytes:
                    break
                waiter = self._queue.popleft()
                if waiter.resolved:
                    continue
                waiter.sent = True
                waiters.append(waiter)
                size += len(waiter.payload)
            if not waiters:
                continue
            batch = Batch(waiters, pysyncobj_clock())
            self._in_flight.add(batch)
            self.entries_sent += 1
            self.payloads_sent += len(waiters)
            encoded = cbor2.dumps([w.payload for w in waiters])
            # Put under the lock so that entries enter pysyncobj's queue in the order they were packed.
            self._entries.put(encoded, callback=functools.partial(self._answered_on_tick, batch))

    def _answered_on_tick(self, batch: Batch, result, error) -> None:
        # Usually the tick thread; also Trio, re-entrantly from put(), when pysyncobj's queue is full.
        with self._group_lock:
            live = batch in self._in_flight
            self._in_flight.discard(batch)
            if live:
                self.entry_seconds += pysyncobj_clock() - batch.sent_at
                self._send_batches_locked()
        if live:
            self._to_trio(self._answered, batch, result, error)

    def _answered(self, batch: Batch, result, error) -> None:
        if error == FAIL_REASON.SUCCESS:
            for index, waiter in enumerate(batch.waiters):
                waiter.resolve(result + index)
        else:
            failure = self._failure(error)
            for waiter in batch.waiters:
                waiter.resolve(None, failure)

    def _failure(self, error) -> LogError:
        name = REASON_NAMES.get(error, str(error))
        if error in _UNKNOWN:
            return OutcomeUnknown(f"the leader changed before answering ({name}); the payload may still "
                                  "commit; retry with the same payload")
        if error in _NOT_COMMITTED:
            return NotLeader(self.leader())
        if error == FAIL_REASON.QUEUE_FULL:
            return Overloaded("pysyncobj's command queue is full; the payload did not commit; retry later")
        return OutcomeUnknown(f"pysyncobj answered {name}; retry with the same payload")

    async def _watch_stuck_entries(self) -> None:
        """Give up entries that never got an answer (no leader, a dropped forward) so new ones can flow."""
        while not self._closed:
            await trio.sleep(0.02)
            self._expire(trio.current_time())
            now = pysyncobj_clock()
            with self._group_lock:
                stuck = [b for b in self._in_flight if now - b.sent_at > self._settings.stuck_entry_s]
                self._in_flight.difference_update(stuck)
                self._send_batches_locked()
            for batch in stuck:
                for waiter in batch.waiters:
                    waiter.resolve(None, OutcomeUnknown("no answer from the leader; the payload may still "
                                                        "commit; retry with the same payload"))
