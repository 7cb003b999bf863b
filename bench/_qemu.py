"""Bare QEMU for benchmarks: the test guest started with the argv Cairn's driver builds, a bare QMP live
migration (shared/reference/qemu.md 5.1), the guest-visible gap of a migration, and a dirtying writer.

Nothing here goes through Cairn's daemons: these are the yardsticks Cairn is measured against, built
from the driver's own pure pieces (`qemu.describe`, `qemu.build_argv`, `qemu.migration_parameters`) and
its QMP client, so that the machine and the migration settings are the ones Cairn uses.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from appliance.drivers import qemu, qmp
from images import guestlink

MARKER = r"GUEST-MARKER-BOOTED bootid=([0-9a-f]{8})"
BOOT_TIMEOUT_S = 120.0
QUIT_WAIT_S = 10.0
MIGRATION_POLL_S = 0.05           # as the driver polls (qemu.MIGRATION_POLL_S)
MIGRATION_TIMEOUT_S = 300.0
WATCH_EVERY_S = 0.005
FIRST_TICK_TIMEOUT_S = 30.0
# The writer: a 64 MiB file of random bytes (random, so that QEMU cannot send its pages as zero pages)
# copied over another file in a tmpfs, again and again, in the background of the guest.
DIRTY_DIR = "/run/dirty"
WRITER_SETUP = (f"mkdir -p {DIRTY_DIR} && (grep -q ' {DIRTY_DIR} ' /proc/mounts || "
                f"mount -t tmpfs -o size=200m tmpfs {DIRTY_DIR}) && "
                f"([ -s {DIRTY_DIR}/src ] || dd if=/dev/urandom of={DIRTY_DIR}/src bs=1M count=64 2>/dev/null)")
WRITER_START = (f"setsid sh -c 'while :; do cat {DIRTY_DIR}/src > {DIRTY_DIR}/dst; done' "
                f"</dev/null >/dev/null 2>&1 & echo $! > {DIRTY_DIR}/pid")
WRITER_STOP = (f"kill -TERM -$(cat {DIRTY_DIR}/pid) 2>/dev/null || kill $(cat {DIRTY_DIR}/pid); "
               f"rm -f {DIRTY_DIR}/pid {DIRTY_DIR}/dst")




def spec_of(description: dict) -> dict:
    """The instance spec `qemu.describe` turns back into `description` (other than its instance id)."""
    hvparams = {"kernel_path": description["kernel_path"], "initrd_path": description["initrd_path"],
                "kernel_args": description["kernel_args"],
                "migration_bandwidth": description["migration_bandwidth_mib_s"]}
    if description.get("migration_downtime_ms"):
        hvparams["migration_downtime"] = description["migration_downtime_ms"]
    if description.get("nic_mode"):
        hvparams["nic_mode"] = description["nic_mode"]
    return {"memory_mib": description["memory_mib"], "vcpus": description["vcpus"], "nics": description["nics"],
            "disk_template": description["disk_template"], "disks": description["disks"], "hvparams": hvparams}


def machine_differences(one: dict, other: dict) -> list[str]:
    """The keys in which two descriptions differ, other than the instance's own id and uuid."""
    return [f"{key}: {one.get(key)!r} != {other.get(key)!r}" for key in sorted(set(one) | set(other))
            if key not in ("instance", "uuid") and one.get(key) != other.get(key)]


@dataclass
class BareVm:
    """A QEMU started here, outside Cairn, with the driver's argv for `description` in `directory`."""

    description: dict
    files: qemu.InstanceFiles
    token: str
    pid: int

    def alive(self) -> bool:
        return qemu.qemu_alive(self.pid, self.token)

    def kill(self) -> None:
        qemu.kill_process(self.pid, self.token)


class Processes:
    """Every bare QEMU this benchmark started, so that each is killed by its pid at the end, also on failure."""

    def __init__(self) -> None:
        self.vms: list[BareVm] = []

    def add(self, vm: BareVm) -> BareVm:
        self.vms.append(vm)
        return vm

    def kill_all(self) -> None:
        for vm in self.vms:
            vm.kill()
        deadline = time.monotonic() + 5.0
        while any(vm.alive() for vm in self.vms) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.vms = [vm for vm in self.vms if vm.alive()]


def instance_files(directory: Path) -> qemu.InstanceFiles:
    return qemu.InstanceFiles(directory, qemu.socket_dir(directory))


async def start_vm(description: dict, directory: Path, incoming: bool, processes: Processes) -> BareVm:
    """Run QEMU with the driver's argv (it daemonizes once the machine is built); its pid from its pid file."""
    files = instance_files(directory)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    if files.sockets is not None:
        qemu.make_socket_dir(files.sockets)
    token = secrets.token_hex(16)
    argv = qemu.build_argv(description, files, token, [], incoming=incoming)
    with open(files.qemu_log, "ab") as errors:
        done = await trio.run_process(argv, stdin=None, stdout=None, stderr=errors, start_new_session=True,
                                      check=False)
    pids = qemu.processes_with_token(token) if done.returncode != 0 else []
    for pid in pids:
        qemu.kill_process(pid, token)
    if done.returncode != 0:
        raise RuntimeError(f"qemu exited {done.returncode}; see {files.qemu_log}")
    vm = processes.add(BareVm(description, files, token, int(files.qemu_pid.read_text().split()[0])))
    files.pid.write_text(f"{vm.pid} {token}\n")
    return vm


def boot_vm(description: dict, directory: Path, processes: Processes) -> tuple[BareVm, str]:
    """A bare QEMU running the guest: once its marker is on the console log; (vm, boot id)."""
    vm = trio.run(start_vm, description, directory, False, processes)
    line = guestlink.wait_for_line(vm.files.console_log, MARKER, BOOT_TIMEOUT_S)
    return vm, line.match.group(1)


@dataclass
class BareMigration:
    """One bare migration: the clock (destination start to `completed`), its parts, and QEMU's last answer."""

    total_s: float
    destination_start_s: float          # from running QEMU to its pid file and QMP socket
    incoming_ready_s: float             # then capabilities and migrate-incoming, until its port is known
    migrate_s: float                    # then the source's capabilities, parameters, migrate, until completed
    info: dict
    destination: BareVm
    quit_s: float = 0.0                 # (not on the clock) the source's quit until its process is gone
    started_wall: float = 0.0


async def _set_tls(monitor: qmp.Monitor, tls_dir: Path | None, endpoint: str) -> None:
    """As the driver's QemuHypervisor._set_tls: a fresh x509 credentials object, or TLS explicitly off."""
    with contextlib.suppress(qmp.QmpError):
        await monitor.execute("object-del", {"id": qemu.TLS_OBJECT_ID})
    if tls_dir is None:
        await monitor.execute("migrate-set-parameters", {"tls-creds": ""})
        return
    await monitor.execute("object-add", {"qom-type": "tls-creds-x509", "id": qemu.TLS_OBJECT_ID,
                                         "dir": os.fspath(tls_dir), "endpoint": endpoint, "verify-peer": True})
    await monitor.execute("migrate-set-parameters", {"tls-creds": qemu.TLS_OBJECT_ID})


CAPABILITIES = {"capabilities": [{"capability": "events", "state": True},
                                 {"capability": "return-path", "state": True}]}


async def bare_migrate(source: BareVm, directory: Path, processes: Processes, tls_dir: Path | None = None,
                       host: str = "127.0.0.1") -> BareMigration:
    """Migrate `source` to a new QEMU in `directory` with the bare QMP sequence; then quit the source.

    The clock runs from starting the destination to the source answering `completed`; the source's QMP
    connection is made before it (the driver keeps one open to every instance).
    """
    description = source.description
    async with await qmp.connect(source.files.qmp) as src:
        await src.execute("query-status")
        started_wall, started = time.time(), time.perf_counter()
        destination = await start_vm(description, directory, True, processes)
        async with await qmp.connect(destination.files.qmp) as dst:
            spawned = time.perf_counter()
            await dst.execute("migrate-set-capabilities", CAPABILITIES)
            if tls_dir is not None:
                await _set_tls(dst, tls_dir, "server")
            await dst.execute("migrate-incoming", {"uri": qemu.migration_uri(host, 0)})
            port = (await dst.execute("query-migrate"))["socket-address"][0]["port"]
            ready = time.perf_counter()
            await src.execute("migrate-set-capabilities", CAPABILITIES)
            if tls_dir is not None:
                await _set_tls(src, tls_dir, "client")
            await src.execute("migrate-set-parameters", qemu.migration_parameters(description, tls_dir is not None))
            await src.execute("migrate", {"uri": qemu.migration_uri(host, port)})
            with trio.fail_after(MIGRATION_TIMEOUT_S):
                while True:
                    info = await src.execute("query-migrate")
                    if info.get("status") in qemu.MIGRATION_ENDED:
                        break
                    await trio.sleep(MIGRATION_POLL_S)
            ended = time.perf_counter()
        if info.get("status") != "completed":
            destination.kill()
            raise RuntimeError(f"bare migration ended {info.get('status')}: {info.get('error-desc', '')}")
        with contextlib.suppress(qmp.QmpFailure):
            await src.execute("quit", timeout_s=QUIT_WAIT_S)
    deadline = time.perf_counter() + QUIT_WAIT_S
    while source.alive() and time.perf_counter() < deadline:
        await trio.sleep(0.005)
    quit_s = time.perf_counter() - ended
    source.kill()
    return BareMigration(ended - started, spawned - started, ready - spawned, ended - ready, info, destination,
                         quit_s, started_wall)


# --- what the guest sees ---------------------------------------------------------------------------


@dataclass
class Gap:
    """The largest pause in the guest's TICK lines across a migration, in host time, and whether the counter
    went on at last+1 with the same boot id."""

    gap_s: float
    last_source: guestlink.Tick | None
    first_destination: guestlink.Tick | None
    milestones: dict = field(default_factory=dict)

    @property
    def continuous(self) -> bool:
        last, first = self.last_source, self.first_destination
        return last is not None and first is not None and first.bootid == last.bootid and first.n == last.n + 1


class GapWatch:
    """Follows the source's and the destination's console logs (guestlink.TickWatcher) every WATCH_EVERY_S in a
    thread, from `start` until the destination's first TICK; also notes the first wall time at which each of
    `milestones` (name -> predicate) held.

    The source's log is held open from the start: Cairn removes the source's entry, log and all, right after
    the migration, and the last TICK there may not have been read yet. The watcher reads it through
    /proc/self/fd, which reaches the file even once it is unlinked.
    """

    def __init__(self, source_log: Path, destination_log: Path,
                 milestones: dict[str, Callable[[], bool]] | None = None) -> None:
        self._fd = os.open(source_log, os.O_RDONLY)
        with open(f"/proc/self/fd/{self._fd}", "rb") as log:
            data = log.read()
        self.source = guestlink.TickWatcher(f"/proc/self/fd/{self._fd}", data.rfind(b"\n") + 1, time.time)
        self.destination = guestlink.TickWatcher(destination_log, 0, time.time)
        self.milestones = dict(milestones or {})
        self.reached: dict[str, float] = {}
        self.last_source: guestlink.Tick | None = None
        self.first_destination: guestlink.Tick | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self, timeout_s: float = FIRST_TICK_TIMEOUT_S) -> GapWatch:
        """Start following, once a first TICK has been read on the source (the one the gap starts from, if
        the migration pauses the guest at once)."""
        deadline = time.monotonic() + timeout_s
        while self.last_source is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no TICK on the source's console log within {timeout_s:g} s")
            self._poll()
            time.sleep(WATCH_EVERY_S)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self._poll()
            if self.first_destination is not None:
                return
            self._stop.wait(WATCH_EVERY_S)

    def _poll(self) -> None:
        now = time.time()
        for name, held in self.milestones.items():
            if name not in self.reached:
                with contextlib.suppress(OSError, ValueError):
                    if held():
                        self.reached[name] = now
        for tick in self.source.poll():
            self.last_source = tick
        if self.first_destination is None:
            arrived = self.destination.poll()
            if arrived:
                self.first_destination = arrived[0]

    def finish(self, timeout_s: float = FIRST_TICK_TIMEOUT_S) -> Gap:
        """Wait for the destination's first TICK (up to `timeout_s`), stop, and say what the guest saw."""
        self._thread.join(timeout=timeout_s)
        self._stop.set()
        self._thread.join(timeout=5)
        self._poll()
        os.close(self._fd)
        last, first = self.last_source, self.first_destination
        gap = first.host_s - last.host_s if last is not None and first is not None else float("nan")
        return Gap(gap, last, first, dict(self.reached))


KERNEL_TROUBLE = re.compile(r"Kernel panic|BUG:|Oops|soft lockup|stack-protector|general protection|"
                            r"detected stalls|Call Trace")


def boot_ids(log: Path) -> list[str]:
    """The boot ids of every marker line in a console log, in order."""
    with contextlib.suppress(FileNotFoundError):
        return re.findall(MARKER, log.read_text(errors="replace"))
    return []


def wait_new_boot(log: Path, old_bootid: str | None, timeout_s: float = BOOT_TIMEOUT_S) -> str:
    """The boot id of the first boot on the console log whose id is not `old_bootid`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        fresh = [bootid for bootid in boot_ids(log) if bootid != old_bootid]
        if fresh:
            return fresh[-1]
        time.sleep(0.1)
    raise TimeoutError(f"no new boot on {log} within {timeout_s:g} s")


def guest_trouble(log: Path, gap: Gap, bootid: str, after_ticks: int = 3, timeout_s: float = 20.0) -> str | None:
    """Why the guest is not well on the destination after a migration, or None: its counter must go on at
    last+1 with the same boot id for `after_ticks` more TICKs, and its console must show no kernel trouble."""
    if gap.first_destination is None:
        return f"no TICK on the destination's console within {FIRST_TICK_TIMEOUT_S:g} s"
    if not gap.continuous:
        return f"the counter did not go on: {gap.last_source} then {gap.first_destination}"
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(FileNotFoundError):
            text = log.read_text(errors="replace")
            trouble = KERNEL_TROUBLE.search(text)
            if trouble:
                line = text[text.rfind("\n", 0, trouble.start()) + 1:].split("\n", 1)[0]
                return f"the guest kernel reports trouble: {line.strip()}"
            ticks = guestlink.ticks(log)
            if {t.bootid for t in ticks} - {bootid}:
                return "the guest rebooted (a new boot id on the destination)"
            if ticks and ticks[-1].n >= gap.first_destination.n + after_ticks:
                return None
        if time.monotonic() > deadline:
            return f"the guest stopped counting on the destination (no {after_ticks} TICKs in {timeout_s:g} s)"
        time.sleep(0.1)


def shell_run(control_socket: Path, command: str, timeout_s: float = 120.0) -> str:
    """Run one command in the guest's control shell (connecting, with the handshake, each time)."""
    with guestlink.ControlShell.connect(control_socket, 30.0) as shell:
        return shell.run(command, timeout_s)


def wait_ticks(log: Path, count: int, timeout_s: float = 60.0) -> None:
    """Until the console log holds `count` TICK lines."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(FileNotFoundError):
            if len(guestlink.ticks(log)) >= count:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {count} TICK lines in {log} after {timeout_s:g} s")
        time.sleep(0.05)


# --- clean-up ----------------------------------------------------------------------------------------


def processes_under(directory: Path) -> list[int]:
    """Pids of live processes (other than this one) whose command line names `directory`: what a run left."""
    marker = os.fsencode(os.path.abspath(directory))
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
    return found


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
            os.kill(pid, signal.SIGKILL)


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def median_or_nan(values: list[float]) -> float:
    import statistics

    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")

