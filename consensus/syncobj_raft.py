"""pysyncobj's SyncObj with Cairn's overrides of its name-mangled internals, and the one replicated method.

The overrides reach into pysyncobj's private state (`_SyncObj__...` names), so
they hold only for the pysyncobj release pinned in pyproject.toml; check each
of them when that pin moves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConsumer, replicated
from pysyncobj.monotonic import monotonic as pysyncobj_clock

from consensus.syncobj_journal import KEEPALIVE_TYPE, DurableTransport, JournalSyncer
from consensus.syncobj_settings import node_address

# Every part of the member logs under the one name it had before the split.
log = logging.getLogger("consensus.syncobj_log")

# pysyncobj's failure reasons by name, for messages.
REASON_NAMES = {value: name for name, value in vars(FAIL_REASON).items() if name.isupper()}

_KEEPALIVE = {"type": KEEPALIVE_TYPE}


class RaftNode(SyncObj):
    """pysyncobj's SyncObj with Cairn's changes: fewer AppendEntries, early campaigns, keepalives, journal syncs.

    Each change is described at its method. Fewer AppendEntries: in
    non-batch mode pysyncobj tells the followers about a new commit index
    with an AppendEntries of its own right after applying, and every follower
    answers it: half the Raft messages (each pickled, compressed and
    encrypted) of a busy leader. When a command is already queued, the
    AppendEntries that carries it goes out later in the same tick with the
    same commit index, so the separate one is skipped. With nothing queued
    it is still sent at once, so followers (and proposals forwarded through
    them) hear of commits as before.
    """

    def _onTick(self, timeToWait=0.0) -> None:  # overrides pysyncobj's tick (pin <0.4)
        # Under fsync=always a leader's AppendEntries leave before its own
        # journal sync (DurableTransport); the tick starts with pysyncobj's
        # commit count, which counts the leader itself, so its entries must be
        # on its disk first. Usually sync_sent_entries (after the previous
        # tick's sends) did it already; this catches sends made while polling.
        self.sync_sent_entries()
        SyncObj._onTick(self, timeToWait)

    def sync_sent_entries(self) -> None:
        """Under fsync=always: sync the journal if entries went out unsynced (tick thread; no-op otherwise)."""
        transport = self._SyncObj__transport
        if isinstance(transport, DurableTransport):
            transport.journal_syncer().sync()

    def _SyncObj__applyLogEntries(self) -> bool:  # overrides the name-mangled private method (pin <0.4)
        send_now = SyncObj._SyncObj__applyLogEntries(self)
        return send_now and not self._commands_queued()

    def _SyncObj__onMessageReceived(self, node, message) -> None:  # overrides a name-mangled private method
        # pysyncobj moves a follower's next index back to whatever a success
        # answer says, so an answer to an older AppendEntries (the slower
        # follower's, arriving after the next entry went out) makes the leader
        # send entries again that the follower already has; it then truncates
        # and re-appends applied entries ("truncating already-applied log
        # entries"). A success answer only proves the follower holds the log
        # up to that point, so it may move the next index forward, never back;
        # a refusal (reset) still moves it back as before.
        if message.get("type") != "next_node_idx" or not message.get("success") or message.get("reset"):
            SyncObj._SyncObj__onMessageReceived(self, node, message)
            return
        next_index = self._SyncObj__raftNextIndex
        sent_up_to = next_index.get(node)
        SyncObj._SyncObj__onMessageReceived(self, node, message)
        if sent_up_to is not None and node in next_index and next_index[node] < sent_up_to:
            next_index[node] = sent_up_to

    # Seconds between the early campaigns of the remaining voters (see below).
    leader_loss_campaign_step_s = 0.1

    def _SyncObj__onNodeDisconnected(self, node) -> None:  # overrides a name-mangled private method
        # A leader whose process died (crash, kill -9, OOM, restart) closes its
        # sockets and the followers see it at once; only a silent loss (a dead
        # machine, a partition) needs the full election timeout. The remaining
        # voters campaign in address order, one step apart: the first at once,
        # the next one step later if no vote request reached it meanwhile. All
        # at once would split the vote (the close wakes them together). A
        # leader that is still alive is disrupted no more than before: without
        # the connection it sends this follower no heartbeats, so the follower
        # would campaign after its timeout anyway (reconnecting takes 1 s).
        SyncObj._SyncObj__onNodeDisconnected(self, node)
        own = self._SyncObj__selfNode
        if node is None or own is None or node != self._SyncObj__raftLeader or not self.leader_loss_campaign_step_s:
            return
        remaining = sorted([own.id] + [other.id for other in self._SyncObj__otherNodes if other != node])
        delay = self.leader_loss_campaign_step_s * remaining.index(own.id)
        log.info("connection to leader %s closed; campaigning in %.2f s unless a vote request comes first",
                 node_address(node.id), delay)
        deadline = pysyncobj_clock() + delay
        if deadline < self._SyncObj__raftElectionDeadline:
            self._SyncObj__raftElectionDeadline = deadline

    def keep_connections_alive(self, now: float, interval_s: float) -> None:
        """Send every other voter a no-op message at least every `interval_s` (tick thread).

        pysyncobj drops a connection on which nothing was read for
        connectionTimeout, and it checks only when it next sends. Two followers
        say nothing to each other while a leader is up, so after a few quiet
        seconds the first vote request of an election went into a connection
        found dead at that moment and was lost, and the election waited for a
        reconnect and a second round (0.4-0.6 s instead of 20-30 ms). A message
        type pysyncobj does not know is read and ignored.
        """
        if now - self._last_keepalive < interval_s:
            return
        self._last_keepalive = now
        transport = self._SyncObj__transport
        for node in list(self._SyncObj__otherNodes):
            transport.send(node, _KEEPALIVE)

    _last_keepalive = 0.0

    def sync_journal_at_most_every(self, now: float, interval_s: float) -> None:
        """Under fsync=batch: sync the journal, if it changed, at most every `interval_s` (tick thread)."""
        if now - self._last_journal_sync < interval_s:
            return
        self._last_journal_sync = now
        if self.journal_syncer is None:
            self.journal_syncer = JournalSyncer(self._SyncObj__raftLog)
        self.journal_syncer.sync()

    _last_journal_sync = 0.0
    journal_syncer: JournalSyncer | None = None

    def _commands_queued(self) -> bool:
        queue = getattr(getattr(self, "_SyncObj__commandsQueue", None), "_FastQueue__queue", None)
        return bool(queue)


class ReplicatedEntries(SyncObjConsumer):
    """The replicated part: one method that applies a packed batch of payloads."""

    def __init__(self, apply_batch: Callable[[bytes], int]) -> None:
        self._apply_batch = apply_batch
        super().__init__()

    @replicated
    def put(self, batch: bytes) -> int:
        # Runs on every member's tick thread, in commit order; must not block.
        return self._apply_batch(batch)
