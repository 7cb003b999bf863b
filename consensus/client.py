"""A client of a consensus member process (consensus.node): propose, head, status, read over the API port.

One connection carries many requests at once; replies are matched by id, so
many Trio tasks can share one client. Errors the member reports come back as
the same exception classes consensus.log defines.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import AsyncIterator

import trio

from consensus import log as log_errors
from consensus.log import unwrap_single_exception
from consensus.record import ChainHead, Record
from consensus.wire import Channel, WireError, connect

_ERRORS = {name: getattr(log_errors, name) for name in
           ("NotLeader", "NoQuorum", "OutcomeUnknown", "LogClosed", "Overloaded", "MembershipError", "LogError")}


class RemoteError(log_errors.LogError):
    """The member failed a request for a reason that is not a log error (a bad request, a bug)."""


def error_from_reply(reply: dict) -> Exception:
    """Rebuild the exception a member reported."""
    kind = reply.get("error", "LogError")
    message = reply.get("message", "")
    if kind == "NotLeader":
        return log_errors.NotLeader(reply.get("leader"))
    return _ERRORS.get(kind, RemoteError)(message)


class _Outbox:
    """Coalesces frames queued by many tasks into single writes."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.send, self._receive = trio.open_memory_channel(math.inf)

    async def run(self, on_broken) -> None:
        try:
            async for message in self._receive:
                batch = [message]
                while True:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                await self.channel.send_many(batch)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
            on_broken(error)


class NodeClient:
    """Requests to one member; use `open_client`."""

    def __init__(self, channel: Channel, address: str) -> None:
        self.address = address
        self._channel = channel
        self._outbox = _Outbox(channel)
        self._ids = itertools.count(1)
        self._waiting: dict[int, list] = {}
        self._broken: Exception | None = None

    async def _read_replies(self) -> None:
        try:
            while True:
                for reply in await self._channel.receive_many():
                    slot = self._waiting.pop(reply.get("id"), None)
                    if slot is not None:
                        slot.append(reply)
                        slot[0].set()
        except (WireError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
            self._fail(error)

    def _fail(self, error: Exception) -> None:
        if self._broken is None:
            self._broken = ConnectionError(f"connection to {self.address} lost: {error}")
        for slot in self._waiting.values():
            slot[0].set()

    async def call(self, op: str, wait_s: float = 30.0, **fields) -> dict:
        """Send one request and wait for its reply; raise the error the member reported."""
        if self._broken is not None:
            raise self._broken
        request_id = next(self._ids)
        slot: list = [trio.Event()]
        self._waiting[request_id] = slot
        self._outbox.send.send_nowait({"op": op, "id": request_id, **fields})
        with trio.move_on_after(wait_s):
            await slot[0].wait()
        self._waiting.pop(request_id, None)
        if len(slot) < 2:
            if self._broken is not None:
                raise self._broken
            raise TimeoutError(f"{self.address} did not answer {op} within {wait_s} s")
        reply = slot[1]
        if "error" in reply:
            raise error_from_reply(reply)
        return reply

    async def propose(self, payload: bytes, timeout_s: float = 5.0) -> int:
        """Commit a payload through this member; returns its seq."""
        reply = await self.call("propose", wait_s=timeout_s + 5.0, payload=payload, timeout_s=timeout_s)
        return reply["seq"]

    async def head(self) -> ChainHead:
        reply = await self.call("head")
        return ChainHead(reply["seq"], reply["hash"])

    async def status(self) -> dict:
        return await self.call("status")

    async def read(self, first_seq: int, last_seq: int, limit: int = 5000) -> list[Record]:
        reply = await self.call("read", first=first_seq, last=last_seq, limit=limit)
        return [Record(*fields) for fields in reply["records"]]

    async def read_all(self, first_seq: int = 1, last_seq: int | None = None) -> AsyncIterator[Record]:
        """Every record in the range, fetched in chunks."""
        position = first_seq
        stop = (await self.head()).seq if last_seq is None else last_seq
        while position <= stop:
            chunk = await self.read(position, stop)
            if not chunk:
                return
            for record in chunk:
                yield record
            position = chunk[-1].seq + 1

    async def wait_seq(self, seq: int, timeout_s: float = 30.0) -> ChainHead:
        reply = await self.call("wait", wait_s=timeout_s + 5.0, seq=seq, timeout_s=timeout_s)
        return ChainHead(reply["seq"], reply["hash"])


@contextlib.asynccontextmanager
async def open_client(address: str, secret: bytes, timeout_s: float = 5.0) -> AsyncIterator[NodeClient]:
    """An authenticated client of the member at `address` (its API or data-plane port)."""
    channel = await connect(address, secret, timeout_s=timeout_s)
    client = NodeClient(channel, address)
    try:
        with unwrap_single_exception():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client._read_replies)
                nursery.start_soon(client._outbox.run, client._fail)
                try:
                    yield client
                finally:
                    nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await channel.aclose()
