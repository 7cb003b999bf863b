"""A one-member log held in memory: unit tests and a one-node cluster.

It commits every proposal at once, in order; optionally it appends each record
to a history file so a restart can read it back.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import trio

from consensus.log import Leadership, LogStatus, check_proposal
from consensus.read_side import ListLog
from consensus.record import Record, RecordReader, RecordWriter, next_record


class MemoryLog(ListLog):
    """Always the leader of a cluster of one; committed records live in a list."""

    def __init__(self, address: str = "memory", history_path: str | os.PathLike | None = None) -> None:
        self.address = address
        self._records: list[Record] = []
        self._changed = trio.Event()
        self._closed = False
        self._writer: RecordWriter | None = None
        if history_path is not None:
            if os.path.exists(history_path):
                self._records.extend(RecordReader(history_path, verify_chain=True))
            self._writer = RecordWriter(history_path, head=self._records[-1] if self._records else None)

    async def propose(self, payload: bytes, timeout_s: float = 5.0) -> int:
        return self.propose_nowait(payload)

    def propose_nowait(self, payload: bytes) -> int:
        """Commit at once without waiting; the synchronous twin of `propose`."""
        check_proposal(self._closed, payload)
        record = next_record(self.head(), payload)
        if self._writer is not None:
            self._writer.append(record)
            self._writer.flush()
        self._records.append(record)
        self._changed.set()
        self._changed = trio.Event()
        return record.seq

    def _record_list(self) -> list[Record]:
        return self._records

    def _next_change(self) -> trio.Event:
        return self._changed

    def leader(self) -> str | None:
        return None if self._closed else self.address

    def is_leader(self) -> bool:
        return not self._closed

    def majority_heard_age(self) -> float:
        """The one member is its own majority."""
        return 0.0 if not self._closed else float("inf")

    def status(self) -> LogStatus:
        return LogStatus(self.address, self.leader(), 1, self.head().seq, voters=(self.address,))

    async def leadership_changes(self) -> AsyncIterator[Leadership]:
        yield Leadership(self.address, 1)
        while not self._closed:
            await self._changed.wait()
        yield Leadership(None, 1)

    async def aclose(self) -> None:
        self._closed = True
        if self._writer is not None:
            self._writer.close()
        self._changed.set()
