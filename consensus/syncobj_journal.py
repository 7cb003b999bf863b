"""Durability of pysyncobj's file journal, which it never syncs: its entries (msync), its term and vote (fsync)."""

from __future__ import annotations

import os

from pysyncobj.transport import TCPTransport


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


class DurableTransport(TCPTransport):
    """pysyncobj's TCP transport, syncing the member's journal before any message leaves (fsync=always)."""

    syncer: JournalSyncer | None = None

    def send(self, node, message) -> bool:
        if self.syncer is None:  # made on first use: SyncObj builds its journal before its transport
            self.syncer = JournalSyncer(self._syncObj._SyncObj__raftLog)
        self.syncer.sync()
        return super().send(node, message)
