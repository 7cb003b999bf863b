"""A small QMP client on Trio: one connection to one QEMU monitor, every call bounded by a timeout.

QMP (the QEMU Machine Protocol) is JSON, one message a line, over a unix socket. `connect` reads the
greeting and sends `qmp_capabilities`; `Monitor.execute` sends one command and returns its `return`
value or raises `QmpError` with QEMU's error class and description; asynchronous events that arrive
in between are kept (the newest `MAX_BUFFERED_EVENTS`) for `wait_event` and `take_events`.

A command that gets no reply within its timeout raises `QmpTimeout` and leaves the monitor blocked
(a QEMU whose main loop is stuck, shared/reference/qemu.md trap 7.2): the socket still owes a reply,
so it is closed at once and never reused, and every later call raises `QmpClosed` without waiting.
A cancellation from outside in the middle of a command closes the monitor for the same reason.
Waiting for an event owes nothing, so a `wait_event` that times out leaves the monitor usable.

Nothing runs in the background: replies and events are read while a call waits, one call at a time
(a second caller waits its turn, within its own timeout).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
from collections.abc import Callable

import trio

DEFAULT_TIMEOUT_S = 10.0
MAX_BUFFERED_EVENTS = 1000
# The largest single message accepted; QEMU's biggest replies (query-qmp-schema) are a few hundred KiB.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
RECEIVE_BYTES = 65536


class QmpFailure(Exception):
    """The monitor did not give an answer: a QEMU error reply, a timeout, or a lost connection."""


class QmpError(QmpFailure):
    """QEMU answered a command with an error; `error_class` and `desc` are QEMU's own."""

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        super().__init__(f"QEMU refused {command}: {desc} ({error_class})")
        self.command = command
        self.error_class = error_class
        self.desc = desc


class QmpTimeout(QmpFailure):
    """No answer came within the timeout; after a command the monitor is blocked and closed."""


class QmpClosed(QmpFailure):
    """The connection is gone, was never made, or was closed after a timeout: nothing can be sent."""


async def connect(path: str | os.PathLike, timeout_s: float = DEFAULT_TIMEOUT_S) -> Monitor:
    """Connect to the QMP socket at `path`, read the greeting and leave negotiation mode.

    Use the monitor as `async with await connect(path, 5) as monitor:`, or keep it and `aclose()` it.
    Raises QmpClosed when nothing listens at `path`, QmpTimeout when QEMU does not greet and answer
    within `timeout_s`.
    """
    try:
        with trio.fail_after(timeout_s):
            stream = await trio.open_unix_socket(os.fspath(path))
    except trio.TooSlowError:
        raise QmpTimeout(f"connecting to the QMP socket {path} took longer than {timeout_s} s") from None
    except OSError as error:
        raise QmpClosed(f"cannot connect to the QMP socket {path}: {error}; is QEMU running?") from error
    monitor = Monitor(stream, str(path))
    try:
        await monitor._negotiate(timeout_s)
    except BaseException:
        monitor._close_now("the handshake did not finish")
        raise
    return monitor


class Monitor:
    """One open QMP connection; see the module docstring for the rules on timeouts and events."""

    def __init__(self, stream: trio.SocketStream, path: str) -> None:
        self.path = path
        self.greeting: dict = {}
        self.blocked = False
        self._stream = stream
        self._buffer = bytearray()
        self._events: collections.deque[dict] = collections.deque(maxlen=MAX_BUFFERED_EVENTS)
        self._ids = itertools.count(1)
        self._lock = trio.Lock()
        self._closed_because = ""

    @property
    def closed(self) -> bool:
        """Whether the connection is closed (by `aclose`, a timeout or a lost connection)."""
        return bool(self._closed_because)

    async def __aenter__(self) -> Monitor:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection; later calls raise QmpClosed. Closing twice is no error."""
        self._close_now("it was closed")
        await trio.lowlevel.checkpoint()

    async def execute(self, command: str, arguments: dict | None = None,
                      timeout_s: float = DEFAULT_TIMEOUT_S) -> object:
        """Run `command` with `arguments` and return QEMU's `return` value.

        Raises QmpError for an error reply (the monitor stays usable), QmpTimeout when no reply came
        within `timeout_s` (the monitor is then closed for good), QmpClosed when the connection is gone.
        """
        deadline = trio.current_time() + timeout_s
        await self._acquire(deadline, f"to run {command}", timeout_s)
        try:
            return await self._exchange(command, arguments, deadline, timeout_s)
        finally:
            self._lock.release()

    async def wait_event(self, name: str, timeout_s: float,
                         predicate: Callable[[dict], bool] | None = None) -> dict:
        """The first event called `name` (and satisfying `predicate`), kept or yet to come; it is consumed.

        Raises QmpTimeout when none comes within `timeout_s` (the monitor stays usable: nothing is owed).
        """
        deadline = trio.current_time() + timeout_s
        await self._acquire(deadline, f"to wait for the event {name}", timeout_s)
        try:
            event = self._pop_event(name, predicate)
            with trio.move_on_at(deadline):
                while event is None:
                    message = await self._receive(f"waiting for the event {name}")
                    if "event" in message:
                        self._events.append(message)
                        event = self._pop_event(name, predicate)
            if event is None:
                raise QmpTimeout(f"QEMU sent no {name} event on {self.path} within {timeout_s} s")
            return event
        finally:
            self._lock.release()

    def take_events(self, name: str | None = None) -> list[dict]:
        """Remove and return the kept events (only those called `name`, if given), oldest first."""
        taken = [event for event in self._events if name is None or event.get("event") == name]
        kept = [event for event in self._events if not (name is None or event.get("event") == name)]
        self._events.clear()
        self._events.extend(kept)
        return taken

    # --- the wire -------------------------------------------------------------------------

    async def _negotiate(self, timeout_s: float) -> None:
        deadline = trio.current_time() + timeout_s
        greeting = None
        with trio.move_on_at(deadline):
            greeting = await self._receive("waiting for the greeting")
        if greeting is None:
            self._block(f"QEMU sent no QMP greeting on {self.path} within {timeout_s} s")
        if not isinstance(greeting.get("QMP"), dict):
            self._close_now("it did not greet")
            raise QmpClosed(f"{self.path} is not a QMP monitor (its first message was {str(greeting)[:200]})")
        self.greeting = greeting["QMP"]
        await self.execute("qmp_capabilities", timeout_s=max(deadline - trio.current_time(), 0.0))

    async def _acquire(self, deadline: float, purpose: str, timeout_s: float) -> None:
        self._check_open()
        with trio.move_on_at(deadline):
            await self._lock.acquire()
            if self.closed:
                self._lock.release()
                self._check_open()
            return
        raise QmpTimeout(f"the monitor {self.path} stayed busy with another call for {timeout_s} s {purpose}")

    async def _exchange(self, command: str, arguments: dict | None, deadline: float, timeout_s: float) -> object:
        request_id = f"cairn-{next(self._ids)}"
        message = {"execute": command, "id": request_id}
        if arguments:
            message["arguments"] = arguments
        reply = None
        try:
            with trio.move_on_at(deadline):
                await self._stream.send_all(json.dumps(message).encode() + b"\n")
                while reply is None:
                    received = await self._receive(f"waiting for the reply to {command}")
                    if "event" in received:
                        self._events.append(received)
                    elif received.get("id", request_id) == request_id and ("return" in received or "error" in received):
                        reply = received
        except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
            self._close_now("the connection broke")
            raise QmpClosed(f"the QMP connection {self.path} broke while sending {command}: {error}") from error
        except BaseException:
            # Cancelled from outside, or the connection failed: the reply may still be owed.
            self._close_now(f"{command} was interrupted")
            raise
        if reply is None:
            self._block(f"QEMU did not answer {command} on {self.path} within {timeout_s} s; "
                        "its monitor may be blocked")
        if "error" in reply:
            error = reply["error"] if isinstance(reply["error"], dict) else {}
            raise QmpError(command, str(error.get("class", "GenericError")), str(error.get("desc", reply["error"])))
        return reply["return"]

    async def _receive(self, purpose: str) -> dict:
        """The next message; QmpClosed at the end of the stream or on a message that is not JSON."""
        while b"\n" not in self._buffer:
            if len(self._buffer) > MAX_MESSAGE_BYTES:
                self._close_now("a message was too long")
                raise QmpClosed(f"QEMU sent a message over {MAX_MESSAGE_BYTES} bytes on {self.path}")
            try:
                data = await self._stream.receive_some(RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
                self._close_now("the connection broke")
                raise QmpClosed(f"the QMP connection {self.path} broke while {purpose}") from error
            if not data:
                self._close_now("QEMU closed it")
                raise QmpClosed(f"QEMU closed the QMP connection {self.path} while {purpose}; has it exited?")
            self._buffer += data
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer[:] = rest
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            self._close_now("QEMU sent something that is not a QMP message")
            raise QmpClosed(f"QEMU sent a line that is not a QMP message on {self.path}: {line[:200]!r}")
        return message

    def _pop_event(self, name: str, predicate: Callable[[dict], bool] | None) -> dict | None:
        for event in self._events:
            if event.get("event") == name and (predicate is None or predicate(event)):
                self._events.remove(event)
                return event
        return None

    def _block(self, message: str) -> None:
        self.blocked = True
        self._close_now("a call timed out (the monitor may be blocked)")
        raise QmpTimeout(message)

    def _check_open(self) -> None:
        if self.closed:
            raise QmpClosed(f"the QMP connection {self.path} is closed because {self._closed_because}; "
                            "connect again")

    def _close_now(self, because: str) -> None:
        """Close the socket without waiting (safe inside a cancelled scope); the first reason is kept."""
        if not self._closed_because:
            self._closed_because = because
        with contextlib.suppress(OSError):
            self._stream.socket.close()
