"""`ConsoleLink`: an instance's serial console over the API's WebSocket route, for `cairn instance console`.

`connect` opens `GET /api/v1/instances/NAME/console` on one node (TLS with
the cluster CA, or the local `api.sock`) with wsproto over a plain socket; a
refusal comes back as the API's JSON error (`ApiError`). `ConsoleLink.attach`
then passes bytes between two file descriptors (stdin, stdout) and the
console in one thread with `select`, so TLS is never used from two threads:
input becomes binary messages of at most MESSAGE_BYTES, output is written as
each frame's bytes arrive, and at most PENDING_BYTES wait to be sent before
input is no longer read. wsproto is imported here only: the command that
attaches pays for it, no other command does.
"""

from __future__ import annotations

import json
import os
import select
import socket
import ssl
from dataclasses import dataclass

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection, BytesMessage, CloseConnection, Ping, RejectConnection, RejectData, Request, TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from appliance import clock
from appliance.client.config import split_address
from appliance.client.http import ApiError, tls_context

ESCAPE = b"\x1d"                 # Ctrl-], as virsh and telnet
MESSAGE_BYTES = 16 * 1024        # input sent in one message (the server takes up to 64 KiB)
READ_BYTES = 64 * 1024
PENDING_BYTES = 256 * 1024       # input waiting to be sent before stdin is no longer read
REFUSAL_BYTES = 64 * 1024        # the most of an error answer that is read
CONNECT_TIMEOUT_S = 30.0
CLOSE_TIMEOUT_S = 1.0
NORMAL_CLOSURE = 1000


@dataclass(frozen=True)
class Ending:
    """Why a session ended: `by` is "escape" (Ctrl-]), "stdin" (it ended, and the drain time passed), "stdout"
    (nobody reads it any more), "server" (it closed the session: `code`, `reason`) or "lost" (the connection
    broke: `reason`)."""

    by: str
    code: int | None = None
    reason: str = ""


def open_socket(endpoint: str, ca_pem: str | None, timeout_s: float) -> tuple[socket.socket, str]:
    """A connected socket to `endpoint` (`unix:PATH`, or HOST:PORT over TLS checked against the CA) and the
    Host header to ask it with; OSError when the node cannot be reached."""
    if endpoint.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout_s)
            sock.connect(endpoint[len("unix:"):])
        except BaseException:
            sock.close()
            raise
        return sock, "localhost"
    if not ca_pem:
        raise ValueError(f"no cluster CA to check {endpoint}'s certificate against; give the client config's ca_cert")
    host, port = split_address(endpoint)
    sock = socket.create_connection((host, port), timeout=timeout_s)
    try:
        # The certificate must name the host (an IP SAN for an IP), as for every other API call.
        return tls_context(ca_pem).wrap_socket(sock, server_hostname=host), endpoint
    except BaseException:
        sock.close()
        raise


def connect(endpoint: str, path: str, token: str, ca_pem: str | None = None,
            timeout_s: float = CONNECT_TIMEOUT_S) -> ConsoleLink:
    """The console session at `path` on the node at `endpoint`, accepted; ApiError with the node's refusal
    (401, 403, 404, 409 ...), OSError when the node cannot be reached."""
    sock, host = open_socket(endpoint, ca_pem, timeout_s)
    try:
        connection = WSConnection(ConnectionType.CLIENT)
        sock.sendall(connection.send(Request(host=host, target=path, extra_headers=[
            (b"authorization", f"Bearer {token}".encode()), (b"user-agent", b"cairn-cli")])))
        early = _handshake(sock, connection, endpoint)
    except BaseException:
        sock.close()
        raise
    return ConsoleLink(sock, connection, early)


def _handshake(sock: socket.socket, connection: WSConnection, endpoint: str) -> list:
    """Read until the node accepts (the events that came with the acceptance are returned) or refuses."""
    status, body = None, bytearray()
    while True:
        data = sock.recv(READ_BYTES)
        try:
            connection.receive_data(data or None)
            for event in connection.events():
                if isinstance(event, AcceptConnection):
                    return list(connection.events())
                if isinstance(event, RejectConnection):
                    status = event.status_code
                    if not event.has_body:
                        raise refusal(status, b"")
                elif isinstance(event, RejectData):
                    body += event.data[:REFUSAL_BYTES - len(body)]
                    if event.body_finished:
                        raise refusal(status or 502, bytes(body))
        except RemoteProtocolError as error:
            raise ApiError(502, "bad_answer", f"{endpoint} did not answer as a WebSocket ({error})") from None
        if not data:
            raise ConnectionResetError(f"{endpoint} closed the connection during the WebSocket handshake")


def refusal(status: int, body: bytes) -> ApiError:
    """The ApiError of a refused handshake: the API's JSON error, or the answer's text."""
    try:
        document = json.loads(body)
        return ApiError(status, str(document["error"]), str(document.get("message", "")))
    except (ValueError, TypeError, KeyError):
        text = body.decode("utf-8", "replace").strip() or f"HTTP {status} instead of a WebSocket"
        return ApiError(status, "refused", text[:500])


class ConsoleLink:
    """One accepted console session: `attach` it to file descriptors, then `close` it (or use `with`)."""

    def __init__(self, sock: socket.socket, connection: WSConnection, early: list) -> None:
        self.sock = sock
        self.connection = connection
        self.early = early            # events that arrived with the acceptance
        self.outgoing = bytearray()
        self.closed = False

    def __enter__(self) -> ConsoleLink:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def attach(self, stdin_fd: int, stdout_fd: int, escape: bytes | None = ESCAPE,
               drain_s: float | None = None) -> Ending:
        """Pass `stdin_fd` to the console and the console to `stdout_fd` until the session ends.

        `escape` (a byte) in the input detaches; without it input is sent as it
        is. When the input ends, the output is passed on for `drain_s` more
        seconds and then the session ends (None: until the server ends it).
        """
        self.sock.setblocking(False)
        ending = self._events(self.early, stdout_fd) or self._receive(stdout_fd)
        reading, deadline = True, None
        while ending is None:
            readers: list = [self.sock]
            if reading and len(self.outgoing) < PENDING_BYTES:
                readers.append(stdin_fd)
            timeout = None if deadline is None else max(0.0, deadline - clock.monotonic())
            ready, writable, _ = select.select(readers, [self.sock] if self.outgoing else [], [], timeout)
            if writable:
                ending = self._flush()
            if stdin_fd in ready and ending is None:
                data = os.read(stdin_fd, MESSAGE_BYTES)
                if not data:
                    reading = False
                    deadline = None if drain_s is None else clock.monotonic() + drain_s
                    continue
                if escape and escape in data:
                    self._send(data[:data.index(escape)])
                    return Ending("escape")
                self._send(data)
                ending = self._flush()
            if self.sock in ready and ending is None:
                ending = self._receive(stdout_fd)
            if ending is None and deadline is not None and clock.monotonic() >= deadline:
                ending = Ending("stdin")
        return ending

    def _send(self, data: bytes) -> None:
        if data:
            self.outgoing += self.connection.send(BytesMessage(data=data))

    def _flush(self) -> Ending | None:
        """Send what the socket takes now."""
        while self.outgoing:
            try:
                sent = self.sock.send(self.outgoing)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return None
            except OSError as error:
                return Ending("lost", reason=error.strerror or str(error))
            del self.outgoing[:sent]
        return None

    def _receive(self, stdout_fd: int) -> Ending | None:
        """Read what the socket has now (all of it: TLS may hold decrypted bytes select does not see)."""
        while True:
            try:
                data = self.sock.recv(READ_BYTES)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return None
            except OSError as error:
                return Ending("lost", reason=error.strerror or str(error))
            if not data:
                return Ending("lost", reason="the node closed the connection without ending the session")
            try:
                self.connection.receive_data(data)
                ending = self._events(self.connection.events(), stdout_fd)
            except RemoteProtocolError as error:
                return Ending("lost", reason=f"the node broke the WebSocket protocol ({error})")
            if ending is not None:
                return ending

    def _events(self, events, stdout_fd: int) -> Ending | None:
        for event in events:
            if isinstance(event, (BytesMessage, TextMessage)):
                data = event.data if isinstance(event, BytesMessage) else event.data.encode("utf-8")
                if not write_all(stdout_fd, data):
                    return Ending("stdout", reason="nobody reads the output any more")
            elif isinstance(event, Ping):
                self.outgoing += self.connection.send(event.response())
            elif isinstance(event, CloseConnection):
                self.outgoing += self.connection.send(event.response())
                self._flush()
                self.closed = True
                return Ending("server", event.code, event.reason or "")
        return None

    def close(self) -> None:
        """End the session (a normal close, answered or not within CLOSE_TIMEOUT_S) and the connection."""
        try:
            if not self.closed:
                self.closed = True
                self.sock.settimeout(CLOSE_TIMEOUT_S)
                self.outgoing += self.connection.send(CloseConnection(code=NORMAL_CLOSURE))
                self.sock.sendall(self.outgoing)
                self.outgoing.clear()
                self._await_close()
        except (OSError, LocalProtocolError, RemoteProtocolError):
            pass
        finally:
            self.sock.close()

    def _await_close(self) -> None:
        """Read (and drop) what comes until the node answers the close, closes the connection or times out."""
        while True:
            data = self.sock.recv(READ_BYTES)
            if not data:
                return
            self.connection.receive_data(data)
            if any(isinstance(event, CloseConnection) for event in self.connection.events()):
                return


def write_all(fd: int, data: bytes) -> bool:
    """Write all of `data` to `fd`; False when its reader has gone."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BrokenPipeError:
            return False
    return True
