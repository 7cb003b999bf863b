"""Tests of appliance/drivers/nbd_relay.py: what the secondary owes, and the relay process with fake NBD peers."""

import contextlib
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from appliance.drivers import nbd_relay
from appliance.drivers.nbd_relay import (
    CMD_DISC, CMD_READ, CMD_WRITE, IHAVEOPT, NBDMAGIC, OPT_GO, OPT_STARTTLS, OPT_STRUCTURED_REPLY,
    OPTION_REPLY_MAGIC, REP_ACK, REQUEST_MAGIC, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC, NbdTracker,
)

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 0.5


# --- NBD messages, as QEMU and qemu-storage-daemon send them ----------------------------------

def greeting() -> bytes:
    return struct.pack(">QQH", NBDMAGIC, IHAVEOPT, 3)


def option(number: int, data: bytes = b"") -> bytes:
    return struct.pack(">QII", IHAVEOPT, number, len(data)) + data


def go_option(name: bytes = b"disk0") -> bytes:
    return option(OPT_GO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))


def option_reply(number: int, reply: int = REP_ACK, data: bytes = b"") -> bytes:
    return struct.pack(">QIII", OPTION_REPLY_MAGIC, number, reply, len(data)) + data


def request(command: int, handle: int, length: int, payload: bytes = b"") -> bytes:
    return struct.pack(">IHHQQI", REQUEST_MAGIC, 0, command, handle, 0, length) + payload


def simple_reply(handle: int, error: int = 0, payload: bytes = b"") -> bytes:
    return struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, error, handle) + payload


def structured_reply(handle: int, done: bool, payload: bytes = b"") -> bytes:
    return struct.pack(">IHHQI", STRUCTURED_REPLY_MAGIC, 1 if done else 0, 1, handle, len(payload)) + payload


def in_transmission(structured: bool = False) -> NbdTracker:
    """A tracker that has seen a whole handshake (with structured replies if asked)."""
    tracker = NbdTracker(0.0)
    tracker.from_server(greeting(), 0.0)
    tracker.from_client(struct.pack(">I", 3), 0.0)
    if structured:
        tracker.from_client(option(OPT_STRUCTURED_REPLY), 0.0)
        tracker.from_server(option_reply(OPT_STRUCTURED_REPLY), 0.0)
    tracker.from_client(go_option(), 0.0)
    tracker.from_server(option_reply(OPT_GO, 3, b"\0" * 12) + option_reply(OPT_GO), 0.0)
    return tracker


def feed_bytewise(feed, data: bytes, now: float) -> None:
    for position in range(len(data)):
        feed(data[position:position + 1], now)


# --- the tracker -----------------------------------------------------------------------------

def test_the_greeting_is_owed_from_the_start():
    """A new connection waits for the export's greeting: a server that never greets is owed one."""
    tracker = NbdTracker(5.0)
    assert tracker.owed_since() == 5.0
    tracker.from_server(greeting(), 5.1)
    assert tracker.owed_since() is None


def test_an_option_is_owed_until_its_final_reply():
    """NBD_OPT_GO stays owed through informational replies and is answered by the ACK."""
    tracker = NbdTracker(0.0)
    tracker.from_server(greeting(), 0.0)
    tracker.from_client(struct.pack(">I", 3) + go_option(), 1.0)
    tracker.from_server(option_reply(OPT_GO, 3, b"\0" * 12), 1.1)
    assert tracker.owed_since() == 1.0
    tracker.from_server(option_reply(OPT_GO), 1.2)
    assert tracker.owed_since() is None
    assert tracker.transmission


def test_an_idle_connection_owes_nothing():
    """After the handshake and with every request answered, nothing is owed, however long it stays idle."""
    tracker = in_transmission()
    tracker.from_client(request(CMD_WRITE, 1, 4096, b"x" * 4096), 1.0)
    tracker.from_server(simple_reply(1), 1.001)
    assert tracker.owed_since() is None and tracker.pending() == 0


def test_a_write_is_owed_until_its_reply_even_fed_byte_by_byte():
    """Write payloads are skipped whatever the chunking, and the reply answers the request."""
    tracker = in_transmission()
    feed_bytewise(tracker.from_client, request(CMD_WRITE, 7, 1000, b"\x25" * 1000) + request(CMD_WRITE, 8, 3), 2.0)
    feed_bytewise(tracker.from_client, b"abc", 2.5)
    assert tracker.pending() == 2
    feed_bytewise(tracker.from_server, simple_reply(7), 3.0)
    assert tracker.owed_since() == 2.0      # request 8 arrived (header complete) at 2.0
    tracker.from_server(simple_reply(8), 3.1)
    assert tracker.owed_since() is None


def test_one_stuck_request_among_answered_ones_stays_owed():
    """A reply to a later request does not hide an earlier one the export never answers (the byte rule would)."""
    tracker = in_transmission()
    tracker.from_client(request(CMD_WRITE, 1, 512, b"a" * 512), 1.0)
    tracker.from_client(request(CMD_WRITE, 2, 512, b"b" * 512), 1.1)
    tracker.from_server(simple_reply(2), 1.2)
    assert tracker.owed_since() == 1.0
    assert not tracker.opaque


def test_a_simple_read_reply_carries_the_data():
    """Without structured replies, a read's reply is followed by its data, which must not be parsed as a reply."""
    tracker = in_transmission()
    tracker.from_client(request(CMD_READ, 3, 16), 1.0)
    tracker.from_client(request(CMD_READ, 4, 16), 1.0)
    data = struct.pack(">IIQ", STRUCTURED_REPLY_MAGIC, 0, 4)     # data that looks like a reply header
    tracker.from_server(simple_reply(3, payload=data), 1.1)
    assert tracker.pending() == 1 and not tracker.opaque
    tracker.from_server(simple_reply(4, payload=b"\0" * 16), 1.2)
    assert tracker.owed_since() is None


def test_a_structured_read_is_owed_until_the_chunk_flagged_done():
    """Structured replies come in chunks; only the one with NBD_REPLY_FLAG_DONE answers the read."""
    tracker = in_transmission(structured=True)
    tracker.from_client(request(CMD_READ, 9, 8192), 1.0)
    tracker.from_server(structured_reply(9, False, b"\1" * 4096), 1.1)
    assert tracker.owed_since() == 1.0
    tracker.from_server(structured_reply(9, True, b"\2" * 4096), 1.2)
    assert tracker.owed_since() is None


def test_a_read_whose_data_stops_halfway_stays_owed():
    """A reply whose data has not all arrived does not yet answer its request."""
    tracker = in_transmission()
    tracker.from_client(request(CMD_READ, 5, 4096), 1.0)
    tracker.from_server(simple_reply(5, payload=b"\0" * 100), 1.1)
    assert tracker.owed_since() == 1.0


def test_disconnect_owes_no_reply():
    """NBD_CMD_DISC is never answered, so it is not owed."""
    tracker = in_transmission()
    tracker.from_client(request(CMD_DISC, 6, 0), 1.0)
    assert tracker.owed_since() is None and tracker.disconnecting


def test_tls_through_the_relay_falls_back_to_the_byte_rule():
    """When QEMU negotiates TLS itself the framing is hidden: owed since the first byte after the last reply."""
    tracker = NbdTracker(0.0)
    tracker.from_server(greeting(), 0.0)
    tracker.from_client(struct.pack(">I", 3) + option(OPT_STARTTLS), 1.0)
    assert tracker.opaque
    tracker.from_server(b"\x17\x03\x03 opaque", 1.5)
    assert tracker.owed_since() is None
    tracker.from_client(b"\x17\x03\x03 more", 2.0)
    tracker.from_client(b"\x17\x03\x03 still more", 2.5)
    assert tracker.owed_since() == 2.0


def test_the_byte_rule_misses_a_stuck_request_hidden_by_a_late_reply():
    """The limit of the byte rule, documented in the module: one reply after the last request clears it."""
    tracker = NbdTracker(0.0)
    tracker.from_server(greeting(), 0.0)
    tracker.from_client(struct.pack(">I", 3) + option(OPT_STARTTLS), 0.0)
    tracker.from_client(b"request one", 1.0)
    tracker.from_client(b"request two", 1.1)
    tracker.from_server(b"reply to one", 1.2)
    assert tracker.owed_since() is None


def test_an_unknown_reply_magic_falls_back_to_the_byte_rule():
    """Bytes that are not NBD make the tracker opaque rather than guess."""
    tracker = in_transmission()
    tracker.from_client(request(CMD_WRITE, 1, 0), 1.0)
    tracker.from_server(b"\xde\xad\xbe\xef" + b"\0" * 12, 1.1)
    assert tracker.opaque and tracker.owed_since() is None


def test_an_address_without_a_port_is_refused():
    """--connect needs HOST:PORT; the message shows the form."""
    assert nbd_relay.parse_address("10.0.0.2:10809") == ("10.0.0.2", 10809)
    assert nbd_relay.parse_address("[::1]:5") == ("::1", 5)
    with pytest.raises(ValueError, match="HOST:PORT"):
        nbd_relay.parse_address("10.0.0.2")


def test_the_export_connection_has_nodelay_and_a_user_timeout():
    """The TCP leg never waits for Nagle and gives up on a peer that stops acknowledging."""
    with socket.create_server(("127.0.0.1", 0)) as server, socket.create_connection(server.getsockname()) as sock:
        nbd_relay.tune_tcp(sock, 2.5)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 2500
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1


# --- the relay process with fake peers --------------------------------------------------------

@pytest.fixture
def short_dir():
    """A directory with a short path: unix socket paths must stay under 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="nbr", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class FakeExport:
    """A fake secondary: greets, accepts NBD_OPT_GO, then answers each write unless told to stop answering."""

    def __init__(self, answer: bool = True) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.answer = answer
        self.answer_only: set[int] | None = None
        self.received = bytearray()
        self.connections: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            conn, _ = self.listener.accept()
            self.connections.append(conn)
            conn.sendall(greeting())
            receive_exactly(conn, 4)
            header = receive_exactly(conn, 16)
            receive_exactly(conn, struct.unpack(">QII", header)[2])
            conn.sendall(option_reply(OPT_GO))
            while True:
                header = receive_exactly(conn, 28)
                _, _, command, handle, _, length = struct.unpack(">IHHQQI", header)
                payload = receive_exactly(conn, length) if command == CMD_WRITE else b""
                self.received += payload
                if self.answer and (self.answer_only is None or handle in self.answer_only):
                    conn.sendall(simple_reply(handle))

    def close(self) -> None:
        for conn in self.connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self.listener.close()


def receive_exactly(sock: socket.socket, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return bytes(data)


class RelayProcess:
    """`python -m appliance.drivers.nbd_relay` as the node daemon runs it, killed by pid at the end."""

    def __init__(self, directory: Path, port: int, timeout_s: float = TIMEOUT_S, hold: bool = False) -> None:
        self.path = directory / "relay.sock"
        self.stderr_path = directory / "relay.log"
        self.hold_path = directory / "hold"
        config = nbd_relay.Config(self.path, "127.0.0.1", port, timeout_s, hold_file=self.hold_path if hold else None)
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(nbd_relay.relay_command(config), cwd=ROOT, stderr=stderr,
                                            start_new_session=True)
        deadline = time.monotonic() + 10
        while not self.path.exists():
            assert self.process.poll() is None, self.log()
            assert time.monotonic() < deadline, "the relay did not listen within 10 s"
            time.sleep(0.01)

    def log(self) -> str:
        return self.stderr_path.read_text()

    def connect(self) -> socket.socket:
        """A fake QEMU: connect, read the greeting, send the flags and NBD_OPT_GO, read the ACK."""
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(10)
        client.connect(str(self.path))
        assert receive_exactly(client, 18) == greeting()
        client.sendall(struct.pack(">I", 3) + go_option())
        assert receive_exactly(client, 20) == option_reply(OPT_GO)
        return client

    def kill(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()


@pytest.fixture
def peers(short_dir):
    made: list = []

    def make(answer: bool = True, timeout_s: float = TIMEOUT_S, hold: bool = False) -> tuple[FakeExport, RelayProcess]:
        export = FakeExport(answer)
        made.append(export)
        relay = RelayProcess(short_dir, export.port, timeout_s, hold)
        made.append(relay)
        return export, relay

    yield make
    for thing in reversed(made):
        if isinstance(thing, RelayProcess):
            thing.kill()
        else:
            thing.close()


def test_bytes_pass_through_unchanged(peers):
    """A write reaches the export byte for byte and its reply reaches QEMU."""
    export, relay = peers()
    client = relay.connect()
    payload = os.urandom(300_000)
    client.sendall(request(CMD_WRITE, 42, len(payload), payload))
    assert receive_exactly(client, 16) == simple_reply(42)
    assert bytes(export.received) == payload


def test_a_request_the_export_never_answers_is_cut_within_the_timeout(peers):
    """A stopped secondary: QEMU's connection ends within the timeout, the relay says so and exits 3."""
    export, relay = peers(answer=False)
    client = relay.connect()
    started = time.monotonic()
    client.sendall(request(CMD_WRITE, 1, 4096, b"w" * 4096))
    assert client.recv(16) == b""
    assert TIMEOUT_S - 0.05 <= time.monotonic() - started < TIMEOUT_S + 1.0
    assert relay.process.wait(5) == nbd_relay.EXIT_TIMEOUT
    assert "cut the connection to the export" in relay.log()
    assert not relay.path.exists()


def test_an_idle_connection_is_never_cut(peers):
    """With every request answered, the connection stays up well past the timeout."""
    _export, relay = peers()
    client = relay.connect()
    client.sendall(request(CMD_WRITE, 1, 512, b"i" * 512))
    assert receive_exactly(client, 16) == simple_reply(1)
    time.sleep(TIMEOUT_S * 3)
    assert relay.process.poll() is None
    client.sendall(request(CMD_WRITE, 2, 512, b"j" * 512))
    assert receive_exactly(client, 16) == simple_reply(2)


def test_one_unanswered_request_is_cut_while_others_are_answered(peers):
    """A secondary stuck on one write is cut even though it still answers the others."""
    export, relay = peers()
    export.answer_only = {2, 3, 4, 5, 6, 7, 8}
    client = relay.connect()
    started = time.monotonic()
    client.sendall(request(CMD_WRITE, 1, 512, b"s" * 512))
    for handle in range(2, 9):
        client.sendall(request(CMD_WRITE, handle, 512, b"t" * 512))
        assert receive_exactly(client, 16) == simple_reply(handle)
        time.sleep(TIMEOUT_S / 8)
    assert client.recv(16) == b""
    assert time.monotonic() - started < TIMEOUT_S + 1.0
    assert relay.process.wait(5) == nbd_relay.EXIT_TIMEOUT


def test_an_export_that_closes_the_connection_ends_the_relay(peers):
    """A dead secondary (connection closed) ends QEMU's connection and the relay exits 4."""
    export, relay = peers()
    client = relay.connect()
    export.close()
    assert client.recv(16) == b""
    assert relay.process.wait(5) == nbd_relay.EXIT_PEER_LOST


def test_a_held_cut_keeps_qemu_waiting_until_released(peers):
    """Fence-peer: with a hold file, a cut (here the export stops answering) closes the export's side only;
    QEMU's connection stays open and unanswered (its writes wait) and the hold file says why, until SIGUSR1
    releases it: then QEMU's connection ends and the relay exits with the cut's status."""
    export, relay = peers(answer=False, hold=True)
    client = relay.connect()
    client.sendall(request(CMD_WRITE, 1, 4096, b"w" * 4096))
    deadline = time.monotonic() + TIMEOUT_S + 5
    while not relay.hold_path.exists():
        assert time.monotonic() < deadline, relay.log()
        time.sleep(0.02)
    assert relay.hold_path.read_text().startswith(f"{nbd_relay.EXIT_TIMEOUT} cut the connection to the export")
    client.settimeout(TIMEOUT_S * 2)
    with pytest.raises(TimeoutError):
        client.recv(16)             # still open, and nothing comes: the guest's write waits
    assert relay.process.poll() is None
    os.kill(relay.process.pid, signal.SIGUSR1)
    client.settimeout(10)
    assert client.recv(16) == b""
    assert relay.process.wait(5) == nbd_relay.EXIT_TIMEOUT
    assert "released" in relay.log()


def test_an_export_lost_while_holding_is_held_as_well(peers):
    """The export closing the connection is a cut like a timeout: held, then released."""
    export, relay = peers(hold=True)
    client = relay.connect()
    export.close()
    deadline = time.monotonic() + 10
    while not relay.hold_path.exists():
        assert time.monotonic() < deadline, relay.log()
        time.sleep(0.02)
    assert relay.hold_path.read_text().startswith(str(nbd_relay.EXIT_PEER_LOST))
    os.kill(relay.process.pid, signal.SIGUSR1)
    assert client.recv(16) == b""
    assert relay.process.wait(5) == nbd_relay.EXIT_PEER_LOST


def test_an_unreachable_export_closes_only_that_connection(short_dir):
    """Nothing listens at the export's address: QEMU's connection is closed, the relay keeps serving."""
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]
    relay = RelayProcess(short_dir, port)
    try:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(10)
        client.connect(str(relay.path))
        assert client.recv(18) == b""
        assert relay.process.poll() is None
        assert "could not open the export" in relay.log()
    finally:
        relay.kill()


def test_the_socket_is_private_and_sigterm_stops_cleanly(peers):
    """The listening socket has mode 0600; SIGTERM ends the relay with 0 and removes the socket."""
    _export, relay = peers()
    assert stat.S_IMODE(os.stat(relay.path).st_mode) == 0o600
    relay.connect()
    relay.process.send_signal(signal.SIGTERM)
    assert relay.process.wait(5) == nbd_relay.EXIT_STOPPED
    assert not relay.path.exists()


def test_a_bad_timeout_is_a_usage_error(short_dir):
    """A timeout that is not positive is refused with exit status 2 and a message."""
    done = subprocess.run([sys.executable, "-m", "appliance.drivers.nbd_relay", "--listen", str(short_dir / "s"),
                           "--connect", "127.0.0.1:1", "--io-timeout", "0"], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == nbd_relay.EXIT_USAGE
    assert "--io-timeout must be a positive number" in done.stderr
