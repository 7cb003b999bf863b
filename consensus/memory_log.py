"""A one-member log held in memory: unit tests and a one-node cluster.

It commits every proposal at once, in order; optionally it appends each record
to a history file so a restart can read it back.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import trio

from consensus.log import EventLog, Leadership, LogClosed, LogStatus
from consensus.record import ChainHead, Record, RecordReader, RecordWriter, next_record


class MemoryLog(EventLog):
    """Always the leader of a cluster of one; committed records live in a list."""

    def __init__(self, address: str = "memory", history_path: str | os.PathLike | None = None) -> None:
        self.address = address
        self._records: list[Record] = []
        self._changed = trio.Event()
        self._closed = False
        self._snapshot: tuple[int, bytes] | None = None
        self._writer: RecordWriter | None = None
        if history_path is not None:
            if os.path.exists(history_path):
                self._records.extend(RecordReader(history_path, verify_chain=True))
            self._writer = RecordWriter(history_path, head=self._records[-1] if self._records else None)

    async def propose(self, payload: bytes, timeout_s: float = 5.0) -> int:
        return self.propose_nowait(payload)

    def propose_nowait(self, payload: bytes) -> int:
        """Commit at once without waiting; the synchronous twin of `propose`."""
        if self._closed:
            raise LogClosed("the log is closed")
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise TypeError(f"a payload is bytes, not {type(payload).__name__}; encode the event first")
        record = next_record(self.head(), payload)
        if self._writer is not None:
            self._writer.append(record)
            self._writer.flush()
        self._records.append(record)
        self._changed.set()
        self._changed = trio.Event()
        return record.seq

    def head(self) -> ChainHead:
        if not self._records:
            return ChainHead()
        last = self._records[-1]
        return ChainHead(last.seq, last.hash)

    def read(self, first_seq: int = 1, last_seq: int | None = None) -> Iterator[Record]:
        end = len(self._records) if last_seq is None else min(last_seq, len(self._records))
        return iter(self._records[max(first_seq, 1) - 1:end])

    async def committed(self, after_seq: int = 0) -> AsyncIterator[Record]:
        position = after_seq
        while True:
            while position < len(self._records):
                position += 1
                yield self._records[position - 1]
            if self._closed:
                raise LogClosed("the log is closed")
            await self._changed.wait()

    def leader(self) -> str | None:
        return None if self._closed else self.address

    def is_leader(self) -> bool:
        return not self._closed

    def status(self) -> LogStatus:
        return LogStatus(self.address, self.leader(), 1, self.head().seq, voters=(self.address,))

    async def leadership_changes(self) -> AsyncIterator[Leadership]:
        yield Leadership(self.address, 1)
        while not self._closed:
            await self._changed.wait()
        yield Leadership(None, 1)

    def set_snapshot(self, seq: int, data: bytes) -> None:
        self._snapshot = (seq, bytes(data))

    def latest_snapshot(self) -> tuple[int, bytes] | None:
        return self._snapshot

    async def aclose(self) -> None:
        self._closed = True
        if self._writer is not None:
            self._writer.close()
        self._changed.set()
