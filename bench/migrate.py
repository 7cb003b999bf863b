"""How long Cairn takes to live-migrate a real guest against a bare QMP migration, and what a mirrored disk costs.

Migration. One local 3-node cluster (`cairn up --hypervisor kvm`, real daemons on 127.0.0.1) runs the test
guest (images/testguest.py: kernel + busybox initramfs, TICK on its console every 100 ms) as a diskless
instance of `--memory-mib` MiB; beside it, outside Cairn, a bare QEMU runs the same guest with the argv the
driver builds (qemu.describe + qemu.build_argv, same machine, same migration parameters). Each round
migrates both, alternating Cairn, bare, Cairn, bare, and both directions (node1 -> node2 -> node1 ...),
once idle and once "with a writer" (the guest copies a 64 MiB file of random bytes over another in a tmpfs,
again and again, from 1 s before the migration until after it); odd rounds do idle first, even rounds the
writer first, so each variant goes both ways.

- Cairn's clock runs from the API request of an `instance_migrate` job (appliance/client, one client kept
  open, as a script would) to the job's success as /jobs/ID/wait reports it.
- The bare clock runs from starting the destination QEMU (`-incoming defer`) to the source answering
  `completed`: destination capabilities (events, return-path), migrate-incoming on tcp:127.0.0.1:0, its
  port from query-migrate, source capabilities, the driver's migrate-set-parameters (max-bandwidth),
  migrate, query-migrate every 50 ms. Then the source quits (off the clock). Over TLS with the cluster's
  credentials, as Cairn's own migrations between nodes are (equal encryption, so the ratio is what Cairn
  adds around QEMU); --bare-clear migrates the bare guest in clear instead, to see what TLS costs.
- `downtime_ms` is QEMU's own downtime figure: Cairn's from the message of its InstanceMigrationFinished
  event ("migrated in ... ms, downtime ... ms, ..."), the bare run's (`raw_downtime_ms`) from query-migrate.
- `guest_gap_ms` is the host time between the last TICK read on the source's console log and the first
  on the destination's (guestlink.TickWatcher on both, polled every 5 ms; the source's log held open
  since Cairn deletes it). It includes one normal TICK interval (`tick_interval_ms`, measured on the
  source before each migration).

Every Cairn round also prints where its time went: from the job's events (proposed_at) and from files
watched every 5 ms on both nodes (the destination's staging directory, its entry renamed into place, the
source QEMU gone, the source entry gone), and the CPU seconds the cluster's daemons used while each clock
ran (`daemons' cpu`: for a bare round, what the idle cluster uses meanwhile).

After each migration the guest must go on counting (last+1, same boot id, three more TICKs) with no kernel
trouble on its console, and answer its control shell. A guest that does not (QEMU 7.2 under TCG sometimes
corrupts a guest that writes memory while it migrates, Cairn or bare) is reported, counted
(`cairn_broken_guests`, `raw_broken_guests`), left out of the gap figures and restarted; its round's
time still counts, since QEMU completed the migration.

IOPS. 4 KiB O_DIRECT writes at queue depth 1 in the guest (`/bin/iops /dev/vda COUNT`, one warm-up run
per disk first) on a `file` instance and on a `replicated` one (node1:node2), `--iops-runs` runs each,
alternating; `mirror_iops_ratio` is the ratio of the medians (replicated / file). The replicated disk
counts as mirrored only if records the guest writes reach the secondary's copy of the disk (read on
node2); otherwise, or when the instance cannot start, a line says so and the ratio is `nan`.

    .venv/bin/python bench/migrate.py [--rounds 5] [--memory-mib 512] [--skip-iops] [--keep]
        [--iops-runs 5] [--iops-count 4000] [--bare-clear] [--dir DIR]

Last line: RESULT cairn_total_s=... raw_total_s=... ratio=... downtime_ms=... raw_downtime_ms=...
guest_gap_ms=... raw_guest_gap_ms=... mirror_iops_ratio=... (medians; then the idle and writer splits)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import _qemu  # noqa: E402
from _qemu import GapWatch, Processes, load_average, median_or_nan, shell_run  # noqa: E402

from appliance.client import jobs  # noqa: E402
from appliance.client.config import resolve_target  # noqa: E402
from appliance.client.http import Client  # noqa: E402
from appliance.drivers import qemu  # noqa: E402
from appliance.drivers.files import FileStorage  # noqa: E402
from images import guestlink, testguest  # noqa: E402
from tests.integration.cluster_support import LocalCluster  # noqa: E402

INSTANCE = "migvm"
WRITER_WARMUP_S = 1.0
GUEST_ANSWER_S = 30.0
SETTLE_S = 1.0
TICKS_BEFORE = 3
IOPS_DISK = "/dev/vda"
IOPS_SIZE = "256M"
PROBE_RECORDS = 4
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROBE_START = 60000              # records far from the blocks `iops` writes (4 KiB each: 234 MiB in)
UPTODATE_TIMEOUT_S = 120.0
REMOVE_COMMIT_S = 0.5
# The phases of a Cairn migration, each ending at a point on the wall clock (see `phases`).
PHASES = ("admit", "pickup", "dest_start", "migrate_quit", "report", "switch", "observe", "finish", "reply")


def say(text: str = "") -> None:
    print(text, flush=True)


def fmt(value: float, digits: int = 3) -> str:
    return "nan" if value != value else f"{value:.{digits}f}"


# --- the cluster's API ---------------------------------------------------------------------------------


class Api:
    """One API client for the run (the way a script keeps one), and a cursor over the committed events."""

    def __init__(self, cluster: LocalCluster) -> None:
        target = resolve_target(config=str(cluster.directory / "client.toml"), environ={})
        self.client = Client(target.addresses, target.ca_pem, target.token, socket_path=target.socket_path,
                             timeout_s=60.0)
        self.cursor = 0
        self.new_events()

    def new_events(self) -> list[dict]:
        """The events committed since the last call."""
        found = [e for e in self.client.stream("/api/v1/events", since=self.cursor) if isinstance(e, dict)]
        if found:
            self.cursor = max(e["seq"] for e in found)
        return found

    def migrate(self, instance: str, target: str) -> tuple[float, float, dict]:
        """Submit the migration and wait for its end: (request wall time, seconds until success, job row)."""
        operations = [jobs.operation("instance_migrate", instance=instance, target_node=target)]
        wall, started = time.time(), time.perf_counter()
        job = jobs.submit(self.client, operations, "bench/migrate.py")
        row = jobs.wait(self.client, job)
        return wall, time.perf_counter() - started, row

    def run(self, operations: list[dict]) -> dict:
        """Submit a job and wait for its end; its row."""
        return jobs.wait(self.client, jobs.submit(self.client, operations, "bench/migrate.py"))

    def master(self) -> str:
        answer = self.client.get("/api/v1/cluster/master")[1]
        return str(answer.get("master") if isinstance(answer, dict) else answer)

    def close(self) -> None:
        self.client.close()


# --- one migration each way ----------------------------------------------------------------------------


@dataclass
class Round:
    """One timed migration, by Cairn or bare."""

    clock: str                  # "cairn" or "bare"
    variant: str                # "idle" or "writer"
    source: str
    target: str
    total_s: float
    gap: _qemu.Gap
    tick_interval_s: float
    downtime_ms: float = float("nan")
    qemu_total_ms: float = float("nan")
    ram_mib: float = float("nan")
    parts: dict = field(default_factory=dict)
    trouble: str | None = None
    daemon_cpu_s: float = float("nan")

    def line(self, number: int) -> str:
        gap = "nan" if self.gap.gap_s != self.gap.gap_s else f"{self.gap.gap_s * 1000:.0f}"
        text = (f"{number:>5} {self.clock:<5} {self.variant:<6} {self.source}->{self.target}  "
                f"total {self.total_s:6.3f} s  downtime {fmt(self.downtime_ms, 0):>4} ms  "
                f"qemu {fmt(self.qemu_total_ms, 0):>5} ms  ram {fmt(self.ram_mib, 0):>4} MiB  "
                f"gap {gap:>4} ms (tick {self.tick_interval_s * 1000:.0f} ms)  daemons' cpu "
                f"{fmt(self.daemon_cpu_s, 2)} s")
        if self.trouble is not None:
            text += "\n      (guest broken after this migration, restarted: see above)"
        if self.parts:
            text += "\n      " + "  ".join(f"{name} {fmt(value)}" for name, value in self.parts.items())
        return text


def tick_interval(log: Path, count: int = 8) -> float:
    """The median host-independent interval of the guest's last `count` TICK lines (from its uptime)."""
    ticks = guestlink.ticks(log)[-count:]
    steps = [b.uptime_s - a.uptime_s for a, b in zip(ticks, ticks[1:]) if b.n == a.n + 1]
    return statistics.median(steps) if steps else float("nan")


class Guest:
    """What both guests share: a round is wait for TICKs, maybe start the writer, migrate (the subclass's
    `_move`, timed there), check the guest on the destination, stop the writer; a broken guest is replaced."""

    clock = ""
    bootid = ""

    def here(self) -> str:
        """The node (for the bare guest: the directory) the guest runs on now."""
        raise NotImplementedError

    def files(self, side: str) -> qemu.InstanceFiles:
        raise NotImplementedError

    def _move(self, target: str, watch_of, meter) -> tuple[float, _qemu.Gap, dict, dict, float]:
        """Migrate to `target`: (seconds on the clock, the gap, QEMU's last query-migrate or {}, the parts,
        the daemons' CPU seconds while the clock ran)."""
        raise NotImplementedError

    def _replace(self) -> str:
        """Give the guest a fresh boot after it broke; its new boot id."""
        raise NotImplementedError

    def migrate(self, variant: str, target: str, meter) -> Round:
        """One timed migration to `target`; `meter()` gives the CPU seconds the cluster's daemons have used."""
        source, files = self.here(), self.files(self.here())
        _qemu.wait_ticks(files.console_log, len(guestlink.ticks(files.console_log)) + TICKS_BEFORE)
        interval = tick_interval(files.console_log)
        if variant == "writer":
            shell_run(files.control, _qemu.WRITER_START)
            time.sleep(WRITER_WARMUP_S)

        def watch_of(milestones=None) -> GapWatch:
            return GapWatch(files.console_log, self.files(target).console_log, milestones).start()

        total_s, gap, info, parts, cpu_s = self._move(target, watch_of, meter)
        result = Round(self.clock, variant, source, target, total_s, gap, interval,
                       float(info.get("downtime", "nan")), float(info.get("total-time", "nan")),
                       info.get("ram", {}).get("transferred", float("nan")) / 2**20, parts, daemon_cpu_s=cpu_s)
        arrived = self.files(target)
        result.trouble = _qemu.guest_trouble(arrived.console_log, gap, self.bootid)
        if result.trouble is None and variant == "writer":
            try:
                shell_run(arrived.control, _qemu.WRITER_STOP, timeout_s=GUEST_ANSWER_S)
            except guestlink.GuestLinkError as error:
                result.trouble = f"the guest's control shell does not answer ({error})"
        if result.trouble is not None:
            say(f"      {self.clock}: GUEST BROKEN after the migration to {target}: {result.trouble}; restarting it")
            self.bootid = self._replace()
            shell_run(self.files(self.here()).control, _qemu.WRITER_SETUP, timeout_s=300)
        return result


class CairnGuest(Guest):
    """The diskless instance INSTANCE of the cluster, migrated back and forth by jobs."""

    clock = "cairn"

    def __init__(self, cluster: LocalCluster, api: Api, node: str) -> None:
        self.cluster, self.api, self.node = cluster, api, node
        rows = cluster.json("instance", "list", "-o", "name,id")
        self.id = next(row["id"] for row in rows if row["name"] == INSTANCE)
        self.bootid = wait_booted(self.files(node).console_log)

    def here(self) -> str:
        return self.node

    def entry(self, node: str) -> Path:
        return self.cluster.directory / node / "kvm" / "instances" / self.id

    def files(self, side: str) -> qemu.InstanceFiles:
        return _qemu.instance_files(self.entry(side))

    def description(self) -> dict:
        return json.loads(self.files(self.node).runtime.read_text())["description"]

    def _move(self, target: str, watch_of, meter) -> tuple[float, _qemu.Gap, dict, dict, float]:
        source = self.node
        pid, token = self.files(source).pid.read_text().split()
        instances = self.cluster.directory / target / "kvm" / "instances"
        watch = watch_of({
            "target_staging": (instances / f".new-{self.id}").exists,
            "target_entry": self.entry(target).exists,
            "source_qemu_gone": lambda: not qemu.qemu_alive(int(pid), token),
            "source_entry_gone": lambda: not self.entry(source).exists(),
        })
        self.api.new_events()                    # only this job's events after it
        cpu_before = meter()
        wall, total_s, row = self.api.migrate(INSTANCE, target)
        cpu_s = meter() - cpu_before
        gap = watch.finish()
        if row.get("status") != "success":
            raise RuntimeError(f"the migration job {row.get('id')} ended {row.get('status')}: "
                               f"{row.get('error_message')}")
        self.node = target
        events = self.api.new_events()
        return total_s, gap, qemu_figures(events, self.id), phases(wall, wall + total_s, events, gap.milestones,
                                                                    self.id), cpu_s

    def _replace(self) -> str:
        # Killed, for the reconciler to restart it as a crashed instance: neither `instance reboot` (it changes
        # nothing on a running instance) nor `instance shutdown` (the driver waits 120 s for this guest, which
        # ignores the ACPI button, whatever --timeout says) does it here. A startup afterwards resets the
        # restart count, so that later breakages are restarted too.
        files = self.files(self.node)
        pid, token = files.pid.read_text().split()
        qemu.kill_process(int(pid), token)
        bootid = _qemu.wait_new_boot(files.console_log, self.bootid)
        row = self.api.run([jobs.operation("instance_startup", instance=INSTANCE)])
        if row.get("status") != "success":
            raise RuntimeError(f"the restarted guest's startup job ended {row.get('status')}: "
                               f"{row.get('error_message')}")
        _qemu.wait_ticks(files.console_log, 5)
        return bootid

    def remove(self) -> None:
        """Remove the instance (to keep it off the CPU during the IOPS runs). Its QEMU is killed once the removal
        is committed: the driver would wait 120 s for this guest to power off (see `_replace`)."""
        job = jobs.submit(self.api.client, [jobs.operation("instance_remove", instance=INSTANCE)], "bench/migrate.py")
        time.sleep(REMOVE_COMMIT_S)
        with contextlib.suppress(OSError, ValueError):
            pid, token = self.files(self.node).pid.read_text().split()
            qemu.kill_process(int(pid), token)
        row = jobs.wait(self.api.client, job)
        if row.get("status") != "success":
            raise RuntimeError(f"removing {INSTANCE} ended {row.get('status')}: {row.get('error_message')}")


def qemu_figures(events: list[dict], instance_id: str) -> dict:
    """QEMU's own figures of a Cairn migration, from its InstanceMigrationFinished event's message ("migrated in
    T ms, downtime D ms, M MiB sent"), in query-migrate's shape; {} when the message carries none."""
    for event in events:
        payload = event.get("payload", {})
        if event["name"] == "InstanceMigrationFinished" and payload.get("instance") == instance_id:
            found = re.search(r"in (\d+) ms, downtime (\d+) ms, (\d+) MiB sent", str(payload.get("message", "")))
            if found:
                return {"total-time": int(found.group(1)), "downtime": int(found.group(2)),
                        "ram": {"transferred": int(found.group(3)) * 2**20}}
    return {}


def phases(request: float, done: float, events: list[dict], seen: dict, instance_id: str) -> dict:
    """Where a Cairn migration's time went: each phase ends at an event's proposed_at or a watched milestone.

    admit: request -> InstanceMigrationStarted proposed (API, JobSubmitted, admission, plan);
    pickup: -> the destination's staging directory appears (commit, the source's reconciler, the prepare call);
    dest_start: -> the destination's entry is renamed into place (QEMU start, QMP, TLS object, migrate-incoming);
    migrate_quit: -> the source QEMU is gone (the prepare answer, source settings, the migration, quit);
    report: -> InstanceMigrationFinished proposed (entry removal, the reconciler's report);
    switch: -> InstanceMigrated proposed; observe: -> InstanceObservedRunning proposed (the target's listing);
    finish: -> JobSucceeded proposed; reply: -> the client has the job's success.
    """
    proposed: dict[str, float] = {}
    for event in events:
        mine = event.get("payload", {}).get("instance") in (instance_id, None)
        if mine and event["name"] not in proposed:
            proposed[event["name"]] = event["proposed_at"]
    points = [("admit", proposed.get("InstanceMigrationStarted")), ("pickup", seen.get("target_staging")),
              ("dest_start", seen.get("target_entry")), ("migrate_quit", seen.get("source_qemu_gone")),
              ("report", proposed.get("InstanceMigrationFinished")), ("switch", proposed.get("InstanceMigrated")),
              ("observe", proposed.get("InstanceObservedRunning")), ("finish", proposed.get("JobSucceeded")),
              ("reply", done)]
    parts, last = {}, request
    for name, at in points:
        if at is None:
            parts[name] = float("nan")
            continue
        parts[name] = at - last
        last = at
    return parts


class BareGuest(Guest):
    """The same guest in a QEMU of our own, migrated between two directories by the bare QMP sequence."""

    clock = "bare"

    def __init__(self, directory: Path, description: dict, processes: Processes, tls_dir: Path | None) -> None:
        self.directory, self.processes, self.tls_dir = directory, processes, tls_dir
        self.description = description
        self.side = "node1"
        self.vm, self.bootid = _qemu.boot_vm(description, directory / self.side, processes)

    def here(self) -> str:
        return self.side

    def files(self, side: str) -> qemu.InstanceFiles:
        return _qemu.instance_files(self.directory / side)

    def _move(self, target: str, watch_of, meter) -> tuple[float, _qemu.Gap, dict, dict, float]:
        vm, watch = self.vm, watch_of()
        cpu_before = meter()
        migration = trio.run(_qemu.bare_migrate, vm, self.directory / target, self.processes, self.tls_dir)
        cpu_s = meter() - cpu_before
        gap = watch.finish()
        qemu.remove_entry(vm.files.directory)
        self.vm, self.side = migration.destination, target
        parts = {"dest_start": migration.destination_start_s, "incoming": migration.incoming_ready_s,
                 "migrate": migration.migrate_s, "(quit)": migration.quit_s}
        return migration.total_s, gap, migration.info, parts, cpu_s

    def _replace(self) -> str:
        self.vm.kill()
        self.vm, bootid = _qemu.boot_vm(self.description, self.directory / self.side, self.processes)
        _qemu.wait_ticks(self.vm.files.console_log, 5)
        return bootid


# --- setting up ----------------------------------------------------------------------------------------


def hvparams(guest: testguest.Guest, virtio: bool = False, tick: bool = True) -> str:
    """The `-H` of an instance booting the test guest. No NIC (nic_mode none): the guest has no use for one,
    and a bridged NIC needs a bridge on every node. kernel_args last: its value has spaces."""
    return (f"kvm:nic_mode=none,kernel_path={guest.kernel},initrd_path={guest.initrd},"
            f"kernel_args={guest.cmdline(virtio=virtio, tick=tick)}")


def the_guest() -> testguest.Guest:
    found = testguest.load(testguest.cache_directory())
    if found is not None:
        return found
    say("building the test guest (about 28 MB from the Debian archive) ...")
    return testguest.build(progress=lambda line: say(f"  {line}"))


def wait_booted(log: Path, timeout_s: float = _qemu.BOOT_TIMEOUT_S) -> str:
    deadline = time.monotonic() + timeout_s
    while not log.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no console log at {log} after {timeout_s:g} s")
        time.sleep(0.05)
    return guestlink.wait_for_line(log, _qemu.MARKER, timeout_s).match.group(1)


def setup_guests(cluster: LocalCluster, api: Api, guest: testguest.Guest, memory_mib: int, root: Path,
                 processes: Processes, tls: bool) -> tuple[CairnGuest, BareGuest]:
    cluster.run("instance", "add", "-t", "diskless", "-n", "node1", "-B", f"memory={memory_mib}",
                "-H", hvparams(guest), "--no-install", INSTANCE)
    cairn = CairnGuest(cluster, api, "node1")
    described = cairn.description()
    description = qemu.describe("bare-vm", _qemu.spec_of(described), described["accel"])
    differences = _qemu.machine_differences(described, description)
    if differences:
        raise RuntimeError("the bare machine would differ from Cairn's: " + "; ".join(differences))
    tls_dir = cluster.directory / "node1" / "kvm" / "tls" if tls else None
    bare = BareGuest(root / "bare", description, processes, tls_dir)
    for files in (cairn.files("node1"), bare.vm.files):
        _qemu.wait_ticks(files.console_log, 5)
        shell_run(files.control, _qemu.WRITER_SETUP, timeout_s=300)
    return cairn, bare


def daemons_cpu_s(cluster: LocalCluster) -> float:
    """CPU seconds used so far by the cluster's daemons and watchdogs (from /proc)."""
    total = 0.0
    for pid_file in [*cluster.directory.glob("node*/daemon.pid"), *cluster.directory.glob("node*/watchdog.pid")]:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{int(pid_file.read_text().split()[0])}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return total


def run_rounds(count: int, cairn: CairnGuest, bare: BareGuest, cluster: LocalCluster) -> list[Round]:
    say(f"{'round':>5} {'clock':<5} {'guest':<6} move")
    rounds: list[Round] = []
    for number in range(1, count + 1):
        for variant in (("idle", "writer") if number % 2 else ("writer", "idle")):
            for guest in (cairn, bare):
                target = "node2" if guest.here() == "node1" else "node1"
                time.sleep(SETTLE_S)
                result = guest.migrate(variant, target, lambda: daemons_cpu_s(cluster))
                rounds.append(result)
                say(result.line(number))
    return rounds


# --- IOPS ----------------------------------------------------------------------------------------------


def add_disk_instance(cluster: LocalCluster, guest: testguest.Guest, name: str, template: str, nodes: str,
                      memory_mib: int) -> str | None:
    """Add and boot an instance with one disk; its id, or None (with the reason said) when it does not run."""
    added = cluster.run("instance", "add", "-t", template, "-n", nodes, "-s", IOPS_SIZE, "-B",
                        f"memory={memory_mib}", "-H", hvparams(guest, virtio=True, tick=False), "--no-install",
                        "--ignore-ipolicy", name, check=False, timeout_s=300)
    if added.returncode != 0:
        say(f"iops: the {template} instance cannot be added: {(added.stderr or added.stdout).strip()[-400:]}")
        return None
    rows = {row["name"]: row for row in cluster.json("instance", "list", "-o", "name,id,pnode,status")}
    instance_id, primary = rows[name]["id"], rows[name]["pnode"]
    log = cluster.directory / primary / "kvm" / "instances" / instance_id / "console.log"
    try:
        wait_booted(log)
        line = guestlink.wait_for_line(log, r"GUEST-VIRTIO-(LOADED|FAILED)", 60).text
    except TimeoutError as error:
        say(f"iops: the {template} instance did not boot: {error}")
        return None
    if "vda" not in line:
        say(f"iops: the {template} instance's guest sees no disk ({line!r})")
        return None
    return instance_id


def mirrored(cluster: LocalCluster, control: Path, instance_id: str, name: str, secondary: str) -> str | None:
    """None when guest writes reach the secondary's copy; otherwise why not."""
    deadline = time.monotonic() + UPTODATE_TIMEOUT_S
    states: list = []
    while time.monotonic() < deadline:
        rows = cluster.json("instance", "list", "-o", "name,disk_states")
        states = next(row.get("disk_states") or [] for row in rows if row["name"] == name)
        if any(s.get("node") == secondary and s.get("state") == "UPTODATE" for s in states):
            break
        time.sleep(0.5)
    else:
        return f"its secondary copy on {secondary} never became UPTODATE (disk_states {states})"
    output = shell_run(control, f"records {IOPS_DISK} {PROBE_START} {PROBE_RECORDS}")
    bootid = shell_run(control, "cat /etc/bootid").strip()
    acked = guestlink.acknowledged(output)
    if len(acked) != PROBE_RECORDS:
        return f"the guest could not write its probe records ({output.strip()[-200:]!r})"
    disks = cluster.directory / secondary / "disks"
    candidates = [FileStorage(disks).path(instance_id, 0)]
    candidates += sorted(p for p in disks.rglob("*") if p.is_file() and instance_id in str(p) and p not in candidates)
    for path in candidates:
        with contextlib.suppress(OSError):
            if all(guestlink.record_on_disk(path, n) == bootid for n in acked):
                say(f"iops: the replicated disk is mirrored: the {len(acked)} records the guest wrote are in "
                    f"{secondary}'s copy {path}")
                return None
    return (f"disk_states say UPTODATE, but the {PROBE_RECORDS} records the guest wrote (acknowledged) are not "
            f"in its copy on {secondary} ({', '.join(str(p) for p in candidates) or 'no file'}): the QEMU driver "
            "does not mirror the disk yet")


def iops_once(control: Path, count: int) -> float:
    result = guestlink.iops_result(shell_run(control, f"iops {IOPS_DISK} {count}", timeout_s=600))
    if result.elapsed_ms <= 0:
        return float("nan")
    return result.count * 1000 / result.elapsed_ms


def measure_iops(cluster: LocalCluster, guest: testguest.Guest, memory_mib: int, runs: int,
                 count: int) -> tuple[float, float]:
    """(median IOPS of the file disk, of the mirrored disk, nan when it is not mirrored)."""
    disks = {}
    file_id = add_disk_instance(cluster, guest, "iopsfile", "file", "node1", memory_mib)
    if file_id is None:
        return float("nan"), float("nan")
    disks["file"] = _qemu.instance_files(cluster.directory / "node1" / "kvm" / "instances" / file_id).control
    replicated_id = add_disk_instance(cluster, guest, "iopsrep", "replicated", "node1:node2", memory_mib)
    if replicated_id is not None:
        control = _qemu.instance_files(cluster.directory / "node1" / "kvm" / "instances" / replicated_id).control
        why = mirrored(cluster, control, replicated_id, "iopsrep", "node2")
        if why is None:
            disks["replicated"] = control
        else:
            say(f"iops: the replicated instance runs, but its disk is not mirrored: {why}; mirror_iops_ratio=nan")
    rates: dict[str, list[float]] = {kind: [] for kind in disks}
    for kind, control in disks.items():
        iops_once(control, count)                       # warm-up: the sparse file gets its blocks
    for run in range(1, runs + 1):
        order = list(disks) if run % 2 else list(reversed(disks))
        for kind in order:
            rates[kind].append(iops_once(disks[kind], count))
        say(f"iops run {run}: " + "  ".join(f"{kind} {rates[kind][-1]:.0f}" for kind in disks) + " writes/s")
    return median_or_nan(rates["file"]), median_or_nan(rates.get("replicated", []))


# --- the run -------------------------------------------------------------------------------------------


def end_everything(cluster: LocalCluster, processes: Processes, root: Path) -> None:
    """Stop the cluster (`cairn down`, then by pid what it missed), the bare QEMUs, and anything else of the run."""
    processes.kill_all()
    cluster.down()
    for pid_file in cluster.directory.glob("node*/kvm/instances/*/pid"):
        with contextlib.suppress(OSError, ValueError):
            pid, token = pid_file.read_text().split()
            qemu.kill_process(int(pid), token)
    _qemu.kill_pids(_qemu.processes_under(root))


def summary(rounds: list[Round], iops: tuple[float, float], args: argparse.Namespace) -> str:
    def pick(clock: str, variant: str | None = None) -> list[Round]:
        return [r for r in rounds if r.clock == clock and (variant is None or r.variant == variant)]

    def total(clock: str, variant: str | None = None) -> float:
        return median_or_nan([r.total_s for r in pick(clock, variant)])

    def ratio(a: float, b: float) -> float:
        return a / b if b == b and b > 0 else float("nan")

    cairn, raw = total("cairn"), total("bare")
    keys = {
        "cairn_total_s": fmt(cairn), "raw_total_s": fmt(raw), "ratio": fmt(ratio(cairn, raw), 2),
        "downtime_ms": fmt(median_or_nan([r.downtime_ms for r in pick("cairn")]), 0),
        "raw_downtime_ms": fmt(median_or_nan([r.downtime_ms for r in pick("bare")]), 0),
        "guest_gap_ms": fmt(median_or_nan([r.gap.gap_s * 1000 for r in pick("cairn") if r.trouble is None]), 0),
        "raw_guest_gap_ms": fmt(median_or_nan([r.gap.gap_s * 1000 for r in pick("bare") if r.trouble is None]), 0),
        "mirror_iops_ratio": fmt(ratio(iops[1], iops[0]), 2),
    }
    for variant in ("idle", "writer"):
        c, b = total("cairn", variant), total("bare", variant)
        keys.update({f"cairn_{variant}_s": fmt(c), f"raw_{variant}_s": fmt(b), f"ratio_{variant}": fmt(ratio(c, b), 2)})
    keys.update({
        "cairn_daemon_cpu_s": fmt(median_or_nan([r.daemon_cpu_s for r in pick("cairn")]), 2),
        "raw_daemon_cpu_s": fmt(median_or_nan([r.daemon_cpu_s for r in pick("bare")]), 2),
        "tick_interval_ms": fmt(median_or_nan([r.tick_interval_s * 1000 for r in rounds]), 0),
        "file_iops": fmt(iops[0], 0), "mirror_iops": fmt(iops[1], 0),
        "cairn_broken_guests": str(sum(r.trouble is not None for r in pick("cairn"))),
        "raw_broken_guests": str(sum(r.trouble is not None for r in pick("bare"))),
        "rounds": str(len(pick("cairn")) // 2), "bare_tls": str(int(args.bare_tls)),
    })
    return "RESULT " + " ".join(f"{key}={value}" for key, value in keys.items())


def phase_medians(rounds: list[Round]) -> str:
    cairn = [r for r in rounds if r.clock == "cairn"]
    bare = [r for r in rounds if r.clock == "bare"]
    text = "cairn phases (median s): " + "  ".join(
        f"{name} {fmt(median_or_nan([r.parts.get(name, math.nan) for r in cairn]))}" for name in PHASES)
    text += "\nbare phases (median s):  " + "  ".join(
        f"{name} {fmt(median_or_nan([r.parts.get(name, math.nan) for r in bare]))}"
        for name in ("dest_start", "incoming", "migrate", "(quit)"))
    return text


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds; each migrates both guests idle and with a "
                                                              "writer (default 5)")
    parser.add_argument("--memory-mib", type=int, default=512, help="guest memory (default 512)")
    parser.add_argument("--skip-iops", action="store_true", help="skip the replicated-disk IOPS part")
    parser.add_argument("--iops-runs", type=int, default=5, help="IOPS runs per disk (default 5, at least 3)")
    parser.add_argument("--iops-count", type=int, default=4000, help="writes per IOPS run (default 4000, at "
                                                                     "least 2000)")
    parser.add_argument("--bare-clear", dest="bare_tls", action="store_false", help="bare migrations in clear "
                        "(default: over TLS with the cluster's credentials, as Cairn migrates), to see what TLS "
                        "costs")
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (daemon, QEMU and console "
                                                            "logs) instead of removing it; processes still end")
    parser.add_argument("--dir", type=Path, default=None, help="where the run's directory goes (default: tmp)")
    args = parser.parse_args()
    if args.rounds < 1 or args.memory_mib < 96 or args.iops_runs < 3 or args.iops_count < 2000:
        parser.error("--rounds must be at least 1, --memory-mib at least 96, --iops-runs at least 3 and "
                     "--iops-count at least 2000")
    return args


def main() -> int:
    args = arguments()
    if shutil.which("qemu-system-x86_64") is None:
        say("bench/migrate.py: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
        return 2
    guest = the_guest()
    root = Path(tempfile.mkdtemp(prefix="cairn-migrate-", dir=args.dir))
    cluster, processes = LocalCluster(root, 3, "kvm"), Processes()
    say(f"run directory {root}; load average {load_average()} at the start")
    iops = (float("nan"), float("nan"))
    try:
        cluster.up()
        api = Api(cluster)
        say(f"cluster up, master {api.master()}; accel {qemu.resolve_accel('auto')}; guest memory "
            f"{args.memory_mib} MiB; Cairn migrates over TLS, bare {'over TLS' if args.bare_tls else 'in clear'}")
        cairn, bare = setup_guests(cluster, api, guest, args.memory_mib, root, processes, args.bare_tls)
        rounds = run_rounds(args.rounds, cairn, bare, cluster)
        say(phase_medians(rounds))
        if not args.skip_iops:
            cairn.remove()
            iops = measure_iops(cluster, guest, args.memory_mib, args.iops_runs, args.iops_count)
        api.close()
    finally:
        end_everything(cluster, processes, root)
        if args.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    say(f"load average {load_average()} at the end")
    say(summary(rounds, iops, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
