"""The EventLog contract over pysyncobj: the production replicated log, one `SyncObjLog` per member.

`SyncObjLog` is put together from one side per concern, each in its own module
and all sharing the member's state, which `SyncObjLog.__init__` sets up:
consensus.syncobj_settings (settings, SyncObjConf, addresses),
consensus.syncobj_raft and consensus.syncobj_journal (pysyncobj with Cairn's
overrides, journal syncing), consensus.syncobj_commit (group commit and the
tick-thread hand-over to Trio), consensus.syncobj_history (apply, history
segments, tail, gaps), consensus.syncobj_snapshot (CBOR snapshots and the
checkpoint) and consensus.syncobj_membership (leadership, quorum, voters).
Reads come from consensus.read_side, shared with the other logs.

Trio never waits on pysyncobj (callbacks only) and the tick thread never
waits on Trio. This module is the import path for the rest of the tree: it
re-exports what callers use from the parts.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import trio
from pysyncobj.transport import TCPTransport

from consensus.history import HistoryStore
from consensus.log import Leadership, LogClosed, LogError, LogStatus, unwrap_single_exception
from consensus.read_side import StoredRecordsLog
from consensus.record import ChainHead, Record
from consensus.syncobj_commit import Batch, GroupCommit, ProposalCallback, Waiter
from consensus.syncobj_history import AppliedHistory, HistorySource
from consensus.syncobj_journal import DurableTransport, JournalSyncer
from consensus.syncobj_membership import Membership
from consensus.syncobj_raft import RaftNode, ReplicatedEntries
from consensus.syncobj_settings import SyncObjSettings, node_address, raft_address, syncobj_conf
from consensus.syncobj_snapshot import SNAPSHOT_FORMAT, SnapshotFiles

__all__ = ["SNAPSHOT_FORMAT", "HistorySource", "JournalSyncer", "ProposalCallback", "SyncObjLog", "SyncObjSettings",
           "node_address", "open_syncobj_log", "raft_address", "wait_for"]


class SyncObjLog(GroupCommit, Membership, AppliedHistory, SnapshotFiles, StoredRecordsLog):
    """One member of a pysyncobj cluster; build it inside `trio.run` on the main thread (use `open_syncobj_log`)."""

    def __init__(self, self_node: str, voters: list[str], data_dir: str | os.PathLike,
                 settings: SyncObjSettings, voter: bool = True,
                 history_source: HistorySource | None = None) -> None:
        self.address = self_node
        self._voter = voter
        self._settings = settings
        self._history_source = history_source
        self._data_dir = Path(data_dir)
        self._data_dir.mkdir(parents=True, exist_ok=True)
        self._token = trio.lowlevel.current_trio_token()
        self._post_lock = threading.Lock()
        self._posted: list = []
        self._drain_scheduled = False
        self._history = HistoryStore(self._data_dir / "history", fsync=settings.fsync)
        self._init_trio_side()
        # Tick-thread state: the chain head as the apply step last left it.
        self._chain = ChainHead()
        self._checkpoint: tuple[int, bytes] | None = self._load_checkpoint()
        self._last_leadership: tuple | None = None
        self._grace_until: float | None = None
        self._last_tick: float | None = None
        # Only a restart (an existing journal to replay) needs the election grace.
        self._heard_leader = not (self._data_dir / "raft.journal").exists()
        self._entries = ReplicatedEntries(self._apply_batch)
        peers = [raft_address(v) for v in voters if v != self_node]
        own = raft_address(self_node) if voter else None
        conf = syncobj_conf(settings, self._data_dir, own, self._write_snapshot, self._read_snapshot)
        durable = settings.fsync == "always"
        self._raft = RaftNode(own, peers, conf=conf, consumers=[self._entries],
                              transportClass=DurableTransport if durable else TCPTransport)
        self._raft.leader_loss_campaign_step_s = settings.leader_loss_campaign_step_s
        self._raft.addOnTickCallback(self._on_tick)
        try:
            if voter:
                self._raft.waitBinded()
        except Exception as error:
            self._raft.destroy()
            raise LogError(f"cannot listen on {own} for Raft: {error}; free the port or pick another "
                           "node address") from error

    def _init_trio_side(self) -> None:
        self._head = self._history.head
        self._tail: collections.deque[Record] = collections.deque(maxlen=self._settings.tail_records)
        self._changed = trio.Event()
        self._leadership = Leadership(None, 0)
        self._leadership_event = trio.Event()
        # The queue and the in-flight set are shared by Trio and the tick thread
        # (both pack entries); re-entrant because put() may answer at once.
        self._group_lock = threading.RLock()
        self._packing = False
        self._holding = 0  # Trio only: submitting_together() blocks open
        self._queue: collections.deque[Waiter] = collections.deque()
        self._in_flight: set[Batch] = set()
        self._deadlines: list = []
        self._quorum_checked_at = -1.0
        self._quorum_cached = False
        self._counter = itertools.count()
        self._closed = False
        self._gap_wakeup = trio.Event()
        self.history_error: str | None = None
        self.history_copies = 0
        # Group-commit counters, reported by status() and the benchmark.
        self.entries_sent = 0
        self.payloads_sent = 0
        self.entry_seconds = 0.0

    def status(self) -> LogStatus:
        raw = self._raft.getStatus()
        voters = sorted([node_address(n.id) for n in self._voter_nodes()] + ([self.address] if self._voter else []))
        extra = {
            "raft_state": raw["state"], "has_quorum": self.has_quorum(), "commit_idx": raw["commit_idx"],
            "last_applied": raw["last_applied"], "log_len": raw["log_len"], "history_seq": self._history.head.seq,
            "history_gap": self._history.gap, "history_error": self.history_error,
            "history_copies": self.history_copies, "entries_sent": self.entries_sent,
            "payloads_sent": self.payloads_sent, "entry_seconds": self.entry_seconds, "fsync": self._settings.fsync,
            "in_flight": len(self._in_flight), "queued": len(self._queue),
            "readonly_nodes_count": raw.get("readonly_nodes_count", 0),
            "connected_voters": sum(1 for n in self._voter_nodes() if self._raft.isNodeConnected(n)),
        }
        return LogStatus(self.address, self.leader(), raw["raft_term"], self._head.seq, voters=tuple(voters),
                         non_voters=() if self._voter else (self.address,), extra=extra)

    async def run_background(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The member's Trio tasks: stuck-entry watchdog, periodic history fsync, history gap filling."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_stuck_entries)
            nursery.start_soon(self._fill_history_gaps)
            nursery.start_soon(self._fsync_periodically)
            task_status.started()

    async def aclose(self) -> None:
        if self._closed:
            return
        with self._group_lock:
            self._closed = True
            waiting = list(self._queue) + [w for b in self._in_flight for w in b.waiters]
            self._queue.clear()
            self._in_flight.clear()
        for waiter in waiting:
            waiter.resolve(None, LogClosed("the log was closed while the proposal waited; it may have "
                                           "committed; retry with the same payload on another member"))
        self._wake()
        self._leadership_event.set()
        self._gap_wakeup.set()
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._raft.destroy_synchronous)
        self._history.close()


@contextlib.asynccontextmanager
async def open_syncobj_log(self_node: str, voters: list[str], data_dir: str | os.PathLike,
                           settings: SyncObjSettings, voter: bool = True,
                           history_source: HistorySource | None = None) -> AsyncIterator[SyncObjLog]:
    """Start a member and its background tasks; stop both on exit."""
    member = SyncObjLog(self_node, voters, data_dir, settings, voter=voter, history_source=history_source)
    try:
        with unwrap_single_exception():
            async with trio.open_nursery() as nursery:
                await nursery.start(member.run_background)
                try:
                    yield member
                finally:
                    nursery.cancel_scope.cancel()
    finally:
        await member.aclose()


async def wait_for(predicate: Callable[[], bool | Awaitable[bool]], timeout_s: float, what: str) -> None:
    """Poll `predicate` every 20 ms until it holds; raise TimeoutError naming `what` otherwise."""
    with trio.move_on_after(timeout_s):
        while True:
            value = predicate()
            if not isinstance(value, bool):
                value = await value
            if value:
                return
            await trio.sleep(0.02)
    raise TimeoutError(f"{what} did not happen within {timeout_s} s")
