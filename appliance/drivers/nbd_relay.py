"""The NBD relay on the primary: a small process per replicated disk that cuts a secondary which stops answering.

The primary QEMU's NBD client connects to the relay's unix socket; the relay connects over TCP to the
secondary's export (appliance/drivers/nbd.py) and passes the bytes both ways. It exists for two reasons
(shared/reference/qemu.md, traps 7.1 and 7.2):

- a hung but living secondary (stopped, or stuck on its disk) freezes the guest's writes without limit,
  and nothing inside QEMU 7.2 bounds an NBD request; cutting the connection is the only known unstick.
  The relay cuts both sockets when a request has gone unanswered for `--io-timeout` seconds, writes one
  line saying so to stderr and exits 3. QEMU then fails the request, the write-blocking mirror job stops
  with an error, the guest goes on with its local copy, and the node daemon reports the disk DEGRADED and
  starts a new relay for the resync. The relay also exits 4 when the secondary closes, resets or times
  out an open connection (TCP_USER_TIMEOUT and keep-alive notice a dead or partitioned peer); either way
  the secondary missed writes, so the mirror has to be rebuilt. SIGTERM or SIGINT ends it with 0.
- the TCP leg gets TCP_NODELAY (and QEMU's client, as QEMU sets it, on its own leg).

With `--hold-file` (the node daemon always gives one: appliance/drivers/replication.py), a cut does not end
QEMU's connection at once: the export's side is closed, QEMU's is kept open and unanswered, so the guest's
writes wait; the hold file says why. The node daemon records the secondary's copy as DEGRADED in the
cluster's log, then sends SIGUSR1: QEMU's connection closes, its mirror job fails and the guest goes on with
its local copy, and the relay exits with the cut's status (3 or 4). This is fence-peer: no write is
acknowledged without the secondary while the log still calls the secondary's copy UPTODATE.

What counts as "unanswered". NBD answers every request except NBD_CMD_DISC, and an idle connection sends
nothing, so the relay reads the NBD framing (`NbdTracker`): the handshake (greeting, options and their
final replies), then every request header (skipping write payloads) and every reply (simple, or
structured chunks up to the one flagged DONE). The connection is cut when the oldest unanswered
request (or handshake step) is older than the timeout, so one stuck request is caught even while the
secondary still answers others (a rule of "nothing came back for the timeout" would miss it); an idle
connection is never cut. A request's age runs from when its header reached the relay, so the timeout
must exceed the slowest answer a healthy but loaded secondary gives (16 requests of up to 32 MiB can be
queued ahead of one), as DRBD waits its timeout times ko-count before it drops a peer.

TLS. A rule on opaque bytes (cut when the secondary stays silent for the timeout after bytes went to it)
is not right: with several requests in flight, a reply to an earlier request that arrives after the last
request was sent hides a later request the secondary never answers, and the guest can then wait without
limit (the case of a secondary stuck on one write, Ganeti/DRBD's ko-count). TLS end to end between QEMU
and the export hides the framing, so the relay terminates TLS itself: with `--tls-dir` (a QEMU-style
directory: ca-cert.pem, client-cert.pem, client-key.pem, the node's certificate) it sends NBD_OPT_STARTTLS
to the export after the greeting, completes the handshake with the node certificate (the export checks it
against the cluster CA, the relay checks the export's certificate and its address), and QEMU speaks plain
NBD to the relay over the unix socket, which is as private as QEMU's own disk file (mode 0600, and the
relay runs as the same user on the same machine). If QEMU negotiates TLS through the relay anyway, the
relay falls back to the opaque-byte rule above for that connection and logs that it did.

It imports nothing but the standard library and the clock, starts in about 20 ms, and runs in one thread
(selectors); connections are set up (connect, and the TLS handshake) in short-lived threads, bounded by
the timeout. Its cost (bench/nbd_path.py, 127.0.0.1, 2 shared cores, three runs at load 1.3-1.9): 95-120 us
more per 4 KiB write at depth 1 (4300-7200 IOPS against 8800-22000 straight over TCP), 15000-22000
against 38000-44000 IOPS at depth 16, 1 MiB writes at depth 4 at 480-520 MiB/s (320-500 with TLS at
the relay) against 1070-1560; it is CPU-bound on Python there. Terminating TLS at the relay costs about
10 % more per small write than QEMU doing TLS itself through the relay.

Usage: `python -m appliance.drivers.nbd_relay --listen PATH --connect HOST:PORT --io-timeout S
[--tls-dir DIR]` (`relay_command` builds it; start it in a session of its own so that a restart of the
node daemon leaves the mirror alone). The socket appears at PATH only once it listens (it is bound under
a temporary name and renamed), so its existence means the relay is ready.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import logging
import os
import queue
import select
import selectors
import signal
import socket
import ssl
import struct
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.clock import monotonic

log = logging.getLogger("cairn.nbd_relay")

EXIT_STOPPED, EXIT_USAGE, EXIT_TIMEOUT, EXIT_PEER_LOST = 0, 2, 3, 4
RECEIVE_BYTES = 256 * 1024
# Stop reading from one side while this much is waiting to be written to the other.
HIGH_WATER_BYTES = 4 * 1024 * 1024
IDLE_POLL_S = 1.0
CLOSE_GRACE_S = 0.5

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPTION_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF
FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES = 1, 2
OPT_EXPORT_NAME, OPT_STARTTLS, OPT_GO, OPT_STRUCTURED_REPLY = 1, 5, 7, 8
REP_ACK, REP_ERROR_BIT = 1, 1 << 31
CMD_READ, CMD_WRITE, CMD_DISC = 0, 1, 2
REPLY_FLAG_DONE = 1


# --- what the secondary owes -----------------------------------------------------------------

class _Framer:
    """Splits one direction of a byte stream into fixed-size headers, skipping payloads between them.

    `handler(header)` is called with each complete header and returns the next header size, the next
    handler, how many payload bytes to skip first, and what to call once they are skipped (or None).
    """

    def __init__(self, need: int, handler: Callable) -> None:
        self.need, self.handler = need, handler
        self.skip = 0
        self.after_skip: Callable[[], None] | None = None
        self.buffer = bytearray()

    def feed(self, data: bytes) -> None:
        position, end = 0, len(data)
        while position < end:
            if self.skip:
                taken = min(self.skip, end - position)
                self.skip -= taken
                position += taken
                if not self.skip and self.after_skip is not None:
                    done, self.after_skip = self.after_skip, None
                    done()
                continue
            if not self.buffer and end - position >= self.need:
                header = data[position:position + self.need]
                position += self.need
            else:
                taken = min(self.need - len(self.buffer), end - position)
                self.buffer += data[position:position + taken]
                position += taken
                if len(self.buffer) < self.need:
                    continue
                header = bytes(self.buffer)
                self.buffer.clear()
            self.need, self.handler, self.skip, self.after_skip = self.handler(header)
            if not self.skip and self.after_skip is not None:
                done, self.after_skip = self.after_skip, None
                done()

    def restart(self, need: int, handler: Callable) -> bool:
        """Expect a different header next; False if a header was half read (the peer broke the protocol)."""
        if self.buffer or self.skip:
            return False
        self.need, self.handler = need, handler
        return True


class NbdTracker:
    """What the secondary owes on one connection, read from the NBD framing of both directions.

    Pure: it is fed the bytes each way with the time they passed, and says since when the oldest
    unanswered request (or handshake step) has waited. If the stream stops making sense as NBD (TLS
    negotiated through the relay, or an unknown magic), it turns `opaque` and falls back to the byte
    rule: owed since the first byte sent after the secondary last sent anything.
    """

    def __init__(self, now: float) -> None:
        self.opaque = False
        self.opaque_reason = ""
        self.structured = False
        self.transmission = False
        self.disconnecting = False
        self.owed: collections.OrderedDict[object, float] = collections.OrderedDict()
        self.owed[("greeting",)] = now
        self.reads: dict[int, int] = {}
        self.options_sent = 0
        self.options_answered = 0
        self.server_flags = 0
        self.client_flags = 0
        self.silent_since: float | None = None
        self.now = now
        self.client = _Framer(4, self._client_flags)
        self.server = _Framer(18, self._greeting)

    # The two entry points.
    def from_client(self, data: bytes, now: float) -> None:
        """Bytes QEMU sent towards the secondary, at `now`."""
        if data and self.silent_since is None:
            self.silent_since = now
        if not self.opaque:
            self.now = now
            self.client.feed(data)

    def from_server(self, data: bytes, now: float) -> None:
        """Bytes the secondary sent back, at `now`."""
        if data:
            self.silent_since = None
        if not self.opaque:
            self.now = now
            self.server.feed(data)

    def owed_since(self) -> float | None:
        """When the oldest unanswered request was sent (None: nothing is owed, the line is idle)."""
        if self.opaque:
            return self.silent_since
        return next(iter(self.owed.values()), None)

    def pending(self) -> int:
        """How many requests and handshake steps are unanswered (exact while the framing is readable)."""
        return len(self.owed)

    # Helpers.
    def _go_opaque(self, reason: str) -> tuple:
        if not self.opaque:
            self.opaque, self.opaque_reason = True, reason
            self.owed.clear()
        # Skip the rest of whatever chunk is being fed: nothing more is parsed on this connection.
        return 1, self._bad_direction, 1 << 62, None

    def _bad_direction(self, header: bytes) -> tuple:
        return self._go_opaque("unexpected bytes")

    def _answer(self, key: object) -> None:
        self.owed.pop(key, None)

    # Client to server.
    def _client_flags(self, header: bytes) -> tuple:
        (self.client_flags,) = struct.unpack(">I", header)
        return 16, self._option, 0, None

    def _option(self, header: bytes) -> tuple:
        magic, option, length = struct.unpack(">QII", header)
        if magic != IHAVEOPT:
            return self._go_opaque(f"option magic {magic:#x}")
        if option == OPT_STARTTLS:
            return self._go_opaque("QEMU negotiated TLS through the relay")
        self.options_sent += 1
        self.owed[("option", self.options_sent)] = self.now
        if option == OPT_EXPORT_NAME:
            # The old way into transmission: no option reply, the export's size and flags instead.
            zeroes = 0 if self.server_flags & self.client_flags & FLAG_NO_ZEROES else 124
            self.server.restart(10 + zeroes, self._export_name_reply)
            return 28, self._request, length, None
        return 16, self._option, length, None

    def _request(self, header: bytes) -> tuple:
        magic, _flags, command, handle, _offset, length = struct.unpack(">IHHQQI", header)
        if magic != REQUEST_MAGIC:
            return self._go_opaque(f"request magic {magic:#x}")
        if command == CMD_DISC:
            self.disconnecting = True
        else:
            self.owed[("request", handle)] = self.now
            if command == CMD_READ:
                self.reads[handle] = length
        return 28, self._request, length if command == CMD_WRITE else 0, None

    # Server to client.
    def _greeting(self, header: bytes) -> tuple:
        magic, option_magic, self.server_flags = struct.unpack(">QQH", header)
        if magic != NBDMAGIC or option_magic != IHAVEOPT:
            return self._go_opaque("not a newstyle NBD server")
        self._answer(("greeting",))
        return 20, self._option_reply, 0, None

    def _option_reply(self, header: bytes) -> tuple:
        magic, option, reply, length = struct.unpack(">QIII", header)
        if magic != OPTION_REPLY_MAGIC:
            return self._go_opaque(f"option reply magic {magic:#x}")
        final = reply == REP_ACK or bool(reply & REP_ERROR_BIT)
        return 20, self._option_reply, length, lambda: self._option_replied(option, reply, final)

    def _option_replied(self, option: int, reply: int, final: bool) -> None:
        if not final:
            return
        self.options_answered += 1
        self._answer(("option", self.options_answered))
        if reply == REP_ACK and option == OPT_STRUCTURED_REPLY:
            self.structured = True
        if reply == REP_ACK and option == OPT_GO:
            self.transmission = True
            if not self.client.restart(28, self._request):
                self._go_opaque("QEMU sent more after NBD_OPT_GO")
            self.server.restart(4, self._reply_magic)

    def _export_name_reply(self, header: bytes) -> tuple:
        self.options_answered += 1
        self._answer(("option", self.options_answered))
        self.transmission = True
        return 4, self._reply_magic, 0, None

    def _reply_magic(self, header: bytes) -> tuple:
        (magic,) = struct.unpack(">I", header)
        if magic == SIMPLE_REPLY_MAGIC:
            return 12, self._simple_reply, 0, None
        if magic == STRUCTURED_REPLY_MAGIC:
            return 16, self._structured_reply, 0, None
        return self._go_opaque(f"reply magic {magic:#x}")

    def _simple_reply(self, header: bytes) -> tuple:
        error, handle = struct.unpack(">IQ", header)
        length = self.reads.pop(handle, 0)
        payload = length if error == 0 and not self.structured else 0
        return 4, self._reply_magic, payload, lambda: self._answer(("request", handle))

    def _structured_reply(self, header: bytes) -> tuple:
        flags, _kind, handle, length = struct.unpack(">HHQI", header)
        if not flags & REPLY_FLAG_DONE:
            return 4, self._reply_magic, length, None
        self.reads.pop(handle, None)
        return 4, self._reply_magic, length, lambda: self._answer(("request", handle))


# --- sockets ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    """What one relay serves: where it listens, the export it connects to, its timeout and TLS."""

    listen: Path
    host: str
    port: int
    io_timeout_s: float
    tls_dir: Path | None = None
    hold_file: Path | None = None


def parse_address(text: str) -> tuple[str, int]:
    """HOST:PORT (or [V6]:PORT) as (host, port); ValueError with what to write instead."""
    host, separator, port = text.rpartition(":")
    if not separator or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--connect {text!r} is not HOST:PORT; give the export's address, e.g. 10.0.0.2:10809")
    return host.strip("[]"), int(port)


def tune_tcp(sock: socket.socket, io_timeout_s: float) -> None:
    """No Nagle (trap 7.1), and a peer that stops acknowledging, or dies while idle, ends the connection."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, max(1000, int(io_timeout_s * 1000)))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(io_timeout_s)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)


def tls_context(tls_dir: Path) -> ssl.SSLContext:
    """The relay's TLS client: the node certificate from a QEMU-style directory, only the cluster CA trusted."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(cafile=str(tls_dir / "ca-cert.pem"))
    context.load_cert_chain(certfile=str(tls_dir / "client-cert.pem"), keyfile=str(tls_dir / "client-key.pem"))
    context.check_hostname = True
    return context


def _receive_exactly(sock: socket.socket, count: int, deadline: float, what: str) -> bytes:
    data = bytearray()
    while len(data) < count:
        sock.settimeout(max(deadline - monotonic(), 0.001))
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError(f"the connection closed while waiting for {what}")
        data += chunk
    return bytes(data)


class Link:
    """One QEMU connection and its connection to the export, with what each side still has to receive."""

    def __init__(self, client: socket.socket, server: socket.socket, tracker: NbdTracker,
                 tls: ssl.SSLObject | None = None, incoming: ssl.MemoryBIO | None = None,
                 outgoing: ssl.MemoryBIO | None = None) -> None:
        self.client, self.server, self.tracker = client, server, tracker
        self.tls, self.incoming, self.outgoing = tls, incoming, outgoing
        self.to_server = bytearray()
        self.to_client = bytearray()
        self.masks: dict[socket.socket, int] = {}
        self.reported_opaque = False

    def close(self) -> None:
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def _starttls(client: socket.socket, server: socket.socket, config: Config, tracker: NbdTracker,
              deadline: float) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    """Relay the greeting and QEMU's flags, then switch the export's side to TLS (NBD_OPT_STARTTLS)."""
    greeting = _receive_exactly(server, 18, deadline, "the export's greeting")
    tracker.from_server(greeting, monotonic())
    if not struct.unpack(">H", greeting[16:])[0] & FLAG_FIXED_NEWSTYLE:
        raise ConnectionError("the export does not speak fixed newstyle NBD, so it cannot do TLS")
    client.sendall(greeting)
    flags = _receive_exactly(client, 4, deadline, "QEMU's client flags")
    tracker.from_client(flags, monotonic())
    server.sendall(flags + struct.pack(">QII", IHAVEOPT, OPT_STARTTLS, 0))
    _magic, _option, reply, length = struct.unpack(">QIII", _receive_exactly(server, 20, deadline, "STARTTLS"))
    if length:
        _receive_exactly(server, length, deadline, "the STARTTLS reply")
    if reply != REP_ACK:
        raise ConnectionError(f"the export refused TLS (NBD reply {reply:#x}); is it started with tls-creds?")
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = tls_context(config.tls_dir).wrap_bio(incoming, outgoing, server_hostname=config.host)
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            server.sendall(outgoing.read())
            incoming.write(_receive_some(server, deadline, "the TLS handshake"))
    server.sendall(outgoing.read())
    return tls, incoming, outgoing


def _receive_some(sock: socket.socket, deadline: float, what: str) -> bytes:
    sock.settimeout(max(deadline - monotonic(), 0.001))
    data = sock.recv(RECEIVE_BYTES)
    if not data:
        raise ConnectionError(f"the connection closed during {what}")
    return data


def open_link(client: socket.socket, config: Config) -> Link:
    """Connect to the export for one QEMU connection (and do TLS); raises OSError within the timeout."""
    deadline = monotonic() + config.io_timeout_s
    tracker = NbdTracker(monotonic())
    server = socket.create_connection((config.host, config.port), timeout=config.io_timeout_s)
    try:
        tune_tcp(server, config.io_timeout_s)
        tls = incoming = outgoing = None
        if config.tls_dir is not None:
            tls, incoming, outgoing = _starttls(client, server, config, tracker, deadline)
        for sock in (client, server):
            sock.setblocking(False)
        return Link(client, server, tracker, tls, incoming, outgoing)
    except BaseException:
        server.close()
        raise


class Cut(Exception):
    """A link was cut or lost; `code` is the relay's exit status."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _closed_by_peer(sock: socket.socket, wait_s: float) -> bool:
    """Whether the other end of `sock` closes it within `wait_s` (its end of stream is waiting to be read)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLHUP)
    poller.poll(int(wait_s * 1000))
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class Relay:
    """The relay's loop: accept QEMU's connections, pass bytes both ways, and cut on the timeout."""

    def __init__(self, config: Config, listener: socket.socket, listener_inode: int) -> None:
        self.config = config
        self.listener = listener
        self.listener_inode = listener_inode
        self.selector = selectors.DefaultSelector()
        self.links: list[Link] = []
        self.ready: queue.SimpleQueue[Link] = queue.SimpleQueue()
        self.wake_reader, self.wake_writer = socket.socketpair()
        self.stopping = False
        self.released = False
        self.peer = f"{config.host}:{config.port}"

    def stop(self) -> None:
        """Ask the loop to end (safe from a signal handler or another thread)."""
        self.stopping = True
        with contextlib.suppress(OSError):
            self.wake_writer.send(b"x")

    def release(self) -> None:
        """Let a held cut through (SIGUSR1): QEMU's connections close, its mirror job fails, the guest goes on."""
        self.released = True
        with contextlib.suppress(OSError):
            self.wake_writer.send(b"x")

    def run(self) -> int:
        """Serve until stopped (0), a cut on the timeout (3) or a lost export (4); returns the exit status."""
        self.listener.setblocking(False)
        self.wake_reader.setblocking(False)
        self.selector.register(self.listener, selectors.EVENT_READ, ("listen", None))
        self.selector.register(self.wake_reader, selectors.EVENT_READ, ("wake", None))
        log.info("relaying %s to %s (io timeout %g s%s)", self.config.listen, self.peer, self.config.io_timeout_s,
                 ", TLS to the export" if self.config.tls_dir else "")
        try:
            while not self.stopping:
                self._step()
            log.info("stopped")
            return EXIT_STOPPED
        except Cut as cut:
            if self.config.hold_file is not None:
                self._hold(cut)
            log.error("%s; exiting %d", cut, cut.code)
            return cut.code
        finally:
            self._close_all()

    def _hold(self, cut: Cut) -> None:
        """Fence-peer (DRBD's resource-and-stonith): after a cut, the export's side is closed but QEMU's is kept
        open and unanswered, so the guest's writes wait instead of going on without the secondary, until the
        node daemon has recorded the secondary's copy as DEGRADED in the cluster's log and releases the relay
        (SIGUSR1), or stops it. The hold file says the relay holds, and why."""
        for link in self.links:
            for sock in (link.client, link.server):
                if link.masks.get(sock):
                    self.selector.unregister(sock)
            link.masks.clear()
            with contextlib.suppress(OSError):
                link.server.close()
        temporary = self.config.hold_file.with_name(f".{self.config.hold_file.name}.tmp")
        temporary.write_text(f"{cut.code} {cut}\n")
        os.replace(temporary, self.config.hold_file)
        log.error("%s; holding the guest's writes until released", cut)
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(self.listener)
        while not (self.released or self.stopping):
            for _key, _mask in self.selector.select(IDLE_POLL_S):
                with contextlib.suppress(BlockingIOError):
                    while self.wake_reader.recv(4096):
                        pass
        log.info("released" if self.released else "stopped while holding")

    def _step(self) -> None:
        for key, mask in self.selector.select(self._check_deadlines()):
            kind, link = key.data
            if kind == "link":
                if link in self.links:
                    self._service(link, key.fileobj, mask)
            elif kind == "listen":
                self._accept()
            else:
                self._woken()

    def _check_deadlines(self) -> float:
        """Cut a link whose oldest request is past the timeout; else how long until the next could be."""
        now = monotonic()
        wait = IDLE_POLL_S
        for link in self.links:
            since = link.tracker.owed_since()
            if since is None:
                continue
            if now - since >= self.config.io_timeout_s:
                rule = ("no byte came back since one was sent" if link.tracker.opaque
                        else f"{link.tracker.pending()} request(s) unanswered, the oldest")
                raise Cut(EXIT_TIMEOUT, f"cut the connection to the export at {self.peer}: {rule} for "
                                        f"{now - since:.2f} s (io timeout {self.config.io_timeout_s:g} s)")
            wait = min(wait, since + self.config.io_timeout_s - now)
        return wait

    # Connections.
    def _accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except BlockingIOError:
            return
        client.setblocking(True)
        threading.Thread(target=self._set_up, args=(client,), daemon=True).start()

    def _set_up(self, client: socket.socket) -> None:
        try:
            self.ready.put(open_link(client, self.config))
        except (OSError, ValueError) as error:
            log.warning("could not open the export at %s for a new connection (%s); closed that connection",
                        self.peer, error)
            client.close()
        finally:
            with contextlib.suppress(OSError):
                self.wake_writer.send(b"x")

    def _woken(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self.wake_reader.recv(4096):
                pass
        while not self.ready.empty():
            link = self.ready.get_nowait()
            if self.stopping:
                link.close()
                continue
            self.links.append(link)
            log.info("connected to the export at %s%s", self.peer, " over TLS" if link.tls else "")
            self._update(link)

    def _drop(self, link: Link, why: str) -> None:
        log.info("%s; closed the connection to the export at %s", why, self.peer)
        for sock in (link.client, link.server):
            if link.masks.get(sock):
                self.selector.unregister(sock)
        link.masks.clear()
        link.close()
        self.links.remove(link)

    def _close_all(self) -> None:
        for link in list(self.links):
            self._drop(link, "relay ending")
        self.selector.close()
        self.listener.close()
        with contextlib.suppress(OSError):
            if os.stat(self.config.listen).st_ino == self.listener_inode:
                os.unlink(self.config.listen)

    # Bytes.
    def _service(self, link: Link, sock: socket.socket, mask: int) -> None:
        if sock is link.server:
            if mask & selectors.EVENT_WRITE:
                self._send(link, link.server, link.to_server)
            if mask & selectors.EVENT_READ:
                self._from_server(link)
            if link not in self.links:
                return
        else:
            if mask & selectors.EVENT_WRITE and not self._send(link, link.client, link.to_client):
                return
            if mask & selectors.EVENT_READ and not self._from_client(link):
                return
        self._update(link)

    def _from_client(self, link: Link) -> bool:
        try:
            data = link.client.recv(RECEIVE_BYTES)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            self._send(link, link.server, link.to_server)
            self._drop(link, "QEMU closed its connection")
            return False
        link.tracker.from_client(data, monotonic())
        if link.tracker.opaque and not link.reported_opaque:
            link.reported_opaque = True
            log.warning("cannot follow the NBD framing any more (%s): this connection is cut on the byte rule, "
                        "which may miss one stuck request among several", link.tracker.opaque_reason)
        if link.tls is not None:
            try:
                link.tls.write(data)
            except ssl.SSLError as error:
                raise Cut(EXIT_PEER_LOST, f"TLS with the export at {self.peer} failed: {error}") from None
            link.to_server += link.outgoing.read()
        else:
            link.to_server += data
        self._send(link, link.server, link.to_server)
        return True

    def _from_server(self, link: Link) -> None:
        try:
            raw = link.server.recv(RECEIVE_BYTES)
        except BlockingIOError:
            return
        except OSError as error:
            raise Cut(EXIT_PEER_LOST, f"lost the connection to the export at {self.peer}: {error}") from None
        if not raw:
            self._export_closed(link, f"the export at {self.peer} closed the connection")
            return
        try:
            plain = self._decrypt(link, raw) if link.tls is not None else raw
        except ssl.SSLZeroReturnError:
            self._export_closed(link, f"the export at {self.peer} ended the TLS session")
            return
        link.tracker.from_server(plain, monotonic())
        if plain:
            link.to_client += plain
            self._send(link, link.client, link.to_client)

    def _export_closed(self, link: Link, why: str) -> None:
        """The export closed its side: the end of a disconnect QEMU asked for, or a lost secondary (a cut)."""
        # QEMU closes its end right after NBD_CMD_DISC, and the export may answer the DISC by closing
        # first; when the DISC was not seen (TLS through the relay), give QEMU's close a moment to arrive.
        if link.tracker.disconnecting or _closed_by_peer(link.client, CLOSE_GRACE_S):
            self._send(link, link.client, link.to_client)
            if link in self.links:
                self._drop(link, f"{why} after QEMU disconnected")
            return
        raise Cut(EXIT_PEER_LOST, why)

    def _decrypt(self, link: Link, raw: bytes) -> bytes:
        link.incoming.write(raw)
        chunks = []
        try:
            while True:
                chunk = link.tls.read(RECEIVE_BYTES)
                if not chunk:
                    break
                chunks.append(chunk)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            raise
        except ssl.SSLError as error:
            raise Cut(EXIT_PEER_LOST, f"TLS with the export at {self.peer} failed: {error}") from None
        pending = link.outgoing.read()
        if pending:
            link.to_server += pending
            self._send(link, link.server, link.to_server)
        return b"".join(chunks)

    def _send(self, link: Link, sock: socket.socket, buffer: bytearray) -> bool:
        """Write what the socket takes now; False if the link was dropped (QEMU's side broke)."""
        while buffer:
            try:
                sent = sock.send(buffer)
            except BlockingIOError:
                break
            except OSError as error:
                if sock is link.server:
                    raise Cut(EXIT_PEER_LOST, f"lost the connection to the export at {self.peer}: {error}") from None
                self._drop(link, f"QEMU's connection broke ({error})")
                return False
            del buffer[:sent]
        return True

    def _update(self, link: Link) -> None:
        """Watch each socket for what it can do next, reading no more while the other side is backed up."""
        if not link.to_server and not link.to_client and link.masks.get(link.server) == selectors.EVENT_READ \
                and link.masks.get(link.client) == selectors.EVENT_READ:
            return      # the usual case: both sides only read, as before
        wanted = {
            link.client: (selectors.EVENT_READ if len(link.to_server) < HIGH_WATER_BYTES else 0)
            | (selectors.EVENT_WRITE if link.to_client else 0),
            link.server: (selectors.EVENT_READ if len(link.to_client) < HIGH_WATER_BYTES else 0)
            | (selectors.EVENT_WRITE if link.to_server else 0),
        }
        for sock, mask in wanted.items():
            current = link.masks.get(sock, 0)
            if mask == current:
                continue
            if not current:
                self.selector.register(sock, mask, ("link", link))
            elif not mask:
                self.selector.unregister(sock)
            else:
                self.selector.modify(sock, mask, ("link", link))
            link.masks[sock] = mask


# --- the process -----------------------------------------------------------------------------

def listen_unix(path: Path) -> tuple[socket.socket, int]:
    """A listening unix socket at `path` (mode 0600), bound under a temporary name and renamed into place."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if len(os.fsencode(temporary)) > 107:
        raise ValueError(f"the socket path {path} is too long for a unix socket (at most about 90 bytes); "
                         "use a shorter run directory")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(temporary))
    finally:
        os.umask(old)
    sock.listen(16)
    os.replace(temporary, path)
    return sock, os.stat(path).st_ino


def relay_command(config: Config, python: str = sys.executable) -> list[str]:
    """The argv that runs a relay for `config` (start it in a session of its own, so it outlives the daemon)."""
    argv = [python, "-m", "appliance.drivers.nbd_relay", "--listen", str(config.listen),
            "--connect", f"[{config.host}]:{config.port}" if ":" in config.host else f"{config.host}:{config.port}",
            "--io-timeout", f"{config.io_timeout_s:g}"]
    if config.tls_dir is not None:
        argv += ["--tls-dir", str(config.tls_dir)]
    if config.hold_file is not None:
        argv += ["--hold-file", str(config.hold_file)]
    return argv


def _arguments(argv: list[str] | None) -> tuple[Config, str]:
    parser = argparse.ArgumentParser(prog="python -m appliance.drivers.nbd_relay",
                                     description="Relay QEMU's NBD client to a replica's export, cutting a "
                                                 "secondary that stops answering.")
    parser.add_argument("--listen", required=True, type=Path, help="unix socket for QEMU's NBD client")
    parser.add_argument("--connect", required=True, help="the export's HOST:PORT")
    parser.add_argument("--io-timeout", required=True, type=float, help="seconds a request may stay unanswered")
    parser.add_argument("--tls-dir", type=Path, help="ca-cert.pem, client-cert.pem, client-key.pem: TLS to the export")
    parser.add_argument("--hold-file", type=Path, help="after a cut, hold QEMU's connection (its writes wait) "
                        "and write the reason here, until SIGUSR1 releases it (fence-peer)")
    parser.add_argument("--token", default="", help="ignored: marks this process as the relay its pid file names")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    try:
        host, port = parse_address(args.connect)
    except ValueError as error:
        parser.error(str(error))
    if not args.io_timeout > 0:
        parser.error(f"--io-timeout must be a positive number of seconds, not {args.io_timeout}")
    if args.tls_dir is not None:
        try:
            tls_context(args.tls_dir)
        except (OSError, ssl.SSLError) as error:
            parser.error(f"--tls-dir {args.tls_dir} does not hold a usable ca-cert.pem, client-cert.pem and "
                         f"client-key.pem ({error})")
    return Config(args.listen, host, port, args.io_timeout, args.tls_dir, args.hold_file), args.log_level


def main(argv: list[str] | None = None) -> int:
    """Run a relay until it is stopped or cuts; the exit status says which (see the module docstring)."""
    config, log_level = _arguments(argv)
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s nbd-relay[%(process)d] %(levelname)s %(message)s")
    try:
        listener, inode = listen_unix(config.listen)
    except (OSError, ValueError) as error:
        log.error("cannot listen on %s: %s", config.listen, error)
        return EXIT_USAGE
    relay = Relay(config, listener, inode)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: relay.stop())
    signal.signal(signal.SIGUSR1, lambda *_: relay.release())
    return relay.run()


if __name__ == "__main__":
    sys.exit(main())
