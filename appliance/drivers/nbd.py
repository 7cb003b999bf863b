"""The secondary's side of a replicated disk: one qemu-storage-daemon per disk copy, exporting it over NBD.

`ExportDaemon` runs `qemu-storage-daemon` (QSD) on the secondary node, exporting the copy's raw file,
writable, as NBD export `disk<i>`; the primary QEMU mirrors every guest write into it through its relay
(appliance/drivers/nbd_relay.py, appliance/drivers/mirror.py). Everything the node daemon needs to find
a running export again after a restart lives in the copy's state directory:

- `pid`: "PID TOKEN". The token is QSD's argv[0] (QSD accepts no free argument), so a reused pid is never
  mistaken for the export, and the node watchdog's killer could find it the way it finds instances;
- `export.json`: host, port, pid, token, image, export name, TLS and flush policy of the last start. The
  port is kept after a stop, so a restarted export asks for the same port first and the primary's relay
  need not be told a new address;
- `qmp.sock`: QSD's QMP monitor (`healthy`, `stop`); `qsd.log`: its stdout and stderr.

The process is started in a session of its own, so it outlives the daemon; `ensure_export` is idempotent
and returns the running export's address without touching it.

TCP_NODELAY (trap 7.1: QEMU 7.2's NBD server never sets it). The daemon creates the listening socket
itself, sets TCP_NODELAY on it, binds it to port 0 (or the recorded port) on the node's address and hands
it to QSD as an inherited fd (`--nbd-server addr.type=fd,addr.str=N`). Linux copies TCP_NODELAY from a
listening socket to the sockets it accepts: verified on the accepted socket itself (pidfd_getfd) and by
speed (4000 x 4 KiB writes at depth 16 over TCP: 0.15 s with the flag, 10.6 s without).

TLS: with `tls_dir` (a QEMU-style directory with ca-cert.pem, server-cert.pem and server-key.pem: the
node's certificate and the cluster CA; `write_tls_dir` makes one) the NBD server requires TLS and a client
certificate issued by the cluster CA (`verify-peer=on`); a client without one, or with one from another
CA, is refused during the handshake.

Flush policy (shared/reference/qemu.md 6.8, trap 7.3): the write-blocking mirror does not pass the
guest's flushes to the target, so without more an acknowledged write is only in the secondary's page
cache, and a power loss of the secondary (or of both nodes at once) can lose writes the guest was told
were durable; a later failover to that copy would then serve stale data under a file system that
believes otherwise. DRBD's protocol C, which this template stands in for, acknowledges a write once it
is on both disks. So `writethrough=True` is the default: the export fdatasyncs every write before it
answers, and an acknowledged write is on the secondary's disk as it is on the primary's after the
guest's own flush. The cost is one fdatasync per write, paid by every write, not only by flushes (the
mirror gives the export no way to tell them apart). Measured with bench/nbd_path.py (4 KiB writes at
depth 1, qemu-img bench, plain QEMU -> relay -> TLS -> export, ext4 on a virtio disk, three runs at load
1.3-1.9): 4200-7400 IOPS with writethrough off, 1000-2100 with it on, so about 3.5 times fewer small
synchronous writes (the local file with a flush after every write: 1800-5400 IOPS). A TCG guest does
1500-2000 such writes a second through the mirror (reference 8.4), so expect it to lose a good part of
its small-write rate; large writes lose little.
Pass `writethrough=False` only where the secondary's copy is treated as DEGRADED after any unclean
restart of its node, or its disk cache survives power loss.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import trio

from appliance import pki
from appliance.drivers import qmp
from appliance.drivers.base import DriverError

BINARY = "qemu-storage-daemon"
PID_NAME = "pid"
RECORD_NAME = "export.json"
QMP_NAME = "qmp.sock"
LOG_NAME = "qsd.log"
TOKEN_PREFIX = "cairn-export-"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
POLL_S = 0.01
# sun_path holds 108 bytes with its terminating zero.
MAX_SOCKET_PATH_BYTES = 107


@dataclass(frozen=True)
class ExportRecord:
    """What `export.json` says about the last start of an export."""

    host: str
    port: int
    pid: int
    token: str
    image: str
    export: str
    tls: bool
    writethrough: bool

    @property
    def address(self) -> str:
        """HOST:PORT (an IPv6 host in brackets), as the relay's --connect takes it."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _process_facts(pid: int) -> tuple[str, list[bytes]] | None:
    """A process's state letter and arguments from /proc, or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[0], arguments


def process_alive(pid: int, token: str) -> bool:
    """Whether `pid` is a live process (not a zombie) with `token` as one of its arguments."""
    facts = _process_facts(pid)
    return facts is not None and facts[0] not in ("Z", "X") and token.encode() in facts[1]


def process_gone(pid: int, token: str) -> bool:
    """Whether the process started with `token` has ended and let go of its files and sockets.

    Not the same as `not process_alive`: between exec or exit and the rest of the kernel's work a
    process shows no arguments at all, and an exiting one still holds its sockets (its port) then.
    """
    facts = _process_facts(pid)
    if facts is None or facts[0] in ("Z", "X"):
        return True
    return facts[1] != [b""] and token.encode() not in facts[1]


def write_tls_dir(directory: Path, ca_cert_pem: bytes, cert_pem: bytes, key_pem: bytes, endpoint: str) -> Path:
    """A QEMU-style credentials directory for `endpoint` ("server" or "client"): ca-cert.pem, and
    `<endpoint>-cert.pem` with `<endpoint>-key.pem` (mode 0600). Returns the directory."""
    if endpoint not in ("server", "client"):
        raise ValueError(f"endpoint {endpoint!r} is neither 'server' nor 'client'")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    pki.write_public_file(directory / "ca-cert.pem", ca_cert_pem, overwrite=True)
    pki.write_public_file(directory / f"{endpoint}-cert.pem", cert_pem, overwrite=True)
    pki.write_secret_file(directory / f"{endpoint}-key.pem", key_pem, overwrite=True)
    return directory


def _keyval(value: str) -> str:
    """A value inside QEMU's key=value,... option syntax: commas are doubled."""
    return value.replace(",", ",,")


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket listening on host:port (0: any free port) with TCP_NODELAY, which accepted sockets inherit."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(16)
    except BaseException:
        sock.close()
        raise
    return sock


class ExportDaemon:
    """One copy's export on the secondary: start it (idempotently), check it, stop it."""

    def __init__(self, state_dir: Path, image: Path, index: int, host: str, *, tls_dir: Path | None = None,
                 writethrough: bool = True, binary: str = BINARY, qmp_path: Path | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.image = Path(image)
        self.index = index
        self.host = host
        self.tls_dir = Path(tls_dir) if tls_dir is not None else None
        self.writethrough = writethrough
        self.binary = binary
        self._process: subprocess.Popen | None = None
        self.export = f"disk{index}"
        # The monitor's socket may live elsewhere (a short directory) when the state dir is deep.
        self.qmp_path = Path(qmp_path) if qmp_path is not None else self.state_dir / QMP_NAME
        if len(os.fsencode(self.qmp_path)) > MAX_SOCKET_PATH_BYTES:
            raise DriverError(f"the state directory {self.state_dir} is too long for a unix socket path "
                              f"({QMP_NAME} in it must stay under {MAX_SOCKET_PATH_BYTES} bytes); use a shorter one")

    # What is there.
    def record(self) -> ExportRecord | None:
        """The last start's record (also after a stop: it keeps the port), or None."""
        try:
            return ExportRecord(**json.loads((self.state_dir / RECORD_NAME).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def running(self) -> ExportRecord | None:
        """The record of the export if its process is alive, else None."""
        record = self.record()
        if record is None or not process_alive(record.pid, record.token):
            return None
        return record

    # Start.
    async def ensure_export(self, timeout_s: float = START_TIMEOUT_S) -> str:
        """Make sure the export runs and answers; return its address HOST:PORT.

        A running export is left as it is (a restarted node daemon finds it again). Otherwise QSD is
        started on the recorded port if it is free, else on a new one. DriverError if it does not come up
        within `timeout_s` (its log is quoted).
        """
        record = self.running()
        if record is not None:
            wanted = (str(self.image), self.tls_dir is not None, self.writethrough)
            if (record.image, record.tls, record.writethrough) != wanted:
                raise DriverError(f"the export in {self.state_dir} runs with image {record.image}, TLS "
                                  f"{record.tls}, writethrough {record.writethrough}, not as asked now; stop it "
                                  "first (the primary's mirror degrades until it is attached again)")
            return record.address
        record = self._start()
        deadline = trio.current_time() + timeout_s
        while not await self.healthy(max(min(1.0, deadline - trio.current_time()), 0.05)):
            status = self._process.poll() if self._process is not None else None
            if status is not None or process_gone(record.pid, record.token):
                raise DriverError(f"qemu-storage-daemon for {self.image} exited at start (status {status}): "
                                  f"{self._log_tail()}")
            if trio.current_time() >= deadline:
                self.kill()
                raise DriverError(f"qemu-storage-daemon for {self.image} did not answer within {timeout_s} s "
                                  f"and was killed: {self._log_tail()}")
            await trio.sleep(POLL_S)
        return record.address

    def _start(self) -> ExportRecord:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            self.qmp_path.unlink()
        listener = self._listen()
        try:
            token = TOKEN_PREFIX + secrets.token_hex(8)
            argv = self.command(token, listener.fileno())
            with open(self.state_dir / LOG_NAME, "ab") as log_file:
                try:
                    process = subprocess.Popen(argv, executable=self.binary, pass_fds=[listener.fileno()],
                                               stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                                               start_new_session=True)
                except OSError as error:
                    raise DriverError(f"cannot run {self.binary} ({error}); install qemu-utils on this "
                                      "node") from error
            port = listener.getsockname()[1]
        finally:
            listener.close()
        self._process = process     # kept so that this daemon reaps it if it ends while we run
        record = ExportRecord(host=self.host, port=port, pid=process.pid, token=token, image=str(self.image),
                              export=self.export, tls=self.tls_dir is not None, writethrough=self.writethrough)
        self._write(PID_NAME, f"{process.pid} {token}\n")
        self._write(RECORD_NAME, json.dumps(asdict(record), sort_keys=True) + "\n")
        return record

    def _listen(self) -> socket.socket:
        previous = self.record()
        if previous is not None and previous.host == self.host:
            with contextlib.suppress(OSError):
                return listening_socket(self.host, previous.port)
        try:
            return listening_socket(self.host, 0)
        except OSError as error:
            raise DriverError(f"cannot listen on {self.host} for the export of {self.image}: {error}; "
                              "is that one of this node's addresses?") from error

    def command(self, token: str, fd: int) -> list[str]:
        """QSD's argv (argv[0] is the token) exporting the image from the listening socket `fd`."""
        file_node, disk_node = f"file{self.index}", f"disk{self.index}"
        argv = [token, "--chardev", f"socket,id=monitor,path={_keyval(str(self.qmp_path))},server=on,wait=off",
                "--monitor", "chardev=monitor"]
        server = f"addr.type=fd,addr.str={fd}"
        if self.tls_dir is not None:
            argv += ["--object", json.dumps({"qom-type": "tls-creds-x509", "id": "tls0", "dir": str(self.tls_dir),
                                             "endpoint": "server", "verify-peer": True})]
            server += ",tls-creds=tls0"
        argv += [
            "--blockdev", json.dumps({"driver": "file", "node-name": file_node, "filename": str(self.image),
                                      "discard": "unmap"}),
            "--blockdev", json.dumps({"driver": "raw", "node-name": disk_node, "file": file_node}),
            "--nbd-server", server,
            "--export", json.dumps({"type": "nbd", "id": f"export{self.index}", "node-name": disk_node,
                                    "name": self.export, "writable": True, "writethrough": self.writethrough}),
        ]
        return argv

    def _write(self, name: str, text: str) -> None:
        temporary = self.state_dir / f".{name}.tmp"
        temporary.write_text(text)
        os.replace(temporary, self.state_dir / name)

    def _log_tail(self) -> str:
        try:
            return (self.state_dir / LOG_NAME).read_text(errors="replace")[-600:].strip() or "(no output)"
        except OSError:
            return "(no log)"

    # Check and stop.
    async def healthy(self, timeout_s: float) -> bool:
        """Whether QSD answers on its monitor within `timeout_s` and still serves the export."""
        try:
            with trio.fail_after(timeout_s):
                async with await qmp.connect(self.qmp_path, timeout_s) as monitor:
                    exports = await monitor.execute("query-block-exports", timeout_s=timeout_s)
        except (qmp.QmpFailure, trio.TooSlowError):
            return False
        return any(item.get("id") == f"export{self.index}" and not item.get("shutting-down")
                   for item in exports if isinstance(item, dict))

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """End the export: `quit` on its monitor, SIGKILL by pid if it is not gone within `timeout_s`."""
        record = self.running()
        if record is not None:
            with contextlib.suppress(qmp.QmpFailure, trio.TooSlowError):
                with trio.fail_after(timeout_s / 2):
                    async with await qmp.connect(self.qmp_path, timeout_s / 2) as monitor:
                        await monitor.execute("quit", timeout_s=timeout_s / 2)
            if not await self._gone(record, timeout_s / 2):
                self.kill()
                if not await self._gone(record, timeout_s):
                    raise DriverError(f"qemu-storage-daemon pid {record.pid} for {self.image} survived SIGKILL")
        self._forget()

    async def _gone(self, record: ExportRecord, timeout_s: float) -> bool:
        deadline = trio.current_time() + timeout_s
        while not process_gone(record.pid, record.token):
            self._reap()
            if trio.current_time() >= deadline:
                return False
            await trio.sleep(POLL_S)
        self._reap()
        return True

    def kill(self) -> None:
        """SIGKILL the export's process now (if it is still the export); it is gone moments later."""
        record = self.record()
        if record is not None and not process_gone(record.pid, record.token):
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        if self._process is not None and self._process.poll() is not None:
            self._process = None

    def _forget(self) -> None:
        for name in (PID_NAME, QMP_NAME):
            with contextlib.suppress(FileNotFoundError):
                (self.state_dir / name).unlink()
