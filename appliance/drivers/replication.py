"""The `replicated` disk template under QEMU: each disk of a running instance is mirrored synchronously to the
copy on its secondary node, in userspace (no DRBD here: shared/reference/qemu.md section 6).

On the secondary, `export` runs one qemu-storage-daemon per copy (appliance/drivers/nbd.py: NBD over TCP
with TCP_NODELAY and TLS with the node certificates). On the primary, `connect` asks the secondary's node
for that export (through `ask_export`, the node API's data plane) and starts a relay process per disk
(appliance/drivers/nbd_relay.py) that QEMU's write-blocking mirror writes through; the QEMU driver attaches
the mirror (appliance/drivers/mirror.py) before the guest runs.

Fence-peer. A write-blocking mirror blocks each guest write until the secondary holds it, but when the
secondary stops answering, QEMU lets the job fail and acknowledges later writes on the local copy alone. If
the primary then died before the cluster knew, a failover would promote a copy missing acknowledged writes.
So the relay, on a cut (the export lost, or a request unanswered for the I/O timeout), *holds* QEMU's side of
the connection: the guest's writes wait. The primary's node records the secondary's copy as DEGRADED in the
cluster's log (DiskStateObserved), and only once that is committed does it `release` the relay: the mirror
job fails, the guest goes on with its local copy, and recovery will not promote the stale copy. A primary
that cannot reach the log (cut off itself) never releases; its lease lapses and its watchdog kills the
guest, whose acknowledged writes are all on the secondary. This is DRBD's `fencing resource-and-stonith`.

Durability: an acknowledged write is in the secondary's page cache (the export runs with writethrough off;
see nbd.py for what writethrough on costs). It survives the death of the primary, its node and its QEMU;
a crash of the secondary's node cuts the relay and degrades the copy before anything else is acknowledged.
Only a power loss of both nodes within the same moment can lose acknowledged writes from the secondary.

Files, all under `state_dir` (the node's kvm dir): `exports/<instance>.<disk>/` (the export's pid file,
record and log) and `relays/<instance>.<disk>/` (`pid` "PID TOKEN", `hold` while the relay holds a cut,
`relay.log`). Unix sockets go to a short private directory when these paths are too long for a socket.
`cairn down` ends both kinds of process by their pid files.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import signal
import subprocess
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from appliance.drivers import nbd, nbd_relay
from appliance.drivers.base import DriverError

# A unix socket path holds 107 bytes; the relay binds a temporary name beside its socket first (about 20 more).
SOCKET_PATH_MAX = 80
RELAY_START_S = 10.0
DEFAULT_IO_TIMEOUT_S = 5.0
POLL_S = 0.02

AskExport = Callable[[str, str, int], Awaitable[str]]


def short_socket(directory: Path, name: str) -> Path:
    """`directory/name`, or a path in this user's private directory under the temporary directory when that is
    too long for a unix socket (named by a hash of the long path)."""
    wanted = directory / name
    if len(os.fsencode(wanted)) <= SOCKET_PATH_MAX:
        return wanted
    digest = hashlib.sha256(os.fsencode(wanted.absolute())).hexdigest()[:24]
    return Path(tempfile.gettempdir()) / f"cairn-{os.getuid()}" / f"{digest}.sock"


def _private_parent(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)


def _alive(pid: int, token: str) -> bool:
    try:
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X") and any(token.encode() in argument for argument in arguments)


class Replication:
    """One node's side of its replicated kvm disks: exports of its secondary copies, relays of its primaries."""

    def __init__(self, state_dir: Path, disk_root: Path, host: str, ask_export: AskExport | None = None,
                 tls_dir: Path | None = None, python: str | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.disk_root = Path(disk_root)
        self.host = host
        self.ask_export = ask_export
        self.tls_dir = Path(tls_dir) if tls_dir is not None else None
        self.python = python or os.environ.get("CAIRN_PYTHON") or __import__("sys").executable
        self._relays: dict[tuple[str, int], subprocess.Popen] = {}

    # --- the secondary: exports ------------------------------------------------------------

    def _export(self, instance_id: str, index: int) -> nbd.ExportDaemon:
        directory = self.state_dir / "exports" / f"{instance_id}.{index}"
        qmp_path = short_socket(directory, "qmp.sock")
        _private_parent(qmp_path)
        return nbd.ExportDaemon(directory, self.disk_root / instance_id / f"disk{index}.raw", index, self.host,
                                tls_dir=self.tls_dir, writethrough=False, qmp_path=qmp_path)

    async def export(self, instance_id: str, index: int) -> str:
        """(Secondary.) Make sure this node's copy of the disk is exported; its address HOST:PORT."""
        image = self.disk_root / instance_id / f"disk{index}.raw"
        if not image.exists():
            raise DriverError(f"this node holds no copy of disk {index} of instance {instance_id} ({image} is "
                              "missing); its storage creates it once the node knows it is the secondary")
        return await self._export(instance_id, index).ensure_export()

    async def unexport(self, instance_id: str, count: int) -> None:
        """(Before this node runs the instance.) Stop exporting its copies: nobody mirrors into them any more."""
        for index in range(count):
            directory = self.state_dir / "exports" / f"{instance_id}.{index}"
            if directory.exists():
                await self._export(instance_id, index).stop()

    # --- the primary: relays -----------------------------------------------------------------

    def _relay_dir(self, instance_id: str, index: int) -> Path:
        return self.state_dir / "relays" / f"{instance_id}.{index}"

    def relay_socket(self, instance_id: str, index: int) -> Path:
        return short_socket(self._relay_dir(instance_id, index), "nbd.sock")

    async def connect(self, instance_id: str, index: int, peer_node: str, io_timeout_s: float) -> Path:
        """(Primary.) Have the secondary export its copy and start a fresh relay to it; the relay's socket, for
        QEMU's mirror. DriverError when the secondary cannot be reached."""
        if self.ask_export is None:
            raise DriverError("this node cannot reach other nodes' exports (no data-plane link)")
        address = await self.ask_export(peer_node, instance_id, index)
        host, _, port = address.rpartition(":")
        await self.stop_relay(instance_id, index)
        directory = self._relay_dir(instance_id, index)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        socket_path = self.relay_socket(instance_id, index)
        _private_parent(socket_path)
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()
        (directory / "hold").unlink(missing_ok=True)
        token = f"cairn-relay-{secrets.token_hex(12)}"
        config = nbd_relay.Config(socket_path, host.strip("[]"), int(port), io_timeout_s, self.tls_dir,
                                  directory / "hold")
        argv = [*nbd_relay.relay_command(config, self.python), "--token", token]
        with open(directory / "relay.log", "ab") as log_file:
            process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                                       start_new_session=True)
        self._relays[(instance_id, index)] = process
        (directory / "pid").write_text(f"{process.pid} {token}\n")
        with trio.move_on_after(RELAY_START_S):
            while not socket_path.exists():
                if process.poll() is not None:
                    raise DriverError(f"the relay for disk {index} of instance {instance_id} exited at start: "
                                      f"{self._log_tail(directory)}")
                await trio.sleep(POLL_S)
            return socket_path
        process.kill()
        raise DriverError(f"the relay for disk {index} of instance {instance_id} did not start within "
                          f"{RELAY_START_S:g} s: {self._log_tail(directory)}")

    def relay_state(self, instance_id: str, index: int) -> tuple[str, str]:
        """("held", why) while the relay holds a cut, ("running", "") while it relays, ("none", "") otherwise."""
        directory = self._relay_dir(instance_id, index)
        process = self._read_pid(directory)
        if process is None or not _alive(*process):
            return "none", ""
        hold = directory / "hold"
        if hold.exists():
            with contextlib.suppress(OSError):
                return "held", hold.read_text().strip()
        return "running", ""

    async def release(self, instance_id: str, index: int) -> None:
        """Let a held relay go (the secondary's copy is recorded DEGRADED): the guest's writes go on."""
        process = self._read_pid(self._relay_dir(instance_id, index))
        if process is not None and _alive(*process):
            with contextlib.suppress(ProcessLookupError):
                os.kill(process[0], signal.SIGUSR1)
        self._reap()

    async def stop_relay(self, instance_id: str, index: int) -> None:
        """End the disk's relay, if any (the instance stops here, or a new relay replaces it)."""
        directory = self._relay_dir(instance_id, index)
        process = self._read_pid(directory)
        if process is not None and _alive(*process):
            with contextlib.suppress(ProcessLookupError):
                os.kill(process[0], signal.SIGKILL)
            with trio.move_on_after(5):
                while _alive(*process):
                    await trio.sleep(POLL_S)
        (directory / "pid").unlink(missing_ok=True)
        (directory / "hold").unlink(missing_ok=True)
        self._reap()

    async def stop_relays(self, instance_id: str, count: int) -> None:
        for index in range(count):
            await self.stop_relay(instance_id, index)

    def _reap(self) -> None:
        for key, process in list(self._relays.items()):
            if process.poll() is not None:
                del self._relays[key]

    @staticmethod
    def _read_pid(directory: Path) -> tuple[int, str] | None:
        try:
            pid, token = (directory / "pid").read_text().split()
            return int(pid), token
        except (OSError, ValueError):
            return None

    @staticmethod
    def _log_tail(directory: Path) -> str:
        with contextlib.suppress(OSError):
            lines = (directory / "relay.log").read_text(errors="replace").strip().splitlines()
            return " | ".join(lines[-3:]) or "(no output)"
        return "(no log)"
