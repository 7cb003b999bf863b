"""The read side every log shares: `read` and the `committed` stream, over the records a member stores.

A log says where its committed records are (`_stored`), what its head is and
which Trio event fires at the next commit; the range rules and the waiting loop
live here once. Memory and simulated members keep their records in a list
(`ListLog`); the pysyncobj member keeps a tail in memory over history segments.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Iterator

import trio

from consensus.log import EventLog, LogClosed
from consensus.record import ChainHead, Record

# How many records the committed stream reads at once before it looks at the
# head and the closed flag again.
COMMITTED_CHUNK = 1000


class StoredRecordsLog(EventLog):
    """An EventLog whose `read` and `committed` are served from the records this member stores."""

    _closed: bool = False

    @abc.abstractmethod
    def _stored(self, first_seq: int, last_seq: int) -> Iterator[Record]:
        """The stored records first_seq..last_seq in order; 1 <= first_seq and last_seq <= head().seq."""

    @abc.abstractmethod
    def _next_change(self) -> trio.Event:
        """The event set at the next commit (or close); fetch it before reading, then wait on it."""

    def read(self, first_seq: int = 1, last_seq: int | None = None) -> Iterator[Record]:
        head_seq = self.head().seq
        stop = head_seq if last_seq is None else min(last_seq, head_seq)
        return self._stored(max(first_seq, 1), stop)

    async def committed(self, after_seq: int = 0) -> AsyncIterator[Record]:
        position = after_seq
        while True:
            changed = self._next_change()
            if self._closed:
                raise LogClosed("the log is closed")
            progressed = False
            for record in self.read(position + 1, position + COMMITTED_CHUNK):
                position = record.seq
                progressed = True
                yield record
            if not progressed:
                await changed.wait()


class ListLog(StoredRecordsLog):
    """A log whose committed records sit in one list (seq N at index N-1) and whose checkpoint is kept in memory."""

    _snapshot: tuple[int, bytes] | None = None

    @abc.abstractmethod
    def _record_list(self) -> list[Record]:
        """The list of committed records, appended to in commit order."""

    def head(self) -> ChainHead:
        records = self._record_list()
        return ChainHead(records[-1].seq, records[-1].hash) if records else ChainHead()

    def _stored(self, first_seq: int, last_seq: int) -> Iterator[Record]:
        return iter(self._record_list()[first_seq - 1:last_seq])

    def set_snapshot(self, seq: int, data: bytes) -> None:
        self._snapshot = (seq, bytes(data))

    def latest_snapshot(self) -> tuple[int, bytes] | None:
        return self._snapshot
