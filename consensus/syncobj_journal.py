"""Durability of pysyncobj's file journal, which it never syncs: its entries (fdatasync), its term and vote (fsync)."""

from __future__ import annotations

import functools
import os
import sys

from pysyncobj.transport import TCPTransport

# The type of the no-op message members send each other to keep connections alive (RaftNode).
KEEPALIVE_TYPE = "cairn_keepalive"

# Messages that promise nothing about this member's disk: a leader's AppendEntries
# (Raft lets a leader write its own log while it replicates, as long as it counts
# itself toward a majority only once the entries are on its disk), the index a
# leader gives a forwarded proposal (the proposer still waits for the commit) and
# the keepalive. Every other message (a follower's "appended" answer, a vote
# request or grant) leaves only after the journal and the term are synced.
_SENT_BEFORE_SYNC = frozenset({"append_entries", "apply_command_response", KEEPALIVE_TYPE})


class JournalSyncer:
    """Makes pysyncobj's file journal durable: its entries (an fdatasync) and its term and vote (an fsync).

    pysyncobj writes its journal through an mmap and its term and vote to a
    small file, and never syncs either. `sync()` syncs whatever changed since
    its last call and says whether it did. Under `fsync=always` it runs before
    every message that promises durability (`DurableTransport`), so a
    follower's "appended" answer and a vote are never ahead of the disk, and
    before the leader counts itself toward a commit (`RaftNode`); under
    `batch` the tick thread runs it at most every 50 ms.
    """

    def __init__(self, journal) -> None:
        self._journal = journal
        _sync_mapping_without_the_gil(journal)
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


def _sync_mapping_without_the_gil(journal) -> None:
    """Make the journal's flush an fdatasync of its file instead of an msync of its mapping (Linux only).

    CPython's mmap.flush() calls msync with the GIL held, so every journal
    sync (about 4 ms on the project machine's disk) stopped the member's Trio
    thread too. On Linux msync(MS_SYNC) of a shared file mapping is an
    fdatasync of the mapped range, and the pages written through the mapping
    are the file's page cache, so an fdatasync of the file syncs the same
    pages, and os.fdatasync releases the GIL while it waits.
    """
    mapped = getattr(journal, "_FileJournal__journalFile", None)
    if sys.platform.startswith("linux") and mapped is not None and hasattr(mapped, "_ResizableFile__f"):
        mapped.flush = functools.partial(_fdatasync_mapped_file, mapped)


def _fdatasync_mapped_file(mapped) -> None:
    # Read at each call: pysyncobj reopens the file when it cannot grow the mapping in place.
    os.fdatasync(mapped._ResizableFile__f.fileno())


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


class DurableTransport(TCPTransport):
    """pysyncobj's TCP transport under fsync=always: no message promising durability leaves before the journal sync.

    A follower's "appended" answer and votes are sent only after the journal
    and the term are synced. A leader's AppendEntries leave first, so the
    leader's disk write overlaps the followers' (Raft section 10.2.1); RaftNode
    then syncs after the tick's sends and again before the next tick's
    commit count, the only place pysyncobj counts the leader toward a
    majority, so an entry is committed only once it is on the leader's disk
    as well as on the followers' that acknowledged it.
    """

    syncer: JournalSyncer | None = None

    def journal_syncer(self) -> JournalSyncer:
        if self.syncer is None:  # made on first use: SyncObj builds its journal before its transport
            self.syncer = JournalSyncer(self._syncObj._SyncObj__raftLog)
        return self.syncer

    def send(self, node, message) -> bool:
        syncer = self.journal_syncer()
        if message.get("type") not in _SENT_BEFORE_SYNC:
            syncer.sync()
        return super().send(node, message)
