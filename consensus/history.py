"""Each member's durable history: committed records in append-only segment files.

pysyncobj compacts its journal away, so the full ordered history lives here, in
the record format of consensus.record. Segments are named by the seq of their
first record; a full segment is sealed and a new one started. Records are
appended by the Raft tick thread in commit order; readers (the Trio side, the
history-copy server) read finished frames only, up to the head published after
each flush. A snapshot may move the chain past what this member has on disk (a
member that fell behind or lost a tail): the records after such a gap wait in
memory until the missing range has been copied from a peer and checked against
the chain.
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from consensus.record import ChainHead, Record, RecordError, RecordReader, RecordWriter, check_link

log = logging.getLogger(__name__)

FSYNC_POLICIES = ("always", "batch")
SEGMENT_SUFFIX = ".seg"
_DEFAULT_SEGMENT_BYTES = 32 << 20
_INDEX_EVERY = 256
# A frame is a 10-byte header plus seq, prev_hash and hash (72 bytes) before the payload.
_FRAME_OVERHEAD = 10 + 72


class HistoryDiverged(RecordError):
    """The history on disk and the committed chain disagree; this member must be rebuilt from a peer."""


class HistoryStore:
    """Append-only segment files holding every committed record of one member."""

    def __init__(self, directory: str | os.PathLike, fsync: str = "batch",
                 segment_bytes: int = _DEFAULT_SEGMENT_BYTES) -> None:
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"unknown fsync policy {fsync!r}; use one of {', '.join(FSYNC_POLICIES)}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._segments: list[tuple[int, Path]] = []
        self._writer: RecordWriter | None = None
        self._written_bytes = 0
        self._dirty = False
        # Records committed after a gap (a snapshot moved the chain past this
        # member's history); they are written once the gap has been filled.
        self._pending: list[Record] = []
        self._gap_end: ChainHead | None = None
        # Per segment, every _INDEX_EVERY-th record: (seq, byte offset, prev_hash),
        # so a read starts near its first seq instead of at the segment start.
        self._index: dict[Path, list[tuple[int, int, bytes]]] = {}
        self.head: ChainHead = ChainHead()
        self._open()

    # -- opening -------------------------------------------------------------

    def _open(self) -> None:
        paths = sorted(self.directory.glob("*" + SEGMENT_SUFFIX))
        self._segments = [(int(p.name[: -len(SEGMENT_SUFFIX)]), p) for p in paths]
        while self._segments:
            first_seq, path = self._segments[-1]
            head, end = self._scan(first_seq, path)
            if head is None:
                log.warning("history segment %s holds no complete record; removing it", path)
                path.unlink()
                self._segments.pop()
                continue
            if end != path.stat().st_size:
                # Drops a torn final frame (a crash mid-write) or the seal of a
                # segment whose successor never received a record.
                with open(path, "r+b") as f:
                    f.truncate(end)
            self.head = head
            self._writer = RecordWriter(path, head=head)
            self._written_bytes = end
            return

    def _scan(self, first_seq: int, path: Path) -> tuple[ChainHead | None, int]:
        """The last intact record of a segment and the byte offset just after it."""
        last: Record | None = None
        end = 0
        index: list[tuple[int, int, bytes]] = []
        self._index[path] = index
        try:
            for offset, record in RecordReader(path, verify_chain=True).with_offsets():
                if last is None and record.seq != first_seq:
                    raise HistoryDiverged(record.seq, f"segment {path.name} starts at seq {record.seq}; "
                                          "move the history directory away and let the member copy it from a peer")
                if (record.seq - first_seq) % _INDEX_EVERY == 0:
                    index.append((record.seq, offset, record.prev_hash))
                last = record
                end = offset + _FRAME_OVERHEAD + len(record.payload)
        except HistoryDiverged:
            raise
        except RecordError as error:
            log.warning("history segment %s is damaged after byte %d (%s); cutting it there", path, end, error)
        return (ChainHead(last.seq, last.hash) if last else None), end

    # -- appending (tick thread) -----------------------------------------------

    @property
    def gap(self) -> tuple[int, int] | None:
        """The seq range (first, last) this member misses behind an installed snapshot, if any."""
        with self._lock:
            if self._gap_end is None:
                return None
            return self.head.seq + 1, self._gap_end.seq

    @property
    def gap_end(self) -> ChainHead | None:
        """Where the missing range must end (the installed snapshot's head)."""
        with self._lock:
            return self._gap_end

    def append(self, records: Iterable[Record]) -> None:
        """Write committed records in order; ones already on disk are checked and skipped."""
        with self._lock:
            for record in records:
                self._append_locked(record)
            self._flush_locked()

    def _append_locked(self, record: Record) -> None:
        if record.seq <= self.head.seq:
            if record.seq == self.head.seq and record.hash != self.head.hash:
                raise HistoryDiverged(record.seq, "the committed chain differs from this member's history; "
                                      "move the history directory away and let the member copy it from a peer")
            return
        if self._gap_end is not None:
            expected = self._pending[-1].seq + 1 if self._pending else self._gap_end.seq + 1
            if record.seq < expected:
                return
            if record.seq != expected:
                raise RecordError(expected, f"expected seq {expected} after the snapshot, got {record.seq}")
            self._pending.append(record)
            return
        if record.seq != self.head.seq + 1:
            raise RecordError(self.head.seq + 1, f"expected seq {self.head.seq + 1}, got {record.seq}")
        self._write_locked(record)

    def _write_locked(self, record: Record) -> None:
        if self._writer is None or self._written_bytes >= self.segment_bytes:
            if self._writer is not None:
                self._writer.seal()
            path = self.directory / f"{record.seq:020d}{SEGMENT_SUFFIX}"
            self._writer = RecordWriter(path, head=self.head if self.head.seq else None)
            self._segments.append((record.seq, path))
            self._written_bytes = 0
        if record.prev_hash != self.head.hash:
            raise RecordError(record.seq, "prev_hash does not match the hash of the record before it")
        # The record's own hash was computed by next_record when the chain was
        # extended; checking the link is enough here, and skipping
        # RecordWriter.append's recomputation halves the hashing per record.
        writer = self._writer
        if (record.seq - self._segments[-1][0]) % _INDEX_EVERY == 0:
            self._index.setdefault(writer.path, []).append((record.seq, self._written_bytes, record.prev_hash))
        writer.append_linked(record)
        self._written_bytes += _FRAME_OVERHEAD + len(record.payload)
        self.head = ChainHead(record.seq, record.hash)
        self._dirty = True

    def _flush_locked(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def note_snapshot(self, head: ChainHead) -> None:
        """The committed chain jumped to `head` (a snapshot was installed); open a gap if history is behind."""
        with self._lock:
            if head.seq > self.head.seq and (self._gap_end is None or head.seq > self._gap_end.seq):
                self._gap_end = head
                self._pending = []

    def fill_gap(self, records: Iterable[Record]) -> None:
        """Write a copied range that closes the gap: it must chain on the history and end at the snapshot head."""
        with self._lock:
            last: ChainHead | Record = self.head
            target = self._gap_end
        if target is None:
            return
        checked: list[Record] = []
        for record in records:
            if record.seq <= last.seq:
                continue
            check_link(last, record)
            checked.append(record)
            last = record
            if record.seq == target.seq:
                break
        if last.seq != target.seq or last.hash != target.hash:
            raise RecordError(last.seq + 1, f"the copied history ends at seq {last.seq}, not at the "
                              f"snapshot's seq {target.seq} with the snapshot's hash; try another peer")
        with self._lock:
            for record in checked:
                self._write_locked(record)
            pending, self._pending, self._gap_end = self._pending, [], None
            for record in pending:
                self._append_locked(record)
            self._flush_locked()

    # -- durability --------------------------------------------------------------

    def sync(self) -> None:
        """fsync the open segment (and the directory when a segment was created)."""
        with self._lock:
            if self._writer is None or not self._dirty:
                return
            self._writer.flush()
            descriptor = os.dup(self._writer.fileno())
            self._dirty = False
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def sync_directory(self) -> None:
        """fsync the directory so new segment names survive a power loss."""
        descriptor = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    # -- reading ---------------------------------------------------------------

    def read(self, first_seq: int = 1, last_seq: int | None = None) -> Iterator[Record]:
        """Records first_seq..last_seq (inclusive) that are on disk, in order, CRC- and chain-checked."""
        with self._lock:
            stop = self.head.seq if last_seq is None else min(last_seq, self.head.seq)
            segments = list(self._segments)
        first_seq = max(first_seq, 1)
        if first_seq > stop:
            return
        for number, (segment_first, path) in enumerate(segments):
            next_first = segments[number + 1][0] if number + 1 < len(segments) else None
            if next_first is not None and next_first <= first_seq:
                continue
            for record in self._segment_reader(path, segment_first, first_seq):
                if record.seq < first_seq:
                    continue
                if record.seq > stop:
                    return
                yield record
                if record.seq == stop:
                    return

    def _segment_reader(self, path: Path, segment_first: int, first_seq: int) -> RecordReader:
        """A reader positioned at the indexed record at or before `first_seq` (the index is built on first use)."""
        with self._lock:
            index = self._index.get(path)
        if index is None:
            index = []
            for offset, record in RecordReader(path, verify_chain=True).with_offsets():
                if (record.seq - segment_first) % _INDEX_EVERY == 0:
                    index.append((record.seq, offset, record.prev_hash))
            with self._lock:
                self._index.setdefault(path, index)
        with self._lock:
            position = bisect.bisect_right(index, (first_seq, float("inf"))) - 1
            entry = index[position] if position >= 0 else None
        if entry is None or entry[0] == segment_first:
            return RecordReader(path, verify_chain=True)
        seq, offset, prev_hash = entry
        return RecordReader(path, verify_chain=True, offset=offset, head=ChainHead(seq - 1, prev_hash))

    def first_seq(self) -> int | None:
        """The seq of the oldest record on disk."""
        with self._lock:
            return self._segments[0][0] if self._segments else None

    def close(self) -> None:
        """Flush and close the open segment (it stays open-ended, unsealed)."""
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
