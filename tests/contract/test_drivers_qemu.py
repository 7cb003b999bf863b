"""The hypervisor contract and the process-tier tests, run against real QEMUs with no operating system.

Two QemuHypervisor objects ("node1", "node2") share this machine, each with its own state dir and
disk root; their IncomingLink calls the other object's accept_incoming/abort_incoming directly.
A guest here is SeaBIOS booting `BOOT_SECTOR` from a 1 MiB raw disk (shared/reference/qemu.md
section 9, plus a boot sector so that the guest can power itself off for real): QMP answers in
tens of milliseconds, a migration takes a few, and stop's ACPI request is honoured at once.

Every QEMU these tests start has the test's own short directory on its command line; `qemu_nodes`
stops every instance at the end and then kills, by pid, any QEMU still alive whose command line
names that directory, failure or not. The module is skipped when qemu-system-x86_64 is missing.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest
import trio

from appliance import pki
from appliance.drivers.base import CRASHED, RUNNING, SHUTDOWN, DriverError
from appliance.drivers.files import FileStorage
from appliance.drivers.qemu import IncomingLink, QemuHypervisor, qemu_alive, read_runtime
from tests.contract.hypervisor_contract import SPEC, HypervisorContract, Pair

QEMU = shutil.which("qemu-system-x86_64")
pytestmark = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed; "
                                "apt-get install qemu-system-x86 to run the QEMU driver tests")

# A boot sector for SeaBIOS on the pc machine, assembled by hand (checked with `as --32` on a .code16
# source and `objdump -D -b binary -mi8086`). It enables the ACPI power button, prints its banner on
# COM1, then sleeps (hlt, woken by the BIOS timer at 18.2 Hz) until a byte arrives on COM1 or the
# power button is pressed (QMP system_powerdown), and powers the machine off (ACPI S5). SeaBIOS
# puts the PIIX4 PM registers at 0x600 (checked: QEMU reports a guest-shutdown on the write).
BOOT_CODE = bytes([
    0xFA,                    # 7c00 cli
    0xFC,                    # 7c01 cld
    0x31, 0xC0,              # 7c02 xor ax, ax
    0x8E, 0xD8,              # 7c04 mov ds, ax
    0xBA, 0x02, 0x06,        # 7c06 mov dx, 0x602          PM1a_EN
    0xB8, 0x00, 0x01,        # 7c09 mov ax, 0x0100         PWRBTN_EN
    0xEF,                    # 7c0c out dx, ax
    0xBE, 0x39, 0x7C,        # 7c0d mov si, 0x7c39         the banner
    0xBA, 0xF8, 0x03,        # 7c10 mov dx, 0x3f8          COM1 data
    0xAC,                    # 7c13 print: lodsb
    0x84, 0xC0,              # 7c14 test al, al
    0x74, 0x03,              # 7c16 jz poll
    0xEE,                    # 7c18 out dx, al
    0xEB, 0xF8,              # 7c19 jmp print
    0xFB,                    # 7c1b poll: sti
    0xF4,                    # 7c1c hlt
    0xBA, 0xFD, 0x03,        # 7c1d mov dx, 0x3fd          COM1 line status
    0xEC,                    # 7c20 in al, dx
    0xA8, 0x01,              # 7c21 test al, 1             data ready
    0x75, 0x09,              # 7c23 jnz off
    0xBA, 0x00, 0x06,        # 7c25 mov dx, 0x600          PM1a_STS
    0xED,                    # 7c28 in ax, dx
    0xF6, 0xC4, 0x01,        # 7c29 test ah, 1             PWRBTN_STS (bit 8)
    0x74, 0xED,              # 7c2c jz poll
    0xBA, 0x04, 0x06,        # 7c2e off: mov dx, 0x604     PM1a_CNT
    0xB8, 0x00, 0x20,        # 7c31 mov ax, 0x2000         SLP_EN, SLP_TYP 0 (S5 in QEMU's DSDT)
    0xEF,                    # 7c34 out dx, ax
    0xFA,                    # 7c35 halt: cli
    0xF4,                    # 7c36 hlt
    0xEB, 0xFC,              # 7c37 jmp halt
]) + b"CAIRN-BOOTSECTOR\r\n\0"   # 7c39
BANNER = b"CAIRN-BOOTSECTOR"
MARKER_OFFSET = 0x100        # where a test's marker sits in the sector (after the code, before the signature)
BOOT_SPEC = {**SPEC, "hypervisor": "kvm", "disks": (1,), "disk_template": "file"}
SLOW_MIGRATION = {"migration_bandwidth": 1}       # MiB/s: the migration stays in flight for a second or so


def boot_sector(marker: bytes = b"") -> bytes:
    """The 512-byte sector: code, an optional marker at MARKER_OFFSET, the 0x55AA signature."""
    sector = bytearray(BOOT_CODE.ljust(510, b"\0") + b"\x55\xaa")
    sector[MARKER_OFFSET:MARKER_OFFSET + len(marker)] = marker
    return bytes(sector)


async def write_boot_disk(disk_root: Path, instance_id: str, marker: bytes = b"") -> None:
    """Create disk 0 of the instance (1 MiB: SeaBIOS boots nothing smaller) with the boot sector."""
    storage = FileStorage(disk_root)
    await storage.create(instance_id, 0, 1)
    with open(storage.path(instance_id, 0), "r+b") as disk:
        disk.write(boot_sector(marker))


class DirectLink(IncomingLink):
    """Reaches the other driver objects of this test directly; a disk the target lacks gets a plain boot disk."""

    def __init__(self) -> None:
        self.drivers: dict[str, QemuHypervisor] = {}
        self.uri_override: str | None = None
        self.runtime_change: dict = {}

    async def prepare(self, target_node, instance_id, runtime):
        target = self.drivers.get(target_node)
        if target is None:
            raise DriverError(f"node {target_node} is not known to this test")
        if runtime["disks"] and not FileStorage(target.disk_root).path(instance_id, 0).exists():
            await write_boot_disk(target.disk_root, instance_id)
        uri = await target.accept_incoming(instance_id, {**runtime, **self.runtime_change})
        return self.uri_override or uri

    async def abort(self, target_node, instance_id):
        await self.drivers[target_node].abort_incoming(instance_id)


class BootSectorQemu(QemuHypervisor):
    """A QemuHypervisor whose instances without disks boot the test's boot sector from a 1 MiB disk.

    Only the spec changes (a disk is added); every line of the driver under test runs as it is.
    """

    async def start(self, instance_id, spec):
        if not spec.get("disks"):
            if not FileStorage(self.disk_root).path(instance_id, 0).exists():
                await write_boot_disk(self.disk_root, instance_id)
            spec = {**spec, "disks": (1,), "disk_template": "file"}
        await super().start(instance_id, spec)


def qemus_naming(root: Path) -> set[int]:
    """The pids of every live QEMU whose command line names `root` (a zombie has an empty command line)."""
    needle = os.fsencode(os.path.realpath(root))
    found = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                cmdline = (proc / "cmdline").read_bytes()
                if b"qemu-system" in cmdline.split(b"\0", 1)[0] and needle in cmdline:
                    found.add(int(proc.name))
    return found


def kill_leftovers(root: Path) -> None:
    """Kill every QEMU this test left under `root`, by pid."""
    for pid in qemus_naming(root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.asynccontextmanager
async def qemu_nodes(names=("node1", "node2"), driver=BootSectorQemu, **options):
    """Drivers on nodes `names` in a short directory of their own (unix socket paths are short), linked
    to each other; yields (drivers, link, root), then stops everything and kills what is left."""
    root = Path(tempfile.mkdtemp(prefix="cq-", dir="/tmp"))
    link = DirectLink()
    drivers = []
    try:
        for name in names:
            (root / name / "disks").mkdir(parents=True)
            link.drivers[name] = driver(root / name / "hv", name, root / name / "disks", link, accel="tcg",
                                        **options)
            drivers.append(link.drivers[name])
        yield drivers, link, root
    finally:
        try:
            with trio.move_on_after(20):
                for each in drivers:
                    for instance_id in await each.list():
                        await each.stop(instance_id, 0)
                    await each.aclose()
        finally:
            kill_leftovers(root)
            shutil.rmtree(root, ignore_errors=True)


async def crash(driver: QemuHypervisor, instance_id: str) -> None:
    """Kill the instance's QEMU with SIGKILL, as a crash would, and wait until it is gone."""
    pid = driver.pid(instance_id)
    os.kill(pid, signal.SIGKILL)
    with trio.fail_after(5):
        while driver.pid(instance_id) is not None:
            await trio.sleep(0.01)


async def console_text(driver: QemuHypervisor, instance_id: str) -> bytes:
    with contextlib.suppress(OSError):
        return driver.files(instance_id).console_log.read_bytes()
    return b""


async def wait_for_banner(driver: QemuHypervisor, instance_id: str) -> None:
    """Wait until the boot sector has printed its banner (so it is in its loop)."""
    with trio.fail_after(10):
        while BANNER not in await console_text(driver, instance_id):
            await trio.sleep(0.02)


async def guest_shutdown(driver: QemuHypervisor, instance_id: str) -> None:
    """Make the guest power itself off: one byte on its serial console, then wait until QEMU says so."""
    await wait_for_banner(driver, instance_id)
    console = await trio.open_unix_socket(str(await driver.console_path(instance_id)))
    async with console:
        await console.send_all(b"x")
        with trio.fail_after(5):
            while (await driver.list()).get(instance_id) != SHUTDOWN:
                await trio.sleep(0.02)


class TestQemuHypervisor(HypervisorContract):
    """QemuHypervisor passes the hypervisor contract: crash is SIGKILL, guest shutdown an ACPI S5 by the guest."""

    @contextlib.asynccontextmanager
    async def open_pair(self, tmp_path):
        async with qemu_nodes() as ((source, target), _, _):
            yield Pair(source, target, "node2", lambda i: crash(source, i), lambda i: guest_shutdown(source, i))


# --- process tier: what the contract does not say --------------------------------------------


async def test_a_second_start_while_running_changes_nothing():
    """Starting a running instance again keeps the same QEMU process."""
    async with qemu_nodes() as ((node1, _), _, _):
        await node1.start("inst-1", SPEC)
        pid = node1.pid("inst-1")
        await node1.start("inst-1", SPEC)
        assert node1.pid("inst-1") == pid
        assert (await node1.list()) == {"inst-1": RUNNING}


async def test_console_output_is_kept_while_nobody_is_attached():
    """The serial console's output lands in console.log without any client on console.sock."""
    async with qemu_nodes() as ((node1, _), _, _):
        await node1.start("inst-1", SPEC)
        await wait_for_banner(node1, "inst-1")
        assert (await node1.console_path("inst-1")).name == "console.sock"


async def test_the_pid_file_names_the_process_and_its_token():
    """The entry's pid file is "PID TOKEN" and the token is on that process's command line."""
    async with qemu_nodes() as ((node1, _), _, _):
        await node1.start("inst-1", SPEC)
        pid, token = node1.files("inst-1").pid.read_text().split()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert f"secret,id=cairn-run,data={token}".encode() in cmdline


async def test_migration_moves_guest_memory():
    """After a live migration the destination holds the source's RAM (the boot sector with this test's marker)."""
    marker = secrets.token_bytes(16)
    async with qemu_nodes() as ((node1, node2), _, root):
        await write_boot_disk(node1.disk_root, "inst-1", marker)
        await node1.start("inst-1", BOOT_SPEC)
        await wait_for_banner(node1, "inst-1")
        seen = []
        node1.on_progress = lambda instance_id, info: seen.append(info["status"])
        await node1.migrate("inst-1", "node2")
        dump = root / "ram.bin"
        await node2.monitor_command("inst-1", "pmemsave", {"val": 0x7C00, "size": 512, "filename": str(dump)})
        assert dump.read_bytes() == boot_sector(marker)
        assert (await node1.list()) == {} and (await node2.list()) == {"inst-1": RUNNING}
        assert seen[-1] == "completed"
        assert node1.last_migration["inst-1"]["downtime"] >= 0


async def test_an_instance_migrates_back_and_forth():
    """An instance that arrived by migration can leave again (the TLS-free path both ways)."""
    async with qemu_nodes() as ((node1, node2), _, _):
        await node1.start("inst-1", SPEC)
        await node1.migrate("inst-1", "node2")
        await node2.migrate("inst-1", "node1")
        assert (await node1.list()) == {"inst-1": RUNNING} and (await node2.list()) == {}


async def test_a_migration_whose_target_dies_midway_leaves_the_source_running():
    """Killing the destination QEMU during the migration fails it; the source keeps running, the target is cleared."""
    async with qemu_nodes() as ((node1, node2), _, _):
        await node1.start("inst-1", {**SPEC, "hvparams": SLOW_MIGRATION})

        def kill_target(instance_id, info):
            if info.get("status") == "active" and node2.pid(instance_id) is not None:
                os.kill(node2.pid(instance_id), signal.SIGKILL)

        node1.on_progress = kill_target
        with pytest.raises(DriverError, match="failed"):
            await node1.migrate("inst-1", "node2")
        assert (await node1.list()) == {"inst-1": RUNNING}
        assert (await node2.list()) == {}
        assert (await node1.monitor_command("inst-1", "query-status"))["status"] == "running"


async def test_a_migration_to_no_listener_leaves_the_source_running():
    """A migration to a port nobody listens on fails at once; the source keeps running."""
    async with qemu_nodes() as ((node1, node2), link, _):
        await node1.start("inst-1", SPEC)
        with trio.socket.socket() as unused:
            await unused.bind(("127.0.0.1", 0))
            link.uri_override = f"tcp:127.0.0.1:{unused.getsockname()[1]}"
        with pytest.raises(DriverError, match="refused"):
            await node1.migrate("inst-1", "node2")
        assert (await node1.list()) == {"inst-1": RUNNING}
        assert (await node2.list()) == {}


async def test_a_cancelled_migration_leaves_the_source_running():
    """cancel_migration during a migration makes it fail as cancelled; the source keeps running."""
    async with qemu_nodes() as ((node1, node2), _, _):
        await node1.start("inst-1", {**SPEC, "hvparams": SLOW_MIGRATION})
        async with trio.open_nursery() as nursery:

            def cancel_once_active(instance_id, info):
                if info.get("status") == "active":
                    node1.on_progress = None
                    nursery.start_soon(node1.cancel_migration, instance_id)

            node1.on_progress = cancel_once_active
            with pytest.raises(DriverError, match="cancelled"):
                await node1.migrate("inst-1", "node2")
        assert (await node1.list()) == {"inst-1": RUNNING}
        assert (await node2.list()) == {}


def write_tls_dir(directory: Path, ca: pki.CertificateAuthority, node: str) -> Path:
    """QEMU's x509 directory for `node`: the CA and the node certificate as both server and client."""
    directory.mkdir(parents=True)
    certificate = pki.issue_node_certificate(ca, node, ["127.0.0.1"], time.time())
    (directory / "ca-cert.pem").write_bytes(ca.cert_pem)
    for role in ("server", "client"):
        (directory / f"{role}-cert.pem").write_bytes(certificate.cert_pem)
        pki.write_secret_file(directory / f"{role}-key.pem", certificate.key_pem)
    return directory


async def test_a_migration_over_tls_with_node_certificates_completes():
    """With tls_dir on both nodes (node certificates from appliance/pki.py) the migration runs over TLS."""
    ca = pki.create_ca("qemu-test", time.time())
    tls_root = Path(tempfile.mkdtemp(prefix="cq-tls-", dir="/tmp"))
    try:
        async with qemu_nodes(driver=BootSectorQemu) as ((node1, node2), _, _):
            node1.tls_dir = write_tls_dir(tls_root / "node1", ca, "node1")
            node2.tls_dir = write_tls_dir(tls_root / "node2", ca, "node2")
            await node1.start("inst-1", SPEC)
            await node1.migrate("inst-1", "node2")
            assert (await node2.list()) == {"inst-1": RUNNING}
            assert (await node2.monitor_command("inst-1", "query-migrate-parameters"))["tls-creds"]
    finally:
        shutil.rmtree(tls_root, ignore_errors=True)


async def test_a_migration_to_a_node_of_another_ca_fails_and_the_source_keeps_running():
    """TLS verifies the peer: a target whose certificate another CA signed is refused."""
    tls_root = Path(tempfile.mkdtemp(prefix="cq-tls-", dir="/tmp"))
    try:
        async with qemu_nodes(driver=BootSectorQemu) as ((node1, node2), _, _):
            node1.tls_dir = write_tls_dir(tls_root / "node1", pki.create_ca("one", time.time()), "node1")
            node2.tls_dir = write_tls_dir(tls_root / "node2", pki.create_ca("two", time.time()), "node2")
            await node1.start("inst-1", SPEC)
            with pytest.raises(DriverError):
                await node1.migrate("inst-1", "node2")
            assert (await node1.list()) == {"inst-1": RUNNING}
            assert (await node2.list()) == {}
    finally:
        shutil.rmtree(tls_root, ignore_errors=True)


async def test_stop_ends_a_guest_that_ignores_the_power_button():
    """A guest with no OS ignores system_powerdown: stop quits QEMU once its timeout has passed."""
    async with qemu_nodes(driver=QemuHypervisor) as ((node1, _), _, _):
        await node1.start("inst-1", SPEC)
        pid, token = node1.files("inst-1").pid.read_text().split()
        await node1.stop("inst-1", 0.3)
        assert (await node1.list()) == {}
        assert not qemu_alive(int(pid), token)


async def test_a_qemu_whose_monitor_does_not_answer_is_listed_running():
    """A stopped (SIGSTOP) QEMU does not answer QMP; list still reports the instance running."""
    async with qemu_nodes() as ((node1, _), _, _):
        await node1.start("inst-1", SPEC)
        await node1.list()
        pid = node1.pid("inst-1")
        os.kill(pid, signal.SIGSTOP)
        try:
            assert (await node1.list()) == {"inst-1": RUNNING}
        finally:
            os.kill(pid, signal.SIGCONT)
        assert (await node1.list()) == {"inst-1": RUNNING}


async def test_a_guest_powered_off_stays_listed_until_stop():
    """After the guest powers off, QEMU (with -no-shutdown) stays until stop; then nothing is left."""
    async with qemu_nodes() as ((node1, _), _, _):
        await node1.start("inst-1", SPEC)
        await guest_shutdown(node1, "inst-1")
        pid = node1.pid("inst-1")
        assert pid is not None and (await node1.list()) == {"inst-1": SHUTDOWN}
        await node1.stop("inst-1", 5)
        assert node1.pid("inst-1") is None and not node1.files("inst-1").directory.exists()


async def test_an_instance_whose_qemu_was_killed_is_listed_crashed():
    """A QEMU gone without a stop is a crash."""
    async with qemu_nodes() as ((node1, _), _, _):
        await node1.start("inst-1", SPEC)
        await crash(node1, "inst-1")
        assert (await node1.list()) == {"inst-1": CRASHED}


async def test_the_source_left_behind_by_a_completed_migration_is_cleared():
    """A source QEMU in "postmigrate" (its driver died before quitting it) is ended by list, not reported."""
    async with qemu_nodes() as ((node1, node2), _, _):
        await node1.start("inst-1", SPEC)
        await write_boot_disk(node2.disk_root, "inst-1")
        uri = await node2.accept_incoming("inst-1", read_runtime(node1.files("inst-1"), "inst-1")["description"])
        capabilities = [{"capability": "return-path", "state": True}]
        await node1.monitor_command("inst-1", "migrate-set-capabilities", {"capabilities": capabilities})
        await node1.monitor_command("inst-1", "migrate", {"uri": uri})
        with trio.fail_after(10):
            while (await node1.monitor_command("inst-1", "query-migrate"))["status"] != "completed":
                await trio.sleep(0.02)
        assert (await node1.list()) == {}
        assert (await node2.list()) == {"inst-1": RUNNING}


@pytest.mark.parametrize("after_s", [0.001, 0.015, 0.035])
async def test_a_start_cancelled_half_way_leaves_no_qemu_behind(after_s):
    """Cancelling start at any point leaves no QEMU process, no staging directory and no entry."""
    async with qemu_nodes() as ((node1, _), _, root):
        with trio.move_on_after(after_s) as scope:
            await node1.start("inst-1", SPEC)
        if not scope.cancelled_caught:
            pytest.skip(f"start finished within {after_s} s on this machine; nothing was cancelled")
        await trio.sleep(0.3)          # a QEMU still daemonizing would show up by now
        assert not qemus_naming(root)
        assert list(node1.instances.iterdir()) == []


async def test_a_refused_migration_never_ends_the_copy_running_on_the_target():
    """A target that refuses (it runs the instance, which once arrived by migration) keeps running it."""
    async with qemu_nodes() as ((node1, node2), _, _):
        await node1.start("inst-1", SPEC)
        await node1.migrate("inst-1", "node2")
        await node1.start("inst-1", SPEC)
        with pytest.raises(DriverError, match="already runs on node2"):
            await node1.migrate("inst-1", "node2")
        assert (await node1.list()) == {"inst-1": RUNNING}
        assert (await node2.list()) == {"inst-1": RUNNING}


async def test_a_destination_that_cannot_load_the_devices_fails_the_migration():
    """A destination missing a device fails at the very end; with the return path the source learns it and runs on."""
    async with qemu_nodes() as ((node1, node2), link, _):
        await node1.start("inst-1", SPEC)
        link.runtime_change = {"disks": []}       # the destination has no virtio-blk device vblk0
        with pytest.raises(DriverError, match="ended failed"):
            await node1.migrate("inst-1", "node2")
        assert (await node1.list()) == {"inst-1": RUNNING}
        assert (await node1.monitor_command("inst-1", "query-status"))["status"] == "running"
        assert (await node2.list()) == {}
