"""Streamed answers: NDJSON lines, the sealed record stream, and live streams that end when the server stops.

A live stream (job watch, events tail) is fed by one producer task that the
response starts and owns: the backend's waits and async iterators run in that
single task from start to end, and the body reads what it produced from a
memory channel. When the server shuts down, the producer is cancelled and
closes the channel, so the stream ends cleanly (a whole last line, a proper
end of the chunked body) instead of being cut after the graceful timeout.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import trio
from starlette.responses import StreamingResponse

from appliance.api import views
from appliance.api.schema import MEDIA_NDJSON
from consensus.record import ChainHead, Seal, encode_record, encode_seal

# Lines (or record frames) per chunk of a history stream: a chunk per line costs ~85 µs each.
STREAM_CHUNK = 100
# Chunks a live producer may run ahead of a slow reader.
LIVE_BUFFER = 16
log = logging.getLogger("cairn.api")

Producer = Callable[[trio.MemorySendChannel], Awaitable[None]]


def ndjson_line(data: Any) -> bytes:
    """One JSON line (keys sorted, as `cairn events export` writes them)."""
    return json.dumps(data, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n"


class LiveStream(StreamingResponse):
    """An NDJSON answer fed by `produce(channel)` in a task of its own, ended by `shutdown` or the caller leaving."""

    def __init__(self, produce: Producer, shutdown: trio.Event, headers: dict[str, str] | None = None) -> None:
        self.produce = produce
        self.shutdown = shutdown
        self.sender, receiver = trio.open_memory_channel(LIVE_BUFFER)
        super().__init__(_received(receiver), media_type=MEDIA_NDJSON, headers=headers)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        async with trio.open_nursery() as nursery:
            producing = trio.CancelScope()
            nursery.start_soon(self._produce, producing)
            nursery.start_soon(self._stop_on_shutdown, producing)
            try:
                await super().__call__(scope, receive, send)
            finally:
                nursery.cancel_scope.cancel()

    async def _produce(self, producing: trio.CancelScope) -> None:
        async with self.sender:
            with producing:
                try:
                    await self.produce(self.sender)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                except Exception:
                    # The caller sees the stream end early; the node's log says why.
                    log.exception("a live API stream failed")

    async def _stop_on_shutdown(self, producing: trio.CancelScope) -> None:
        await self.shutdown.wait()
        producing.cancel()


async def _received(receiver: trio.MemoryReceiveChannel) -> AsyncIterator[bytes]:
    async with receiver:
        async for chunk in receiver:
            yield chunk


async def event_chunks(records: Iterable, redact: bool) -> AsyncIterator[bytes]:
    """Event lines of committed records, STREAM_CHUNK lines per chunk."""
    chunk: list[bytes] = []
    for record in records:
        chunk.append(ndjson_line(views.event_line(record.seq, record.payload, redact)))
        if len(chunk) >= STREAM_CHUNK:
            yield b"".join(chunk)
            chunk = []
    if chunk:
        yield b"".join(chunk)


async def record_frames(records: Iterable) -> AsyncIterator[bytes]:
    """The records as a sealed record stream: the format of event files and `cairn events export --format cbor`,
    so `cairn events verify --file` checks a saved copy."""
    count, first_seq, head = 0, None, None
    chunk: list[bytes] = []
    for record in records:
        chunk.append(encode_record(record))
        first_seq = record.seq if first_seq is None else first_seq
        head, count = record, count + 1
        if len(chunk) >= STREAM_CHUNK:
            yield b"".join(chunk)
            chunk = []
    # An empty export is an empty chain: its seal must match a reader that saw no records.
    last = head or ChainHead()
    chunk.append(encode_seal(Seal(count, first_seq or last.seq + 1, last.seq, last.hash)))
    yield b"".join(chunk)
