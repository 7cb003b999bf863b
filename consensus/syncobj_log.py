"""The EventLog contract over pysyncobj: the production replicated log, with group commit.

One `SyncObjLog` is one member. Payloads proposed while an entry is in flight
are packed into one Raft entry (a canonical CBOR array of byte strings), so
Raft, pickle and encryption costs are paid per entry, not per payload; on
apply every payload still becomes its own record with its own seq and hash.
The apply step runs on pysyncobj's tick thread: it extends the hash chain,
appends the records to this member's history segments (consensus.history),
and hands them to Trio with `TrioToken.run_sync_soon`. Trio never waits on
pysyncobj (callbacks only) and the tick thread never waits on Trio.

Members are named by their node address HOST:PORT (the API port, DESIGN.md);
pysyncobj runs on PORT+1. Settings that are unsafe by default in pysyncobj
(no password, bind to every interface, batch mode, pickle snapshots, 30 s
leader fallback) are never left at their defaults here.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import heapq
import itertools
import logging
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cbor2
import trio
from pysyncobj import FAIL_REASON, HAS_CRYPTO, SyncObj, SyncObjConf, SyncObjConsumer, replicated
from pysyncobj.monotonic import monotonic as pysyncobj_clock
from pysyncobj.node import TCPNode
from pysyncobj.transport import TCPTransport

from consensus.history import HistoryStore
from consensus.log import (EventLog, Leadership, LogClosed, LogError, LogStatus, MembershipError, NoQuorum,
                           NotLeader, OutcomeUnknown, Overloaded, unwrap_single_exception)
from consensus.record import ChainHead, Record, next_record

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = 1
_UNKNOWN = (FAIL_REASON.LEADER_CHANGED, FAIL_REASON.UNKNOWN_OUTCOME)
_NOT_COMMITTED = (FAIL_REASON.MISSING_LEADER, FAIL_REASON.NOT_LEADER, FAIL_REASON.DISCARDED)
_REASON_NAMES = {value: name for name, value in vars(FAIL_REASON).items() if name.isupper()}

# Fetches the committed records first_seq..last_seq from some peer, in order.
HistorySource = Callable[[int, int], AsyncIterator[Record]]


def raft_address(node: str) -> str:
    """pysyncobj's address for a node: the same host, the API port plus one."""
    host, _, port = node.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"node address {node!r} is not HOST:PORT; write it like 127.0.0.1:7000")
    return f"{host}:{int(port) + 1}"


def node_address(raft: str) -> str:
    """The node address (API port) behind a pysyncobj address."""
    host, _, port = raft.rpartition(":")
    return f"{host}:{int(port) - 1}"


@dataclass(frozen=True)
class SyncObjSettings:
    """Every pysyncobj knob Cairn sets, with safe values; only `password` has no default."""

    password: str
    raft_min_timeout_s: float = 0.3
    raft_max_timeout_s: float = 0.6
    append_entries_period_s: float = 0.05
    leader_fallback_timeout_s: float = 1.0
    connection_retry_time_s: float = 1.0
    # Compaction keeps the journal short so a restart replays little (pitfall P8);
    # the full history lives in the segment files.
    log_compaction_min_entries: int = 2000
    log_compaction_min_time_s: float = 60.0
    fsync: str = "batch"
    fsync_interval_s: float = 0.05
    max_batch_payloads: int = 4096
    max_batch_bytes: int = 4 << 20
    max_entries_in_flight: int = 1
    pipeline_min_payloads: int = 8
    # An entry with no answer after this long is given up (its payloads report
    # "outcome unknown") so that new proposals are not held behind it.
    stuck_entry_s: float = 10.0
    # After a start, elections are held back until a leader is heard or this
    # long has passed since the first connection, so that a member that
    # replayed a long journal does not depose a healthy leader (P8, P9).
    startup_grace_s: float = 2.5
    # When a follower sees its connection to the leader close (the leader's
    # process died), the remaining voters campaign in address order this far
    # apart instead of after their election timeouts; 0 turns this off.
    leader_loss_campaign_step_s: float = 0.1
    # Every member sends each other voter a no-op this often, so that no
    # connection goes quiet for pysyncobj's connection timeout (3.5 s).
    keepalive_s: float = 1.0
    tail_records: int = 10_000

    def __post_init__(self) -> None:
        if not self.password:
            raise ValueError("a cluster secret is required: without it any TCP peer can run code on this node "
                             "through pickle; pass the contents of the cluster secret file as password")
        if not HAS_CRYPTO:
            raise LogError("pysyncobj encrypts with the 'cryptography' package, which is not installed; "
                           "install it (pip install 'cryptography>=41') before starting a member")


def _conf(settings: SyncObjSettings, data_dir: Path, bind: str | None, serializer, deserializer) -> SyncObjConf:
    return SyncObjConf(
        password=settings.password,
        bindAddress=bind,
        appendEntriesUseBatch=False,
        appendEntriesPeriod=settings.append_entries_period_s,
        raftMinTimeout=settings.raft_min_timeout_s,
        raftMaxTimeout=settings.raft_max_timeout_s,
        leaderFallbackTimeout=settings.leader_fallback_timeout_s,
        connectionRetryTime=settings.connection_retry_time_s,
        connectionTimeout=max(3.5, settings.raft_max_timeout_s),  # pysyncobj's default, or what validate() asks
        journalFile=str(data_dir / "raft.journal"),
        fullDumpFile=str(data_dir / "raft.snapshot"),
        serializer=serializer,
        deserializer=deserializer,
        useFork=False,
        dynamicMembershipChange=True,
        logCompactionMinEntries=settings.log_compaction_min_entries,
        logCompactionMinTime=settings.log_compaction_min_time_s,
        maxBindRetries=5,
        bindRetryTime=0.5,
    )


_KEEPALIVE = {"type": "cairn_keepalive"}


class JournalSyncer:
    """Makes pysyncobj's file journal durable: its entries (an msync) and its term and vote (an fsync).

    pysyncobj writes its journal through an mmap and its term and vote to a
    small file, and never syncs either. `sync()` syncs whatever changed since
    its last call and says whether it did. Under `fsync=always` it runs before
    every message a member sends (`_DurableTransport`), so a follower's
    "appended" answer, a leader's AppendEntries and a vote are never ahead of
    the disk; under `batch` the tick thread runs it at most every 50 ms.
    """

    def __init__(self, journal) -> None:
        self._journal = journal
        # Nothing is known to be on disk yet: the first call syncs both.
        self._entries_key: tuple | None = None
        self._term_key: tuple | None = None
        self.syncs = 0

    def _entries_now(self) -> tuple | None:
        journal = self._journal
        offset = getattr(journal, "_FileJournal__currentOffset", None)
        if offset is None:
            return None  # an in-memory journal: nothing to sync
        return offset, len(journal), journal[-1][1:] if len(journal) else None

    def _term_now(self) -> tuple:
        return self._journal.getCurrentTerm(), self._journal.getVotedForNodeId()

    def sync(self) -> bool:
        entries, term = self._entries_now(), self._term_now()
        synced = False
        if entries is not None and entries != self._entries_key:
            self._journal.flush()
            self._entries_key = entries
            synced = True
        if term != self._term_key and entries is not None:
            _fsync_path(self._journal._FileJournal__metaStorer.getPath())
            self._term_key = term
            synced = True
        self.syncs += synced
        return synced


def _fsync_path(path: str) -> None:
    """fsync a file and the folder that names it (the file was just renamed into place); no file, nothing to do."""
    for target, flags in ((path, os.O_RDONLY), (os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)):
        try:
            fd = os.open(target, flags)
        except FileNotFoundError:
            return  # pysyncobj writes its term and vote file only once a term is set
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _DurableTransport(TCPTransport):
    """pysyncobj's TCP transport, syncing the member's journal before any message leaves (fsync=always)."""

    syncer: JournalSyncer | None = None

    def send(self, node, message) -> bool:
        if self.syncer is None:  # made on first use: SyncObj builds its journal before its transport
            self.syncer = JournalSyncer(self._syncObj._SyncObj__raftLog)
        self.syncer.sync()
        return super().send(node, message)


class _RaftNode(SyncObj):
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


class _Entries(SyncObjConsumer):
    """The replicated part: one method that applies a packed batch of payloads."""

    def __init__(self, apply_batch: Callable[[bytes], int]) -> None:
        self._apply_batch = apply_batch
        super().__init__()

    @replicated
    def put(self, batch: bytes) -> int:
        # Runs on every member's tick thread, in commit order; must not block.
        return self._apply_batch(batch)


# Called once with (seq, None) when the payload committed, or (None, error).
ProposalCallback = Callable[[int | None, LogError | None], None]


@dataclass(eq=False)
class _Waiter:
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
class _Batch:
    """One Raft entry in flight and the proposers waiting on it."""

    waiters: list[_Waiter]
    sent_at: float


class SyncObjLog(EventLog):
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
        self._entries = _Entries(self._apply_batch)
        peers = [raft_address(v) for v in voters if v != self_node]
        own = raft_address(self_node) if voter else None
        conf = _conf(settings, self._data_dir, own, self._write_snapshot, self._read_snapshot)
        durable = settings.fsync == "always"
        self._raft = _RaftNode(own, peers, conf=conf, consumers=[self._entries],
                               transportClass=_DurableTransport if durable else TCPTransport)
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
        self._queue: collections.deque[_Waiter] = collections.deque()
        self._in_flight: set[_Batch] = set()
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

    def _apply_batch(self, batch: bytes) -> int:
        """Extend the chain by a packed batch; never raises, because pysyncobj would re-apply the entry."""
        try:
            payloads = cbor2.loads(batch)
        except Exception:
            log.critical("a committed entry is not a CBOR array of payloads; it is skipped on every member")
            return self._chain.seq + 1
        head: ChainHead | Record = self._chain
        first = head.seq + 1
        records = []
        for payload in payloads:
            head = next_record(head, payload)
            records.append(head)
        if not records:
            return first
        self._chain = ChainHead(head.seq, head.hash)
        self._write_history(records)
        if self._in_flight:
            # The answer to this member's own entry follows at once and wakes
            # Trio for both: one wake-up (and one GIL hand-over) per entry.
            self._to_trio_soon(self._committed_in_trio, records)
        else:
            self._to_trio(self._committed_in_trio, records)
        return first

    def _write_history(self, records: list[Record]) -> None:
        if self.history_error is not None:
            return
        try:
            self._history.append(records)
            if self._settings.fsync == "always":
                self._history.sync()
        except Exception as error:
            # The chain goes on (the other members agree on it); this member's
            # history stops and says so in status() until it is rebuilt.
            self.history_error = f"history writing stopped at seq {records[0].seq}: {error}"
            log.critical(self.history_error)

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

    # -- snapshots (tick thread) --------------------------------------------------

    def _write_snapshot(self, file_name: str, data: tuple) -> None:
        last_entry, before_last, cluster = data
        durable = self._settings.fsync == "always"
        if durable:
            # Under `always` the snapshot is never ahead of the durable history.
            # Under `batch` a power loss may leave it ahead; the member then
            # copies the missing records from a peer like any lagging member.
            self._history.sync()
        document = {
            "format": SNAPSHOT_FORMAT,
            "chain": [self._chain.seq, self._chain.hash],
            "entries": [list(last_entry), list(before_last)],
            "cluster": sorted(node.id for node in cluster if node is not None),
            "checkpoint": list(self._checkpoint) if self._checkpoint else None,
        }
        with open(file_name, "wb") as f:
            cbor2.dump(document, f, canonical=True)
            if durable:
                f.flush()
                os.fsync(f.fileno())

    def _read_snapshot(self, file_name: str) -> tuple:
        with open(file_name, "rb") as f:
            document = cbor2.load(f)
        if document.get("format") != SNAPSHOT_FORMAT:
            raise LogError(f"snapshot {file_name} has format {document.get('format')!r}, expected "
                           f"{SNAPSHOT_FORMAT}; this build cannot read it")
        seq, digest = document["chain"]
        self._chain = ChainHead(seq, digest)
        if document.get("checkpoint"):
            offered = tuple(document["checkpoint"])
            if self._checkpoint is None or offered[0] > self._checkpoint[0]:
                self._checkpoint = (offered[0], offered[1])
        self._history.note_snapshot(self._chain)
        self._to_trio(self._snapshot_in_trio, self._chain)
        cluster = {TCPNode(address) for address in document["cluster"]}
        last_entry, before_last = (tuple(entry) for entry in document["entries"])
        return last_entry, before_last, cluster

    # -- Trio side: notifications ------------------------------------------------------

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _committed_in_trio(self, records: list[Record]) -> None:
        if records[-1].seq <= self._head.seq:
            return
        fresh = records if records[0].seq > self._head.seq else [r for r in records if r.seq > self._head.seq]
        if self._tail and fresh[0].seq != self._tail[-1].seq + 1:
            self._tail.clear()
        self._tail.extend(fresh)
        self._head = ChainHead(fresh[-1].seq, fresh[-1].hash)
        self._wake()

    def _snapshot_in_trio(self, head: ChainHead) -> None:
        if head.seq > self._head.seq:
            self._head = head
            self._tail.clear()
            self._wake()
        self._gap_wakeup.set()

    def _leadership_in_trio(self, leadership: Leadership) -> None:
        log.info("term %d: leader %s", leadership.term, leadership.leader or "unknown")
        self._leadership = leadership
        self._leadership_event.set()
        self._leadership_event = trio.Event()

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
        if self._closed:
            raise LogClosed("the log is closed")
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise TypeError(f"a payload is bytes, not {type(payload).__name__}; encode the event first")
        if not self.has_quorum():
            raise NoQuorum(f"{self.address} reaches fewer than a majority of voters; nothing can commit "
                           "now, retry when the voters are back")
        waiter = _Waiter(bytes(payload), on_done, trio.current_time() + timeout_s)
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
            waiters: list[_Waiter] = []
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
            batch = _Batch(waiters, pysyncobj_clock())
            self._in_flight.add(batch)
            self.entries_sent += 1
            self.payloads_sent += len(waiters)
            encoded = cbor2.dumps([w.payload for w in waiters])
            # Put under the lock so that entries enter pysyncobj's queue in the order they were packed.
            self._entries.put(encoded, callback=functools.partial(self._answered_on_tick, batch))

    def _answered_on_tick(self, batch: _Batch, result, error) -> None:
        # Usually the tick thread; also Trio, re-entrantly from put(), when pysyncobj's queue is full.
        with self._group_lock:
            live = batch in self._in_flight
            self._in_flight.discard(batch)
            if live:
                self.entry_seconds += pysyncobj_clock() - batch.sent_at
                self._send_batches_locked()
        if live:
            self._to_trio(self._answered, batch, result, error)

    def _answered(self, batch: _Batch, result, error) -> None:
        if error == FAIL_REASON.SUCCESS:
            for index, waiter in enumerate(batch.waiters):
                waiter.resolve(result + index)
        else:
            failure = self._failure(error)
            for waiter in batch.waiters:
                waiter.resolve(None, failure)

    def _failure(self, error) -> LogError:
        name = _REASON_NAMES.get(error, str(error))
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

    # -- Trio side: reading --------------------------------------------------------------

    def head(self) -> ChainHead:
        return self._head

    def read(self, first_seq: int = 1, last_seq: int | None = None) -> Iterator[Record]:
        stop = self._head.seq if last_seq is None else min(last_seq, self._head.seq)
        position = max(first_seq, 1) - 1
        tail_first = self._tail[0].seq if self._tail else self._head.seq + 1
        if position + 1 < tail_first:
            for record in self._history.read(position + 1, min(stop, tail_first - 1)):
                position = record.seq
                yield record
            if position + 1 < tail_first:
                return
        for record in list(self._tail):
            if record.seq > stop:
                return
            if record.seq > position:
                position = record.seq
                yield record

    async def committed(self, after_seq: int = 0) -> AsyncIterator[Record]:
        position = after_seq
        while True:
            changed = self._changed
            if self._closed:
                raise LogClosed("the log is closed")
            progressed = False
            for record in self.read(position + 1, min(self._head.seq, position + 1000)):
                position = record.seq
                progressed = True
                yield record
            if not progressed:
                await changed.wait()

    # -- Trio side: leadership and status -------------------------------------------------

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
            raise MembershipError(f"{what} was refused ({_REASON_NAMES.get(outcome[0], outcome[0])}); "
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

    # -- snapshots offered by the application ------------------------------------------------

    def _load_checkpoint(self) -> tuple[int, bytes] | None:
        path = self._data_dir / "checkpoint.cbor"
        if not path.exists():
            return None
        seq, data = cbor2.loads(path.read_bytes())
        return seq, data

    def set_snapshot(self, seq: int, data: bytes) -> None:
        path = self._data_dir / "checkpoint.cbor"
        temporary = path.with_suffix(".tmp")
        temporary.write_bytes(cbor2.dumps([seq, bytes(data)], canonical=True))
        os.replace(temporary, path)
        self._checkpoint = (seq, bytes(data))

    def latest_snapshot(self) -> tuple[int, bytes] | None:
        return self._checkpoint

    # -- history gap and background work ------------------------------------------------------

    async def _fill_history_gaps(self) -> None:
        """Copy the range missing behind an installed snapshot from a peer, checked against the chain."""
        while not self._closed:
            gap = self._history.gap
            if gap is None or self._history_source is None:
                wakeup = self._gap_wakeup = trio.Event()
                if self._history.gap is None or self._history_source is None:
                    await wakeup.wait()
                continue
            first, last = gap
            try:
                records = [record async for record in self._history_source(first, last)]
                await trio.to_thread.run_sync(self._history.fill_gap, records)
                log.info("copied history %d..%d from a peer", first, last)
                self.history_copies += 1
                self._wake()
            except Exception as error:
                log.warning("could not copy history %d..%d yet (%s); retrying", first, last, error)
                await trio.sleep(1.0)

    async def _fsync_periodically(self) -> None:
        while not self._closed:
            await trio.sleep(self._settings.fsync_interval_s)
            await trio.to_thread.run_sync(self._history.sync)

    async def run_background(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The member's Trio tasks: stuck-entry watchdog, batch fsync, history gap filling."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_stuck_entries)
            nursery.start_soon(self._fill_history_gaps)
            if self._settings.fsync == "batch":
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
