"""Committed entries on a pysyncobj member: the hash chain, history segments, the in-memory tail and gap filling.

The apply step runs on pysyncobj's tick thread: it extends the hash chain,
appends the records to this member's history segments (consensus.history) and
hands them to Trio, which keeps the newest in a tail and reads older ones from
the segments. A range missing behind an installed snapshot is copied from a
peer and checked against the chain.
"""

from __future__ import annotations


import collections
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Iterator

import cbor2
import trio

from consensus.history import HistoryStore
from consensus.record import ChainHead, Record, next_record
from consensus.syncobj_settings import SyncObjSettings

# Every part of the member logs under the one name it had before the split.
log = logging.getLogger("consensus.syncobj_log")

# Fetches the committed records first_seq..last_seq from some peer, in order.
HistorySource = Callable[[int, int], AsyncIterator[Record]]


class AppliedHistory:
    """SyncObjLog's record side: apply on the tick thread, tail and head in Trio, history segments, gaps."""

    _settings: SyncObjSettings
    _closed: bool
    _history: HistoryStore
    _history_source: HistorySource | None
    _chain: ChainHead
    _head: ChainHead
    _tail: collections.deque[Record]
    _changed: trio.Event
    _gap_wakeup: trio.Event
    _in_flight: set
    history_error: str | None
    history_copies: int

    # Provided by the group-commit side (consensus.syncobj_commit).
    _to_trio: Callable[..., None]
    _to_trio_soon: Callable[..., None]

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
            # Not synced here, under either policy: under `always` the Raft
            # journal holding these records is on a majority's disks before any
            # proposer is answered, and a restart replays it into the history;
            # the segment is synced every fsync_interval_s and before every snapshot.
            self._history.append(records)
        except Exception as error:
            # The chain goes on (the other members agree on it); this member's
            # history stops and says so in status() until it is rebuilt.
            self.history_error = f"history writing stopped at seq {records[0].seq}: {error}"
            log.critical(self.history_error)

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

    def _next_change(self) -> trio.Event:
        return self._changed

    def head(self) -> ChainHead:
        return self._head

    def _stored(self, first_seq: int, last_seq: int) -> Iterator[Record]:
        position = first_seq - 1
        tail_first = self._tail[0].seq if self._tail else self._head.seq + 1
        if position + 1 < tail_first:
            for record in self._history.read(position + 1, min(last_seq, tail_first - 1)):
                position = record.seq
                yield record
            if position + 1 < tail_first:
                return
        # The tail holds consecutive seqs: take only the slice asked for, not a copy of the whole tail.
        tail = self._tail
        start = max(0, position + 1 - tail_first)
        stop = max(start, min(len(tail), last_seq - tail_first + 1))
        for record in list(itertools.islice(tail, start, stop)):
            if record.seq > position:
                position = record.seq
                yield record

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
