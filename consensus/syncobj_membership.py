"""Leadership and membership on a pysyncobj member: who leads, quorum, held-back elections, voter changes, transfers."""

from __future__ import annotations


import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import trio
from pysyncobj import FAIL_REASON
from pysyncobj.monotonic import monotonic as pysyncobj_clock

from consensus.log import Leadership, MembershipError, OutcomeUnknown
from consensus.syncobj_raft import REASON_NAMES, RaftNode
from consensus.syncobj_settings import SyncObjSettings, node_address, raft_address

# Every part of the member logs under the one name it had before the split.
log = logging.getLogger("consensus.syncobj_log")


class Membership:
    """SyncObjLog's leadership side: the tick callback, quorum, the leadership stream and membership changes."""

    address: str
    _settings: SyncObjSettings
    _closed: bool
    _voter: bool
    _raft: RaftNode
    _last_leadership: tuple | None
    _heard_leader: bool
    _grace_until: float | None
    _last_tick: float | None
    _quorum_checked_at: float
    _quorum_cached: bool
    _leadership: Leadership
    _leadership_event: trio.Event

    # Provided by the group-commit side (consensus.syncobj_commit).
    _to_trio: Callable[..., None]
    _wake_trio: Callable[[], None]

    def _on_tick(self) -> None:
        # Runs after every tick, thousands of times a second under load: compare
        # the raw leader and term first, build names only on a change.
        raft = self._raft
        leader = raft._getLeader()
        key = (leader, raft.raftCurrentTerm)
        if key != self._last_leadership:
            self._last_leadership = key
            name = node_address(leader.id) if leader is not None else None
            self._to_trio(self._leadership_in_trio, Leadership(name, key[1]))
        if leader is not None:
            self._heard_leader = True
        now = pysyncobj_clock()
        self._hold_back_election(now)
        raft.keep_connections_alive(now, self._settings.keepalive_s)
        if self._settings.fsync == "batch":
            raft.sync_journal_at_most_every(now, self._settings.fsync_interval_s)
        self._wake_trio()  # for records queued by _to_trio_soon whose answer went elsewhere
        # Last, just before pysyncobj polls for answers: under fsync=always the
        # leader's entries sent in this tick reach its disk while the followers
        # write theirs, and Trio (woken above) runs meanwhile.
        raft.sync_sent_entries()

    def _hold_back_election(self, now: float) -> None:
        """Postpone this member's election deadline where pysyncobj would campaign too eagerly (no pre-vote).

        Two cases: during the start-up grace of a restarted member, until it has
        heard a leader (it may still be replaying its journal or waiting for the
        leader to reconnect); and right after the tick thread stalled (a long
        apply), so that the heartbeats queued meanwhile are read before the
        member decides the leader is gone (pitfalls P8 and P9).
        """
        if not self._voter:
            return
        stalled = self._last_tick is not None and now - self._last_tick > self._settings.raft_min_timeout_s
        self._last_tick = now
        if self._grace_until is None:
            self._grace_until = now + self._settings.startup_grace_s
        if stalled or (not self._heard_leader and now < self._grace_until):
            deadline = now + self._settings.raft_min_timeout_s
            if self._raft._SyncObj__raftElectionDeadline < deadline:
                self._raft._SyncObj__raftElectionDeadline = deadline

    def _leadership_in_trio(self, leadership: Leadership) -> None:
        log.info("term %d: leader %s", leadership.term, leadership.leader or "unknown")
        self._leadership = leadership
        self._leadership_event.set()
        self._leadership_event = trio.Event()

    def _voter_nodes(self) -> list:
        for _attempt in range(5):
            try:
                return list(self._raft.otherNodes)
            except RuntimeError:
                continue
        return []

    def has_quorum(self) -> bool:
        """True when this member reaches a majority of voters (counting itself if it votes).

        Cached for 10 ms: every proposal asks, and the answer only changes when
        a connection comes or goes.
        """
        if self._closed:
            return False
        now = trio.current_time()
        if now - self._quorum_checked_at < 0.01:
            return self._quorum_cached
        self._quorum_checked_at = now
        self._quorum_cached = self._count_quorum()
        return self._quorum_cached

    def _count_quorum(self) -> bool:
        others = self._voter_nodes()
        connected = sum(1 for n in others if self._raft.isNodeConnected(n)) + (1 if self._voter else 0)
        return connected * 2 > len(others) + (1 if self._voter else 0)

    def majority_heard_age(self) -> float:
        """(Leader only.) Seconds since a majority of the voters, counting this member, had last answered
        it; inf on a follower. A leader grants leases only while this is recent: one that was
        paused or cut off may not know it has been replaced."""
        if self._closed or not self._raft._isLeader():
            return float("inf")
        others = self._voter_nodes()
        needed = (len(others) + (1 if self._voter else 0)) // 2 + 1 - (1 if self._voter else 0)
        if needed <= 0:
            return 0.0
        for _attempt in range(5):
            try:
                answered = dict(self._raft._SyncObj__lastResponseTime)
                break
            except RuntimeError:      # changed by pysyncobj's thread while copied
                continue
        else:
            return float("inf")
        times = sorted((answered.get(node, float("-inf")) for node in others), reverse=True)
        return pysyncobj_clock() - times[needed - 1] if len(times) >= needed else float("inf")

    def leader(self) -> str | None:
        if self._closed:
            return None
        if self._raft._isLeader():
            return self.address
        leader = self._raft._getLeader()
        # pysyncobj may name a dead leader forever (P6): only trust a connected one.
        if leader is None or not self._raft.isNodeConnected(leader):
            return None
        return node_address(leader.id)

    def is_leader(self) -> bool:
        return not self._closed and self._raft._isLeader() and self._raft.hasQuorum

    def term(self) -> int:
        """The current Raft term as this member sees it."""
        return self._raft.raftCurrentTerm

    async def leadership_changes(self) -> AsyncIterator[Leadership]:
        last = None
        while not self._closed:
            event = self._leadership_event
            current = self._leadership
            if current != last:
                last = current
                yield current
            await event.wait()
        yield Leadership(None, self._leadership.term)

    # -- membership ------------------------------------------------------------------

    async def _admin(self, start: Callable[[Callable], None], what: str, timeout_s: float) -> None:
        done = trio.Event()
        outcome: list = []

        def on_tick(result, error) -> None:
            self._to_trio(lambda: (outcome.append(error), done.set()))

        start(on_tick)
        with trio.move_on_after(timeout_s):
            await done.wait()
        if not outcome:
            raise OutcomeUnknown(f"{what}: no answer within {timeout_s} s; check status() before retrying")
        if outcome[0] != FAIL_REASON.SUCCESS:
            raise MembershipError(f"{what} was refused ({REASON_NAMES.get(outcome[0], outcome[0])}); "
                                  "propose it on the leader, one change at a time, after the last one committed")

    async def add_voter(self, node: str, timeout_s: float = 10.0) -> None:
        """Add one voter (start it first, knowing every current voter); one change at a time."""
        await self._admin(lambda cb: self._raft.addNodeToCluster(raft_address(node), callback=cb),
                          f"adding voter {node}", timeout_s)

    async def remove_voter(self, node: str, timeout_s: float = 10.0) -> None:
        """Remove one voter; one change at a time."""
        await self._admin(lambda cb: self._raft.removeNodeFromCluster(raft_address(node), callback=cb),
                          f"removing voter {node}", timeout_s)

    async def transfer_leadership(self, target: str | None = None, attempts: int = 5,
                                  wait_s: float = 1.0) -> str:
        """Move leadership away from this member (to `target` if given), checking and retrying; returns the new leader."""
        for _attempt in range(attempts):
            if not self._raft._isLeader():
                current = self.leader()
                if current is not None and (target is None or current == target):
                    return current
                raise MembershipError(f"{self.address} is not the leader; ask {current or 'the leader'}")
            with contextlib.suppress(MembershipError, OutcomeUnknown):
                await self._admin(lambda cb: self._raft.transferLeadership(
                    raft_address(target) if target else None, callback=cb), "leadership transfer", wait_s)
            with trio.move_on_after(wait_s):
                while self._raft._isLeader() or self.leader() is None:
                    await trio.sleep(0.02)
            current = self.leader()
            if current is not None and current != self.address and (target is None or current == target):
                return current
            await trio.sleep(0.1)
        raise MembershipError(f"leadership did not move after {attempts} attempts; the target may lag "
                              "behind: pause writes and try again")
