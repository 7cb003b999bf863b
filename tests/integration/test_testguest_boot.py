"""The test guest boots under plain qemu (TCG): marker, ticker, control shell, and records that reach its disk.

One guest (256 MiB, a 64 MiB raw virtio-blk disk, `virtio=1`) serves the tests
that need a control shell; a second one, without a second serial port, checks
that the guest then idles instead of spinning (trap 7.4). The guest is reused
from the cache (`$CAIRN_CACHE` or ~/.cache/cairn) or built there first (about
28 MB from the Debian archive); without qemu or without a way to build the
guest, the tests are skipped with the reason.
"""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from images import guestlink, testguest

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

QEMU = shutil.which("qemu-system-x86_64")
BOOT_TIMEOUT_S = 90
# A safety net around every qemu: `timeout` ends it even if this test process dies without cleaning up.
QEMU_LIMIT_S = 300
DISK_MIB = 64
MARKER = r"GUEST-MARKER-BOOTED bootid=([0-9a-f]{8}) uptime=([\d.]+)"


@pytest.fixture(scope="module")
def guest():
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    directory = testguest.cache_directory()
    found = testguest.load(directory)
    if found is not None:
        return found
    try:
        return testguest.build()
    except testguest.BuildError as error:
        pytest.skip(f"the test guest cannot be built: {error}")


class Qemu:
    """One qemu process in its run directory, started as in shared/reference/qemu.md 3.3."""

    def __init__(self, guest: testguest.Guest, directory: Path, name: str, control: bool, disk: bool) -> None:
        self.directory = directory
        self.serial_log = directory / "serial.log"
        self.control_socket = directory / "ctl.sock"
        self.disk = directory / "disk.raw"
        argv = ["timeout", "-k", "5", str(QEMU_LIMIT_S), QEMU, "-name", name, "-accel", "tcg", "-machine", "pc",
                "-m", "256", "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                "-pidfile", str(directory / "qemu.pid"),
                "-kernel", str(guest.kernel), "-initrd", str(guest.initrd),
                "-append", guest.cmdline(virtio=disk, tick=control),
                "-chardev", f"file,id=ser0,path={self.serial_log}", "-serial", "chardev:ser0"]
        if control:
            argv += ["-chardev", f"socket,id=ctl,path={self.control_socket},server=on,wait=off",
                     "-serial", "chardev:ctl"]
        if disk:
            with open(self.disk, "wb") as image:
                image.truncate(DISK_MIB * 1024 * 1024)
            argv += ["-blockdev", f"driver=file,node-name=disk0-file,filename={self.disk}",
                     "-blockdev", "driver=raw,node-name=disk0,file=disk0-file",
                     "-device", "virtio-blk-pci,drive=disk0,id=vblk0"]
        self.started_s = time.perf_counter()
        with open(directory / "qemu.stderr", "wb") as stderr:
            self.process = subprocess.Popen(argv, cwd=directory, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=stderr)

    def qemu_pid(self) -> int | None:
        try:
            return int((self.directory / "qemu.pid").read_text())
        except (OSError, ValueError):
            return None

    def cpu_seconds(self) -> float:
        """User and system CPU time qemu has used so far (from /proc)."""
        fields = Path(f"/proc/{self.qemu_pid()}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """End qemu by its pid (timeout forwards the TERM to it), then make sure both are gone."""
        qemu = self.qemu_pid()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        if qemu is not None:
            try:
                os.kill(qemu, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def wait_for(self, pattern: str, timeout_s: float = BOOT_TIMEOUT_S, start_offset: int = 0):
        if self.process.poll() is not None:
            stderr = (self.directory / "qemu.stderr").read_text()[-500:]
            raise AssertionError(f"qemu exited with status {self.process.returncode}: {stderr}")
        return guestlink.wait_for_line(self.serial_log, pattern, timeout_s, start_offset)


@pytest.fixture(scope="module")
def booted(guest, tmp_path_factory):
    """A ticking guest with a control shell and a virtio-blk disk, booted once for this module's tests."""
    vm = Qemu(guest, tmp_path_factory.mktemp("qemu"), "testguest-boot", control=True, disk=True)
    try:
        yield vm
    finally:
        vm.stop()


def test_guest_prints_its_marker_and_loads_virtio(booted):
    """The guest prints its boot marker with an 8-hex boot id, then finds the virtio disk vda."""
    marker = booted.wait_for(MARKER)
    boot_s = time.perf_counter() - booted.started_s
    print(f"qemu start to marker: {boot_s:.2f} s, guest uptime at marker {marker.match.group(2)} s")
    virtio = booted.wait_for(r"GUEST-VIRTIO-(LOADED|FAILED)(.*)", start_offset=marker.end_offset)
    assert virtio.match.group(1) == "LOADED" and virtio.match.group(2).split() == ["vda"]


def test_guest_ticks_with_one_boot_id_and_consecutive_counters(booted):
    """Two consecutive TICK lines carry the marker's boot id and counters n and n+1."""
    bootid = booted.wait_for(MARKER).match.group(1)
    first = booted.wait_for(r"^TICK ")
    booted.wait_for(r"^TICK ", start_offset=first.end_offset)
    ticks = guestlink.ticks(booted.serial_log, first.start_offset)
    assert [t.bootid for t in ticks[:2]] == [bootid, bootid]
    assert ticks[1].n == ticks[0].n + 1 and ticks[1].uptime_s > ticks[0].uptime_s


def test_control_shell_runs_a_command(booted):
    """The control shell on ttyS1 answers the handshake and runs `echo hi`."""
    booted.wait_for(MARKER)
    with guestlink.ControlShell.connect(booted.control_socket, timeout_s=BOOT_TIMEOUT_S) as shell:
        assert shell.run("echo hi", timeout_s=30) == "hi\n"


def test_acknowledged_records_are_on_the_disk_at_their_offsets(booted):
    """`records /dev/vda 1 5` acknowledges 5 writes, and the raw file holds each at n*4096 with the boot id."""
    bootid = booted.wait_for(MARKER).match.group(1)
    booted.wait_for(r"GUEST-VIRTIO-LOADED")
    with guestlink.ControlShell.connect(booted.control_socket, timeout_s=BOOT_TIMEOUT_S) as shell:
        output = shell.run("records /dev/vda 1 5", timeout_s=60)
    assert guestlink.acknowledged(output) == [1, 2, 3, 4, 5]
    assert [guestlink.record_on_disk(booted.disk, n) for n in range(7)] == [None] + [bootid] * 5 + [None]


def test_iops_reports_its_writes(booted):
    """`iops /dev/vda 50 100` does 50 O_DIRECT writes away from the records and prints a parsable IOPS line."""
    booted.wait_for(r"GUEST-VIRTIO-LOADED")
    with guestlink.ControlShell.connect(booted.control_socket, timeout_s=BOOT_TIMEOUT_S) as shell:
        result = guestlink.iops_result(shell.run("iops /dev/vda 50 100", timeout_s=60))
    assert result.count == 50 and result.elapsed_ms >= 0


def test_guest_without_a_second_serial_port_idles(guest, tmp_path):
    """Without ttyS1 and with tick=0 the guest boots and then idles: no control-shell respawn spin (trap 7.4)."""
    vm = Qemu(guest, tmp_path, "testguest-idle", control=False, disk=False)
    try:
        vm.wait_for(MARKER)
        time.sleep(1.0)
        before = vm.cpu_seconds()
        time.sleep(3.0)
        used = vm.cpu_seconds() - before
    finally:
        vm.stop()
    # Measured idle: 0.2 % of a core (reference 8.1); a respawn spin would use most of one.
    assert used < 1.0, f"the idle guest used {used:.2f} s of CPU in 3 s"
    assert "TICK" not in vm.serial_log.read_text()
