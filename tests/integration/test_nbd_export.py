"""The replicated disk's data plane with real QEMU: the secondary's export, the relay, and the primary's mirror.

Nodes are directories and 127.0.0.1; the primary is a QEMU with no OS (shared/reference/qemu.md section 9)
whose disk is also attached to a virtio-blk device, so that the monitor's `qemu-io` can write through the
device, and hence through the mirror, as a guest would.
"""

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import trio

from appliance import pki
from appliance.drivers import mirror, nbd_relay, qmp
from appliance.drivers.base import DEGRADED, SYNCING, UPTODATE, DriverError
from appliance.drivers.nbd import ExportDaemon, listening_socket, process_gone, write_tls_dir

ROOT = Path(__file__).resolve().parents[2]
BINARIES = ("qemu-storage-daemon", "qemu-img", "qemu-io", "qemu-system-x86_64")
IO_TIMEOUT_S = 1.0
DISK_MIB = 32
DEVICE = "/machine/peripheral/vblk0/virtio-backend"

pytestmark = pytest.mark.slow


@pytest.fixture
def short_dir():
    """A directory with a short path (unix socket paths must stay under 108 bytes); skips without QEMU."""
    missing = [name for name in BINARIES if shutil.which(name) is None]
    if missing:
        pytest.skip(f"needs qemu-system-x86 and qemu-utils ({', '.join(missing)} missing)")
    path = Path(tempfile.mkdtemp(prefix="nbx", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """Credentials directories: the secondary's server side, the primary's client side, and two impostors."""
    base = tmp_path_factory.mktemp("tls")
    now = time.time()
    ca, foreign = pki.create_ca("cairn-test", now), pki.create_ca("someone-else", now)
    primary = pki.issue_node_certificate(ca, "node1", ["127.0.0.1"], now)
    secondary = pki.issue_node_certificate(ca, "node2", ["127.0.0.1"], now)
    stranger = pki.issue_node_certificate(foreign, "node1", ["127.0.0.1"], now)
    dirs = {
        "server": write_tls_dir(base / "server", ca.cert_pem, secondary.cert_pem, secondary.key_pem, "server"),
        "client": write_tls_dir(base / "client", ca.cert_pem, primary.cert_pem, primary.key_pem, "client"),
        # Trusts the cluster CA (so it accepts the export) but presents a certificate of another CA.
        "foreign": write_tls_dir(base / "foreign", ca.cert_pem + foreign.cert_pem, stranger.cert_pem,
                                 stranger.key_pem, "client"),
    }
    dirs["none"] = base / "none"
    dirs["none"].mkdir()
    (dirs["none"] / "ca-cert.pem").write_bytes(ca.cert_pem)
    return dirs


def make_image(path: Path, pattern: int | None = None) -> Path:
    subprocess.run(["qemu-img", "create", "-f", "raw", str(path), f"{DISK_MIB}M"], check=True, capture_output=True)
    if pattern is not None:
        subprocess.run(["qemu-io", "-f", "raw", "-c", f"write -P {pattern:#x} 1M 3M", "-c", "write -P 0x5c 20M 64k",
                        str(path)], check=True, capture_output=True)
    return path


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def qemu_io(image_opts: str, *commands: str, tls_dir: Path | None = None,
            timeout_s: float = 30) -> subprocess.CompletedProcess:
    objects = ["--object", f"tls-creds-x509,id=tls0,dir={tls_dir},endpoint=client"] if tls_dir else []
    arguments = [argument for command in commands for argument in ("-c", command)]
    return subprocess.run(["qemu-io", *objects, "--image-opts", image_opts, *arguments], capture_output=True,
                          text=True, timeout=timeout_s)


def tcp_image(address: str, tls: bool = False) -> str:
    return (f"driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={port_of(address)},export=disk0"
            + (",tls-creds=tls0" if tls else ""))


def unix_image(path: Path) -> str:
    return f"driver=nbd,server.type=unix,server.path={path},export=disk0"


@pytest.fixture
async def exports(short_dir):
    """Make exports in the short directory; every one still running at the end is killed by pid."""
    made: list[ExportDaemon] = []

    def make(name: str = "sec", image: Path | None = None, **options) -> ExportDaemon:
        image = image or make_image(short_dir / f"{name}.raw")
        daemon = ExportDaemon(short_dir / f"{name}-state", image, 0, "127.0.0.1", **options)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.kill()


@pytest.fixture
def relays(short_dir):
    """Start relays as the node daemon does (own session); each is killed by pid at the end."""
    started: list[subprocess.Popen] = []

    def start(address: str, io_timeout_s: float = IO_TIMEOUT_S, tls_dir: Path | None = None,
              name: str = "relay") -> tuple[Path, subprocess.Popen]:
        path = short_dir / f"{name}.sock"
        config = nbd_relay.Config(path, "127.0.0.1", port_of(address), io_timeout_s, tls_dir)
        with open(short_dir / f"{name}.log", "ab") as log:
            process = subprocess.Popen(nbd_relay.relay_command(config), cwd=ROOT, stderr=log, start_new_session=True)
        started.append(process)
        deadline = time.monotonic() + 10
        while not path.exists():
            assert process.poll() is None and time.monotonic() < deadline, "the relay did not start"
            time.sleep(0.01)
        return path, process

    yield start
    for process in started:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()


def start_vm(directory: Path, name: str, image: Path, incoming: bool = False) -> tuple[subprocess.Popen, Path]:
    """A QEMU with no OS, paused (-S), disk0 on `image` behind a virtio-blk device; (process, QMP socket)."""
    socket_path = directory / f"{name}.qmp"
    process = subprocess.Popen([
        "qemu-system-x86_64", "-name", name, "-accel", "tcg", "-machine", "pc-i440fx-7.2", "-m", "64",
        "-nodefaults", "-no-user-config", "-display", "none", "-S",
        "-qmp", f"unix:{socket_path},server=on,wait=off",
        "-blockdev", f"driver=file,node-name=disk0-file,filename={image}",
        "-blockdev", "driver=raw,node-name=disk0,file=disk0-file",
        "-device", "virtio-blk-pci,drive=disk0,id=vblk0", *(["-incoming", "defer"] if incoming else [])],
        stdout=subprocess.DEVNULL, start_new_session=True)
    return process, socket_path


@pytest.fixture
def vms():
    """Start VMs with start_vm; each is killed by pid at the end."""
    started: list[subprocess.Popen] = []

    async def start(directory: Path, name: str, image: Path, incoming: bool = False):
        process, socket_path = start_vm(directory, name, image, incoming)
        started.append(process)
        with trio.fail_after(10):
            while not socket_path.exists():
                await trio.sleep(0.01)
        return process, await qmp.connect(socket_path, 10)

    yield start
    for process in started:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture
async def primary(short_dir, vms):
    """The primary: a paused no-OS QEMU whose disk0 already holds a pattern; yields (monitor, image)."""
    image = make_image(short_dir / "prim.raw", pattern=0xAB)
    _process, monitor = await vms(short_dir, "primary", image)
    async with monitor:
        yield monitor, image


async def guest_write(monitor, offset_mib: int, pattern: int) -> float:
    """Write 64 KiB through the virtio device (so through the mirror) and return how long it took."""
    started = trio.current_time()
    output = await monitor.execute("human-monitor-command", {
        "command-line": f'qemu-io -d {DEVICE} "write -P {pattern:#x} {offset_mib}M 64k"'}, 30)
    # The monitor's qemu-io prints its own report on QEMU's stdout; only a refused command answers here.
    assert "Error" not in output, output
    return trio.current_time() - started


def holds(image: Path, offset_mib: int, pattern: int) -> bool:
    """Whether the file has the 64 KiB pattern at the offset (read while QEMU or QSD holds it open)."""
    return qemu_io(f"driver=raw,file.driver=file,file.filename={image},file.locking=off",
                   f"read -P {pattern:#x} {offset_mib}M 64k").returncode == 0


def same_bytes(first: Path, second: Path) -> bool:
    return subprocess.run(["cmp", "-s", str(first), str(second)]).returncode == 0


# --- the export ------------------------------------------------------------------------------

async def test_a_restarted_daemon_finds_the_running_export_again(exports):
    """ensure_export is idempotent: a new ExportDaemon on the same state dir returns the same export."""
    first = exports()
    address = await first.ensure_export()
    again = ExportDaemon(first.state_dir, first.image, 0, "127.0.0.1")
    assert await again.ensure_export() == address
    assert again.running().pid == first.running().pid
    assert (first.state_dir / "pid").read_text().split() == [str(first.running().pid), first.running().token]
    assert await again.healthy(2)


async def test_a_stopped_export_restarts_on_the_same_port(exports):
    """stop quits QSD and keeps the port, which the next start asks for first."""
    daemon = exports()
    address = await daemon.ensure_export()
    record = daemon.running()
    await daemon.stop()
    assert daemon.running() is None and process_gone(record.pid, record.token)
    assert not await daemon.healthy(0.5)
    # The port is asked for first; another process may have taken it meanwhile on a busy machine, and then a new
    # port is right. So the check holds whenever the port was free just before.
    host, _, port = address.rpartition(":")
    try:
        listening_socket(host, int(port)).close()
        free = True
    except OSError:
        free = False
    again = await daemon.ensure_export()
    assert again == address or not free, (address, again)


async def test_a_hung_export_is_unhealthy_and_stop_still_ends_it(exports):
    """A stopped QSD does not answer its monitor in time; stop's quit times out and SIGKILL ends it."""
    daemon = exports()
    await daemon.ensure_export()
    record = daemon.running()
    os.kill(record.pid, signal.SIGSTOP)
    assert not await daemon.healthy(0.3)
    with trio.fail_after(5):
        await daemon.stop(timeout_s=1.0)
    assert process_gone(record.pid, record.token)


async def test_kill_ends_the_export_at_once(exports):
    """kill SIGKILLs the export by pid."""
    daemon = exports()
    await daemon.ensure_export()
    record = daemon.running()
    daemon.kill()
    with trio.fail_after(2):
        while not process_gone(record.pid, record.token):
            await trio.sleep(0.01)


def _sockets_of(pid: int) -> list[socket.socket]:
    """Duplicates of another process's TCP sockets (pidfd_getfd, Linux 5.6; needs ptrace rights)."""
    syscall = ctypes.CDLL(None, use_errno=True).syscall
    pidfd = os.pidfd_open(pid)
    found = []
    try:
        for entry in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                if not os.readlink(f"/proc/{pid}/fd/{entry}").startswith("socket:"):
                    continue
                fd = syscall(438, pidfd, int(entry), 0)
                if fd < 0:
                    pytest.skip(f"pidfd_getfd is not allowed here (errno {ctypes.get_errno()})")
                sock = socket.socket(fileno=fd)
                if sock.family == socket.AF_INET:
                    found.append(sock)
                else:
                    sock.close()
    finally:
        os.close(pidfd)
    return found


async def test_accepted_connections_inherit_tcp_nodelay(exports):
    """QSD never sets TCP_NODELAY; the accepted socket has it anyway, copied from our listening socket."""
    daemon = exports()
    address = await daemon.ensure_export()
    with socket.create_connection(("127.0.0.1", port_of(address)), timeout=5) as client:
        assert client.recv(8) == b"NBDMAGIC"
        sockets = _sockets_of(daemon.running().pid)
        try:
            accepted = [sock for sock in sockets if sock.getsockname()[1] == port_of(address)
                        and _connected(sock)]
            assert len(accepted) == 1
            assert accepted[0].getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        finally:
            for sock in sockets:
                sock.close()


def _connected(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
        return True
    except OSError:
        return False


async def test_small_writes_at_depth_16_are_not_held_back_by_nagle(exports):
    """2000 x 4 KiB writes at depth 16 over TCP take well under a second (about 5 s if Nagle held them)."""
    daemon = exports(writethrough=False)
    address = await daemon.ensure_export()
    started = time.monotonic()
    done = subprocess.run(["qemu-img", "bench", "-w", "-c", "2000", "-d", "16", "-s", "4k", "--image-opts",
                           tcp_image(address)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 2.0


async def test_a_client_with_a_cluster_certificate_is_served_over_tls(exports, tls):
    """A node certificate from the cluster CA gets in; the data lands in the secondary's file."""
    daemon = exports(tls_dir=tls["server"])
    address = await daemon.ensure_export()
    done = qemu_io(tcp_image(address, tls=True), "write -P 0x3c 0 64k", tls_dir=tls["client"])
    assert done.returncode == 0, done.stderr
    assert holds(daemon.image, 0, 0x3c)


@pytest.mark.parametrize("credentials", ["none", "foreign"])
async def test_a_client_without_a_cluster_certificate_is_refused(exports, tls, credentials):
    """No client certificate, or one from another CA: the handshake fails and nothing is written."""
    daemon = exports(tls_dir=tls["server"])
    address = await daemon.ensure_export()
    done = qemu_io(tcp_image(address, tls=True), "write -P 0x3c 0 64k", tls_dir=tls[credentials])
    assert done.returncode != 0
    assert "wrote" not in done.stdout


async def test_a_client_without_tls_is_refused(exports, tls):
    """A TLS export does not serve a plain NBD client."""
    daemon = exports(tls_dir=tls["server"])
    address = await daemon.ensure_export()
    done = qemu_io(tcp_image(address), "write -P 0x3c 0 64k")
    assert done.returncode != 0 and "TLS" in done.stderr


# --- the relay in front of it ----------------------------------------------------------------

async def test_the_relay_speaks_tls_to_the_export_with_the_node_certificate(exports, relays, tls):
    """QEMU speaks plain NBD to the relay's socket; the relay does TLS with the node certificate."""
    daemon = exports(tls_dir=tls["server"])
    path, _ = relays(await daemon.ensure_export(), tls_dir=tls["client"])
    done = qemu_io(unix_image(path), "write -P 0x4d 2M 64k", "read -P 0x4d 2M 64k")
    assert done.returncode == 0, done.stderr
    assert holds(daemon.image, 2, 0x4d)


async def test_a_write_to_a_stopped_export_fails_within_the_timeout(exports, relays):
    """A hung secondary (SIGSTOP): the write returns an error within io_timeout + 1 s instead of hanging."""
    daemon = exports()
    path, relay = relays(await daemon.ensure_export())
    assert qemu_io(unix_image(path), "write 0 4k").returncode == 0
    os.kill(daemon.running().pid, signal.SIGSTOP)
    started = time.monotonic()
    done = qemu_io(unix_image(path), "write -P 0x11 0 4k", timeout_s=IO_TIMEOUT_S + 10)
    elapsed = time.monotonic() - started
    assert "wrote" not in done.stdout
    assert elapsed < IO_TIMEOUT_S + 1.0
    assert relay.wait(5) == nbd_relay.EXIT_TIMEOUT


# --- the mirror on the primary ---------------------------------------------------------------

@pytest.mark.parametrize("relay_tls", [False, True], ids=["plain", "tls"])
async def test_the_mirror_copies_existing_data_before_it_is_ready(primary, exports, relays, tls, relay_tls):
    """sync full copies what the primary already held; READY means the two files are identical."""
    monitor, image = primary
    daemon = exports(tls_dir=tls["server"] if relay_tls else None)
    path, _ = relays(await daemon.ensure_export(), tls_dir=tls["client"] if relay_tls else None)
    assert not same_bytes(image, daemon.image)
    await mirror.attach_mirror(monitor, 0, path)
    await mirror.wait_ready(monitor, 0, 30)
    assert await mirror.mirror_states(monitor) == {0: (UPTODATE, 100)}
    assert same_bytes(image, daemon.image)


async def test_a_write_through_a_ready_mirror_is_on_the_secondary_when_it_returns(primary, exports, relays):
    """write-blocking: a write that has returned is already in the secondary's file."""
    monitor, image = primary
    daemon = exports()
    path, _ = relays(await daemon.ensure_export())
    await mirror.attach_mirror(monitor, 0, path)
    await mirror.wait_ready(monitor, 0, 30)
    for step in range(5):
        await guest_write(monitor, 8 + step, 0x60 + step)
        assert holds(daemon.image, 8 + step, 0x60 + step)
    assert same_bytes(image, daemon.image)


async def test_a_killed_export_degrades_the_mirror(primary, exports, relays):
    """A dead secondary: the next write still succeeds on the primary, the job fails, the disk is DEGRADED."""
    monitor, image = primary
    daemon = exports()
    path, relay = relays(await daemon.ensure_export())
    await mirror.attach_mirror(monitor, 0, path)
    await mirror.wait_ready(monitor, 0, 30)
    daemon.kill()
    assert relay.wait(5) == nbd_relay.EXIT_PEER_LOST
    await guest_write(monitor, 9, 0x21)
    assert holds(image, 9, 0x21)
    with trio.fail_after(5):
        while (await mirror.mirror_states(monitor))[0][0] != DEGRADED:
            await trio.sleep(0.05)
    await mirror.detach_mirror(monitor, 0)
    assert await mirror.mirror_states(monitor) == {}


async def test_a_stopped_export_is_cut_and_the_mirror_degrades(primary, exports, relays):
    """A hung secondary: the guest's write returns once the relay cuts, the disk is DEGRADED, QMP answers."""
    monitor, image = primary
    daemon = exports()
    path, relay = relays(await daemon.ensure_export())
    await mirror.attach_mirror(monitor, 0, path)
    await mirror.wait_ready(monitor, 0, 30)
    os.kill(daemon.running().pid, signal.SIGSTOP)
    elapsed = await guest_write(monitor, 10, 0x22)
    assert IO_TIMEOUT_S - 0.1 < elapsed < IO_TIMEOUT_S + 1.0
    assert holds(image, 10, 0x22)
    assert relay.wait(5) == nbd_relay.EXIT_TIMEOUT
    assert (await monitor.execute("query-status", None, 2))["status"] == "prelaunch"
    with trio.fail_after(5):
        while (await mirror.mirror_states(monitor))[0][0] != DEGRADED:
            await trio.sleep(0.05)


async def test_detach_finishes_a_ready_mirror_without_pivot(primary, exports, relays):
    """detach ends the job and the NBD node; the disk stays the primary's file, and later writes stay local."""
    monitor, image = primary
    daemon = exports()
    path, _ = relays(await daemon.ensure_export())
    await mirror.attach_mirror(monitor, 0, path)
    await mirror.wait_ready(monitor, 0, 30)
    await mirror.detach_mirror(monitor, 0)
    assert await mirror.mirror_states(monitor) == {}
    await guest_write(monitor, 11, 0x23)
    assert holds(image, 11, 0x23) and not holds(daemon.image, 11, 0x23)
    await mirror.detach_mirror(monitor, 0)     # idempotent


async def test_a_mirror_known_in_sync_is_ready_at_once(primary, exports, relays):
    """sync none (after a role swap) copies nothing and is READY straight away."""
    monitor, image = primary
    daemon = exports(image=image.with_name("copy.raw"))
    shutil.copyfile(image, daemon.image)
    path, _ = relays(await daemon.ensure_export())
    await mirror.attach_reverse_mirrors(monitor, {0: path})
    assert await mirror.mirror_states(monitor) == {0: (UPTODATE, 100)}


async def test_a_role_swap_migration_moves_the_primary_without_a_copy(short_dir, exports, relays, vms):
    """Reference 6.5: migrate A to B onto B's replica, then B mirrors back into A's file with sync none."""
    image_a = make_image(short_dir / "a.raw", pattern=0xAB)
    export_b = exports("b", image=make_image(short_dir / "b.raw"))
    path_ab, _ = relays(await export_b.ensure_export(), name="ab")
    vm_a, monitor_a = await vms(short_dir, "vm-a", image_a)
    await mirror.attach_mirror(monitor_a, 0, path_ab)
    await mirror.wait_ready(monitor_a, 0, 30)
    await guest_write(monitor_a, 12, 0x31)
    vm_b, monitor_b = await vms(short_dir, "vm-b", export_b.image, incoming=True)
    uri = f"unix:{short_dir / 'migrate.sock'}"
    await monitor_b.execute("migrate-incoming", {"uri": uri}, 10)
    await mirror.pause_before_switchover(monitor_a)
    await monitor_a.execute("migrate", {"uri": uri}, 10)
    await mirror.wait_migration(monitor_a, {"pre-switchover"}, 30)
    await mirror.release_for_switchover(monitor_a, [0])
    await export_b.stop()
    await mirror.continue_switchover(monitor_a)
    await mirror.wait_migration(monitor_a, {"completed"}, 30)
    await monitor_a.execute("quit", None, 5)
    assert vm_a.wait(5) == 0
    export_a = exports("a", image=image_a)
    path_ba, _ = relays(await export_a.ensure_export(), name="ba")
    await mirror.attach_reverse_mirrors(monitor_b, {0: path_ba})
    await monitor_b.execute("cont", None, 5)
    await guest_write(monitor_b, 13, 0x32)
    assert await mirror.mirror_states(monitor_b) == {0: (UPTODATE, 100)}
    assert holds(image_a, 12, 0x31) and holds(image_a, 13, 0x32)
    assert same_bytes(image_a, export_b.image)
    await monitor_b.aclose()


async def test_a_relay_with_a_certificate_of_another_ca_is_refused_by_the_export(exports, relays, tls):
    """The export checks the relay's client certificate: one from another CA gets no export."""
    daemon = exports(tls_dir=tls["server"])
    path, relay = relays(await daemon.ensure_export(), tls_dir=tls["foreign"])
    done = qemu_io(unix_image(path), "write -P 0x4e 0 64k")
    assert done.returncode != 0 and "wrote" not in done.stdout
    assert not holds(daemon.image, 0, 0x4e)
    # TLS 1.3 finishes the client's side of the handshake before the export has checked the certificate,
    # so the refusal reaches the relay as the export closing the connection.
    assert relay.wait(5) == nbd_relay.EXIT_PEER_LOST


# --- disk states from the monitor's answers (a fake monitor: no QEMU needed) -----------------

class FakeMonitor:
    """Answers query-block-jobs and query-named-block-nodes from lists; no event ever comes."""

    def __init__(self, jobs: list[dict], nodes: list[str]) -> None:
        self.jobs, self.nodes = jobs, nodes
        self.commands: list[str] = []

    async def execute(self, command: str, arguments: dict | None = None, timeout_s: float = 10.0):
        self.commands.append(command)
        if command == "query-block-jobs":
            return self.jobs
        if command == "query-named-block-nodes":
            return [{"node-name": name} for name in ["disk0", *self.nodes]]
        return {}

    async def wait_event(self, name: str, timeout_s: float, predicate=None) -> dict:
        await trio.sleep(timeout_s)
        raise qmp.QmpTimeout(f"no {name}")


def mirror_job(index: int, **fields) -> dict:
    return {"device": f"rep{index}", "type": "mirror", "status": "running", "ready": False, "len": 200,
            "offset": 50, "io-status": "ok", **fields}


async def test_a_copying_job_is_syncing_with_its_percentage():
    """A running job that is not ready is SYNCING, offset over length."""
    assert await mirror.mirror_states(FakeMonitor([mirror_job(0)], ["sec0"])) == {0: (SYNCING, 25)}


async def test_a_ready_job_is_uptodate():
    """READY (status ready) is UPTODATE at 100 %."""
    monitor = FakeMonitor([mirror_job(0, status="ready", ready=True, offset=200)], ["sec0"])
    assert await mirror.mirror_states(monitor) == {0: (UPTODATE, 100)}


async def test_a_failed_or_vanished_job_is_degraded():
    """A job with a failed target, or a target left attached without its job, is DEGRADED."""
    monitor = FakeMonitor([mirror_job(0, status="ready", ready=True, **{"io-status": "failed"})], ["sec0", "sec1"])
    assert await mirror.mirror_states(monitor) == {0: (DEGRADED, 0), 1: (DEGRADED, 0)}


async def test_an_expected_disk_with_no_mirror_at_all_is_degraded():
    """Asked about a disk with neither job nor target, the answer is DEGRADED, not silence."""
    assert await mirror.mirror_states(FakeMonitor([], []), indexes=[2]) == {2: (DEGRADED, 0)}


async def test_a_finish_that_never_comes_says_to_cut_the_relay_first():
    """detach_mirror on a job that does not end within its timeout raises and names the way out."""
    monitor = FakeMonitor([mirror_job(0, status="ready", ready=True)], ["sec0"])
    with pytest.raises(DriverError, match="kill its relay"):
        await mirror.detach_mirror(monitor, 0, timeout_s=0.2)
    assert "blockdev-del" not in monitor.commands
