"""Authenticated, length-prefixed CBOR messages over Trio streams: the member's API and data-plane ports.

Every connection starts with a mutual challenge: each side sends a random
nonce and proves it holds the cluster secret with an HMAC-SHA256 over both
nonces and its role. Nothing is decoded before the proof checks out except
the fixed-size handshake, and no message is ever unpickled: bodies are CBOR
maps. A frame is a 4-byte big-endian length followed by the CBOR body: one
map, or an array of maps when several messages were queued at once.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import struct
from collections.abc import Callable

import cbor2
import trio

log = logging.getLogger(__name__)

PROTOCOL = b"cairn-consensus-1"
MAX_FRAME = 64 << 20
_LENGTH = struct.Struct(">I")
_NONCE_BYTES = 32
_MAC_BYTES = 32


class WireError(ConnectionError):
    """The peer broke the protocol or failed authentication."""


def read_secret(path: str | os.PathLike) -> bytes:
    """The cluster secret from its file (surrounding whitespace removed)."""
    secret = open(path, "rb").read().strip()
    if len(secret) < 16:
        raise ValueError(f"the cluster secret in {path} is shorter than 16 bytes; write a long random one "
                         "(for example: head -c 32 /dev/urandom | base64 > FILE)")
    return secret


def _mac(secret: bytes, role: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(secret, PROTOCOL + role + first + second, hashlib.sha256).digest()


class _Reader:
    """Buffered reads of exact byte counts from a stream (an offset into the buffer, compacted on refill)."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""
        self._position = 0

    async def exactly(self, count: int) -> bytes:
        end = self._position + count
        if end > len(self._buffer):
            pending = [self._buffer[self._position:]]
            have = len(pending[0])
            while have < count:
                chunk = await self._stream.receive_some(max(65536, count - have))
                if not chunk:
                    raise WireError("the peer closed the connection")
                pending.append(chunk)
                have += len(chunk)
            self._buffer = b"".join(pending)
            self._position, end = 0, count
        data = self._buffer[self._position:end]
        self._position = end
        return data


class Channel:
    """One authenticated connection carrying CBOR messages both ways."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._reader = _Reader(stream)
        self._send_lock = trio.Lock()
        self._backlog: list[dict] = []

    async def receive(self) -> dict:
        """The next message (a frame holding several yields them one by one)."""
        if not self._backlog:
            self._backlog = await self.receive_many()
            self._backlog.reverse()
        return self._backlog.pop()

    async def receive_many(self) -> list[dict]:
        """The messages of the next frame: a frame holds one CBOR map or an array of maps."""
        (length,) = _LENGTH.unpack(await self._reader.exactly(_LENGTH.size))
        if length > MAX_FRAME:
            raise WireError(f"frame of {length} bytes is larger than the {MAX_FRAME}-byte limit")
        body = await self._reader.exactly(length)
        try:
            decoded = cbor2.loads(body)
        except Exception as error:
            raise WireError(f"a frame is not valid CBOR ({error})") from None
        messages = decoded if isinstance(decoded, list) else [decoded]
        if not all(isinstance(m, dict) for m in messages):
            raise WireError("a message must be a CBOR map")
        return messages

    async def send(self, message: dict) -> None:
        await self.send_many([message])

    async def send_many(self, messages: list[dict]) -> None:
        """Send several messages as one frame (requests and replies are coalesced under load)."""
        body = cbor2.dumps(messages[0] if len(messages) == 1 else messages)
        async with self._send_lock:
            await self.stream.send_all(_LENGTH.pack(len(body)) + body)

    async def aclose(self) -> None:
        await self.stream.aclose()


async def _handshake(stream: trio.abc.Stream, secret: bytes, is_server: bool, timeout_s: float) -> Channel:
    channel = Channel(stream)
    mine = os.urandom(_NONCE_BYTES)
    with trio.fail_after(timeout_s):
        await stream.send_all(mine)
        theirs = await channel._reader.exactly(_NONCE_BYTES)
        my_role, their_role = (b"server", b"client") if is_server else (b"client", b"server")
        await stream.send_all(_mac(secret, my_role, mine, theirs))
        proof = await channel._reader.exactly(_MAC_BYTES)
    if not hmac.compare_digest(proof, _mac(secret, their_role, theirs, mine)):
        raise WireError("the peer does not hold the cluster secret; check that every member uses the same "
                        "secret file")
    return channel


async def connect(address: str, secret: bytes, timeout_s: float = 5.0) -> Channel:
    """Open an authenticated channel to HOST:PORT."""
    host, _, port = address.rpartition(":")
    with trio.fail_after(timeout_s):
        stream = await trio.open_tcp_stream(host, int(port))
    try:
        return await _handshake(stream, secret, is_server=False, timeout_s=timeout_s)
    except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
        await stream.aclose()
        raise WireError(f"{address} closed the connection during the handshake: {error}") from None
    except BaseException:
        await stream.aclose()
        raise


async def serve(address: str, secret: bytes, handler: Callable, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Listen on HOST:PORT; run `handler(channel)` for every client that passes the handshake."""
    host, _, port = address.rpartition(":")

    async def accept(stream: trio.SocketStream) -> None:
        try:
            channel = await _handshake(stream, secret, is_server=True, timeout_s=5.0)
        except (WireError, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await stream.aclose()
            return
        try:
            await handler(channel)
        except Exception:
            # One client's failure must never take the listener down.
            log.warning("connection handler for %s failed", address, exc_info=True)
        finally:
            await stream.aclose()

    await trio.serve_tcp(accept, int(port), host=host, task_status=task_status)
