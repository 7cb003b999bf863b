"""Tests of appliance/fencing.py: the watchdog's local lease, its fence methods, and the process itself."""

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance import fencing
from appliance.clock import boottime


class Recorder(fencing.FenceMethod):
    name = "recorder"

    def __init__(self, fail: int = 0) -> None:
        self.calls, self.fail = 0, fail

    def fence(self) -> str:
        self.calls += 1
        if self.calls <= self.fail:
            raise OSError("not yet")
        return "done"


def test_nothing_is_fenced_before_the_first_renewal_or_while_the_lease_holds():
    method = Recorder()
    dog = fencing.Watchdog([method])
    dog.step(1e9)
    dog.renew(100.0, True)
    dog.step(99.9)
    assert method.calls == 0


def test_a_lapsed_armed_lease_fences_at_every_poll_and_a_new_lease_rearms():
    """From expiry on, every poll runs every method again (an instance migrated in after the first kill dies
    too); a renewal into the future stops it until the next lapse."""
    method = Recorder()
    dog = fencing.Watchdog([method])
    dog.renew(100.0, True)
    dog.step(99.0)
    dog.step(100.0)
    dog.step(101.0)
    assert method.calls == 2 and dog.fenced
    dog.renew(boottime() + 60, True)
    assert not dog.fenced
    dog.step(boottime() + 30)
    assert method.calls == 2
    dog.step(boottime() + 61)
    assert method.calls == 3


def test_a_failed_fence_is_tried_again():
    method = Recorder(fail=2)
    dog = fencing.Watchdog([method])
    dog.renew(10.0, True)
    for now in (10.0, 10.1):
        dog.step(now)
    assert not dog.fenced
    dog.step(10.2)
    assert method.calls == 3 and dog.fenced


def test_disarmed_means_nothing_is_killed():
    """Recovery disarmed or the node in maintenance: the lease may lapse, nothing is killed."""
    method = Recorder()
    dog = fencing.Watchdog([method])
    dog.renew(10.0, False)
    dog.step(1e6)
    assert method.calls == 0


def test_a_late_renewal_never_shortens_the_lease():
    dog = fencing.Watchdog([Recorder()])
    dog.renew(100.0, True)
    dog.renew(50.0, True)
    assert dog.until == 100.0


def test_malformed_renewals_are_ignored():
    assert fencing.message_of(b"not json") is None
    assert fencing.message_of(b'{"until": 3}') is None
    assert fencing.message_of(b'{"until": 3.5, "armed": true}') == (3.5, True)


def _guest(directory: Path, name: str, token: str) -> subprocess.Popen:
    """A process shaped like a fake guest (its name and token on the command line), with its pid file."""
    # A loop of short sleeps: a killed guest leaves no long-lived child behind.
    process = subprocess.Popen(["/bin/sh", "-c", "while :; do sleep 0.2; done", "cairn-fake-guest", token])
    entry = directory / name
    entry.mkdir(parents=True)
    (entry / "pid").write_text(f"{process.pid} {token}\n")
    return process


def test_kill_instances_finds_a_qemu_by_the_token_inside_its_run_object(tmp_path):
    """QEMU carries its run token inside an argument (`-object secret,id=cairn-run,data=TOKEN`): found and killed
    like a fake guest; a process without the token (a reused pid) is not."""
    token = "0123456789abcdef0123456789abcdef"
    qemu = subprocess.Popen(["/bin/sh", "-c", "while :; do sleep 0.2; done", "qemu-system-x86_64", "-object",
                             f"secret,id=cairn-run,data={token}"])
    (tmp_path / "inst-q").mkdir()
    (tmp_path / "inst-q" / "pid").write_text(f"{qemu.pid} {token}\n")
    try:
        method = fencing.KillInstances(tmp_path)
        assert [name for name, _, _ in method.running()] == ["inst-q"]
        (tmp_path / "inst-q" / "pid").write_text(f"{qemu.pid} {'f' * 32}\n")
        assert method.running() == []
        (tmp_path / "inst-q" / "pid").write_text(f"{qemu.pid} {token}\n")
        assert "killed 1 instance process(es): inst-q" in method.fence()
        assert qemu.wait(5) == -signal.SIGKILL
    finally:
        with contextlib.suppress(ProcessLookupError):
            qemu.kill()
        qemu.wait()


def test_kill_instances_kills_what_the_pid_files_name_and_checks(tmp_path):
    """SIGKILL to each recorded guest; a pid file naming another process (token mismatch) is left alone."""
    guests = [_guest(tmp_path, f"inst-{k}", f"token-{k:011d}") for k in range(2)]
    stranger = subprocess.Popen(["sleep", "60"])
    (tmp_path / "inst-x").mkdir()
    (tmp_path / "inst-x" / "pid").write_text(f"{stranger.pid} tokx\n")
    try:
        method = fencing.KillInstances(tmp_path)
        assert sorted(name for name, _, _ in method.running()) == ["inst-0", "inst-1"]
        assert "killed 2 instance process(es)" in method.fence()
        assert [g.wait(5) for g in guests] == [-signal.SIGKILL] * 2
        assert stranger.poll() is None and method.running() == []
    finally:
        for process in guests + [stranger]:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()


def test_the_oob_program_powers_off_and_reports_failure(tmp_path):
    script = tmp_path / "oob"
    script.write_text("#!/bin/sh\n[ \"$1 $2\" = 'power-off node7' ] && exit 0\necho no such node >&2\nexit 3\n")
    script.chmod(0o755)
    assert "powered off node7" in fencing.OobProgram(str(script), "node7").fence()
    with pytest.raises(OSError, match="exited 3: no such node"):
        fencing.OobProgram(str(script), "node8").fence()


def test_the_watchdog_process_kills_the_instances_when_the_lease_lapses(tmp_path):
    """The real process: renewed through WatchdogLink, it leaves the guest alone while the lease holds and kills
    it once the lease lapses; disarmed it kills nothing; SIGTERM stops it cleanly (removing its pid file)."""
    instances = tmp_path / "hv" / "instances"
    guest = _guest(instances, "inst-a", "token-a-00000000")
    dog = subprocess.Popen([sys.executable, "-m", "appliance.fencing", str(tmp_path)])
    link = fencing.WatchdogLink(tmp_path)
    try:
        deadline = time.monotonic() + 10
        while not (tmp_path / fencing.SOCKET_NAME).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert oct((tmp_path / fencing.SOCKET_NAME).stat().st_mode & 0o777) == "0o600"
        assert link.renew(boottime() + 60, False)
        assert link.renew(boottime() + 1.0, True)       # shorter: the watchdog keeps the longer lease
        time.sleep(1.5)
        assert guest.poll() is None
        other = _guest(instances, "inst-b", "token-b-00000000")
        dog.send_signal(signal.SIGTERM)
        dog.wait(10)
        assert not (tmp_path / fencing.PID_NAME).exists()
        dog = subprocess.Popen([sys.executable, "-m", "appliance.fencing", str(tmp_path)])
        deadline = time.monotonic() + 10
        while not link.renew(boottime() + 0.5, True) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert guest.wait(10) == -signal.SIGKILL and other.wait(10) == -signal.SIGKILL
    finally:
        link.close()
        for process in (guest, dog):
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait()
        with contextlib.suppress(NameError, ProcessLookupError):
            other.kill()
            other.wait()


def test_the_device_is_fed_while_the_lease_holds_or_the_kill_is_verified(tmp_path):
    """A FIFO stands for /dev/watchdog: fed at every step while the lease holds; after a lapse only once every
    fence method succeeded (a failing kill stops the feeding, so the device resets the machine); 'V' on close."""
    import os

    path = tmp_path / "watchdog"
    os.mkfifo(path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        method = Recorder(fail=10**6)
        dog = fencing.Watchdog([method], fencing.WatchdogDevice(str(path)))

        def fed() -> bytes:
            try:
                return os.read(reader, 100)
            except BlockingIOError:
                return b""

        dog.renew(10.0, True)
        for now in (1.0, 2.0, 3.0):
            dog.step(now)
        assert fed() == b"\0\0\0"
        dog.step(11.0)
        dog.step(12.0)
        assert fed() == b"" and not dog.fenced
        method.fail = 0
        dog.step(13.0)
        assert dog.fenced and fed() == b"\0"
        dog.device.close()
        assert fed() == b"V"
    finally:
        os.close(reader)
