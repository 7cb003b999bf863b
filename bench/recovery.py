"""How fast a dead node's replicated instances come back, and whether anything runs twice or is lost.

Each round: a fresh local 3-node cluster (`cairn up`, real daemons and watchdogs on 127.0.0.1);
N replicated instances with their primary on one node and their secondaries spread over the
other two; every instance writes numbered records to its disk (the fake storage acknowledges a
record only once the secondary holds it), driven from here at about 20 writes a second each.
Once every secondary's copy is reported UPTODATE, the whole node is killed (kill -9 of its
daemon, its watchdog and its instance processes) and the time is taken until every instance is
observed running on its secondary (a process-level monitor samples every instance process every
10 ms; `double_runs` counts samples with two copies of one instance running). Then every record
acknowledged before the kill must be on the copy the instance now runs on (`lost_acked_writes`).
In rounds 1, 3 and 5 the killed node is the leader, in rounds 2 and 4 a follower.

Then the load phase: a fresh cluster with the instances spread, both cores saturated by busy
processes for 60 s, no node killed: every fence is a false one (`false_fences`).

With `--hypervisor kvm` the instances are real guests (the test guest under QEMU; TCG where there is no
/dev/kvm), 256 MiB of memory and a 256 MiB disk each, whose writes QEMU mirrors write-blocking to the
secondary's copy. In each guest a writer runs `records` on /dev/vda through the guest's control shell, chunk
after chunk, and keeps every `ACK n` it read (also those of a chunk the kill cut off). The whole node is
killed with its disks' relays and exports; the time is taken until every instance's QEMU runs on its
secondary, then until each guest's boot marker is on its console there. Every record acknowledged by a
guest must be on its new primary's copy of the disk. The load phase runs kvm guests too, spread, not writing.

For comparison (not run here): Proxmox VE HA takes about 120 s from failure to recovery (a 60 s
watchdog behind a 120 s lock, ../shared/reference/fencing.md); Ganeti never recovers by itself.

    .venv/bin/python bench/recovery.py [--instances 20] [--rounds 5] [--load-s 60]
    .venv/bin/python bench/recovery.py --hypervisor kvm --instances 3

Last line: RESULT recovery_p50_s=... recovery_max_s=... double_runs=... lost_acked_writes=...
false_fences=... rounds=5
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from appliance.drivers import records  # noqa: E402
from appliance.drivers.fake import ask_guest, guest_alive, read_pid  # noqa: E402
from images import guestlink, testguest  # noqa: E402
from tests.integration.cluster_support import InstanceMonitor, LocalCluster  # noqa: E402
from tests.integration.qemu_support import (QEMU, add_instance, instance_dir, instance_files,  # noqa: E402
                                            kill_whole_kvm_node, wait_booted)

WRITE_EVERY_S = 0.05
RECOVERY_BOUND_S = 120.0
GUEST_MEMORY_MIB = 256
GUEST_DISK_MIB = 256
GUEST_DISK_IO_TIMEOUT_S = 3
RECORDS_PER_CHUNK = 10
RECORDS_BEFORE_KILL = 20         # per guest, acknowledged before the node is killed
LAST_RECORD = GUEST_DISK_MIB * 1024 * 1024 // guestlink.RECORD_BYTES - 1


def say(text: str) -> None:
    print(text, flush=True)


class Writer:
    """Asks every running instance for one unit of work (one record) every WRITE_EVERY_S, wherever it runs."""

    def __init__(self, directory: Path, ids: list[str]) -> None:
        self.directory, self.ids = directory, ids
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        import signal as signals

        while not self.stop.is_set():
            for instance_id in self.ids:
                for entry in self.directory.glob(f"node*/hv/instances/{instance_id}"):
                    guest = read_pid(entry)
                    if guest is not None and guest_alive(*guest) and not (entry / "paused").exists():
                        with contextlib.suppress(OSError):
                            ask_guest(entry, guest, signals.SIGUSR2)
            self.stop.wait(WRITE_EVERY_S)

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def add_instances(cluster: LocalCluster, primary: str, secondaries: list[str], count: int) -> dict[str, str]:
    """name -> secondary; each added with its own `cairn instance add` (waited for)."""
    placed = {}
    for k in range(count):
        name, secondary = f"db{k}", secondaries[k % len(secondaries)]
        cluster.run("instance", "add", "-t", "replicated", "-n", f"{primary}:{secondary}", "-s", "1G",
                    "-B", "memory=128M", "--no-install", name)
        placed[name] = secondary
    return placed


def instance_rows(cluster: LocalCluster) -> dict[str, dict]:
    return {r["name"]: r for r in cluster.json("instance", "list", "-o", "name,id,pnode,snodes,status")}


def all_uptodate(cluster: LocalCluster, names) -> bool:
    rows = {r["name"]: r for r in cluster.json("instance", "list", "-o", "name,snodes,status,disk_states")}
    for name in names:
        row = rows[name]
        states = {(s["node"], s["state"]) for s in row.get("disk_states") or []}
        if row["status"] != "running" or (row["snodes"][0], "UPTODATE") not in states:
            return False
    return True


def one_round(number: int, root: Path, count: int, kill_leader: bool) -> dict:
    cluster = LocalCluster(root / f"round{number}")
    try:
        cluster.up()
        leader = cluster.master()
        victim = leader if kill_leader else next(n for n in cluster.names() if n != leader)
        others = [n for n in cluster.names() if n != victim]
        placed = add_instances(cluster, victim, others, count)
        cluster.wait(lambda: all_uptodate(cluster, placed), 120, "every secondary copy UPTODATE")
        ids = {name: row["id"] for name, row in instance_rows(cluster).items()}
        roots = [cluster.directory / n / "disks" for n in cluster.names()]
        with InstanceMonitor(cluster.directory) as monitor, Writer(cluster.directory, list(ids.values())):
            time.sleep(3.0)                      # records flow, acknowledged on both copies
            acked_before = {i: records.acknowledged(roots, i, 0) for i in ids.values()}
            killed_at = time.monotonic()
            cluster.kill_whole_node(victim)
            expected = {ids[name]: secondary for name, secondary in placed.items()}

            def back() -> bool:
                running = monitor.running()
                return all(expected[i] in running.get(i, ()) for i in expected)

            while not back():
                if time.monotonic() - killed_at > RECOVERY_BOUND_S:
                    raise RuntimeError(f"round {number}: not recovered within {RECOVERY_BOUND_S:g} s")
                time.sleep(0.01)
            recovery_s = time.monotonic() - killed_at
            time.sleep(1.0)                      # the recovered instances write on
        lost = 0
        for name, instance_id in ids.items():
            serving = cluster.directory / placed[name] / "disks"
            lost += len(records.lost_acknowledged(roots, serving, instance_id, 0))
            if records.acknowledged(roots, instance_id, 0) <= acked_before[instance_id]:
                raise RuntimeError(f"round {number}: {name} acknowledged no record after {acked_before[instance_id]}"
                                   "; the writer did not reach it")
        return {"recovery_s": recovery_s, "double_runs": monitor.double_runs, "lost": lost, "victim": victim,
                "leader": kill_leader, "samples": monitor.samples}
    finally:
        cluster.down()


class GuestWriter:
    """Writes numbered records to a guest's disk through its control shell, a chunk of `records` after another,
    until stopped or until the guest goes away; `acknowledged` holds every record it printed ACK for, also
    those of a chunk cut off (guestlink's errors carry the output read before them)."""

    def __init__(self, control: Path) -> None:
        self.control = control
        self.acknowledged: list[int] = []
        self.ended = ""                          # why it stopped
        self.ended_at: float | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        try:
            with guestlink.ControlShell.connect(self.control) as shell:
                first = 1
                while not self.stop.is_set() and first + RECORDS_PER_CHUNK - 1 <= LAST_RECORD:
                    output = shell.run(f"records /dev/vda {first} {RECORDS_PER_CHUNK}", 60)
                    self.acknowledged += guestlink.acknowledged(output)
                    first += RECORDS_PER_CHUNK
                self.ended = "stopped"
        except guestlink.GuestLinkError as error:
            self.acknowledged += guestlink.acknowledged(error.output)
            self.ended = str(error)
        finally:
            self.ended_at = time.monotonic()

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout_s: float) -> None:
        self.stop.set()
        self.thread.join(timeout=timeout_s)


def add_guests(cluster: LocalCluster, guest: testguest.Guest, placements: dict[str, tuple[str, str]]) -> None:
    """Adds a replicated kvm instance of the test guest per name -> (primary, secondary), one after another, each
    waited for until it runs; the guest loads virtio-blk and prints no ticks (less work for TCG)."""
    for name, (primary, secondary) in placements.items():
        add_instance(cluster, guest, name, f"{primary}:{secondary}", "replicated", memory_mib=GUEST_MEMORY_MIB,
                     disk_mib=GUEST_DISK_MIB, disk_io_timeout=str(GUEST_DISK_IO_TIMEOUT_S),
                     kernel_args=guest.cmdline(virtio=True, tick=False))


def wait_until_recovered(monitor: InstanceMonitor, expected: dict[str, str], since: float, number: int) -> float:
    """Seconds from `since` until every instance id of `expected` runs on its node there."""
    while True:
        running = monitor.running()
        if all(node in running.get(i, ()) for i, node in expected.items()):
            return time.monotonic() - since
        if time.monotonic() - since > RECOVERY_BOUND_S:
            raise RuntimeError(f"round {number}: not recovered within {RECOVERY_BOUND_S:g} s "
                               f"(running: {running}, expected: {expected})")
        time.sleep(0.01)


def start_writers(cluster: LocalCluster, node: str, ids: dict[str, str]) -> dict[str, GuestWriter]:
    """A writer in each guest on `node` (once its virtio disk is there), started once every one is connected
    and each has acknowledged RECORDS_BEFORE_KILL records."""
    writers = {}
    for name, instance_id in ids.items():
        guestlink.wait_for_line(instance_dir(cluster, node, instance_id) / "console.log", "GUEST-VIRTIO-LOADED",
                                60)
        writers[name] = GuestWriter(instance_files(cluster, node, instance_id).control)
    for writer in writers.values():
        writer.start()

    def writing() -> bool:
        for name, writer in writers.items():
            if writer.ended_at is not None:
                raise RuntimeError(f"the writer in {name} stopped before the kill: {writer.ended}")
        return all(len(w.acknowledged) >= RECORDS_BEFORE_KILL for w in writers.values())

    cluster.wait(writing, 120, f"{RECORDS_BEFORE_KILL} records acknowledged in every guest", interval_s=0.05)
    return writers


def one_kvm_round(number: int, root: Path, count: int, kill_leader: bool, guest: testguest.Guest) -> dict:
    """One round with real guests: their writers run while their primary node loses power."""
    cluster = LocalCluster(root / f"round{number}", hypervisor="kvm")
    writers: dict[str, GuestWriter] = {}
    try:
        cluster.up()
        leader = cluster.master()
        victim = leader if kill_leader else next(n for n in cluster.names() if n != leader)
        others = [n for n in cluster.names() if n != victim]
        placed = {f"db{k}": others[k % len(others)] for k in range(count)}
        add_guests(cluster, guest, {name: (victim, secondary) for name, secondary in placed.items()})
        cluster.wait(lambda: all_uptodate(cluster, placed), 120, "every secondary copy UPTODATE")
        ids = {name: row["id"] for name, row in instance_rows(cluster).items()}
        with InstanceMonitor(cluster.directory) as monitor:
            writers = start_writers(cluster, victim, ids)
            killed_at = time.monotonic()
            kill_whole_kvm_node(cluster, victim)
            recovery_s = wait_until_recovered(monitor, {ids[n]: s for n, s in placed.items()}, killed_at, number)
            for name, writer in writers.items():
                writer.join(30)
                if writer.ended_at is None or writer.ended_at < killed_at:
                    raise RuntimeError(f"round {number}: the writer in {name} was not cut off by the kill "
                                       f"({writer.ended or 'still running'})")
            for name, secondary in placed.items():
                wait_booted(cluster, secondary, ids[name], RECOVERY_BOUND_S)
            booted_s = time.monotonic() - killed_at
        lost = 0
        for name, secondary in placed.items():
            disk = cluster.directory / secondary / "disks" / ids[name] / "disk0.raw"
            lost += sum(1 for n in writers[name].acknowledged if guestlink.record_on_disk(disk, n) is None)
        return {"recovery_s": recovery_s, "booted_s": booted_s, "double_runs": monitor.double_runs, "lost": lost,
                "victim": victim, "leader": kill_leader, "samples": monitor.samples,
                "acknowledged": sum(len(w.acknowledged) for w in writers.values())}
    finally:
        for writer in writers.values():
            writer.stop.set()
        cluster.down()
        for writer in writers.values():
            writer.join(10)


def load_phase(root: Path, count: int, seconds: float, guest: testguest.Guest | None = None) -> int:
    """Both cores saturated for `seconds`, no node killed: the fences there were (all false). With `guest`, the
    instances are kvm guests of it."""
    cluster = LocalCluster(root / "load", hypervisor="fake" if guest is None else "kvm")
    hogs = []
    try:
        cluster.up()
        names = cluster.names()
        placements = {f"load{k}": (names[k % 3], names[(k + 1) % 3]) for k in range(count)}
        if guest is None:
            for name, (primary, secondary) in placements.items():
                cluster.run("instance", "add", "-t", "replicated", "-n", f"{primary}:{secondary}", "-s", "1G",
                            "-B", "memory=128M", "--no-install", name)
        else:
            add_guests(cluster, guest, placements)
        cores = os.cpu_count() or 2
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2 * cores)]
        say(f"load: {len(hogs)} busy processes on {cores} cores for {seconds:g} s")
        time.sleep(seconds)
        for hog in hogs:
            hog.kill()
        for hog in hogs:
            hog.wait()
        hogs = []
        fences = [j for j in cluster.json("job", "list", "-o", "id,summary")
                  if "NODE_FENCE" in " ".join(j.get("summary") or [])]
        return len(fences)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
        cluster.down()


def test_guest() -> testguest.Guest | None:
    """The test guest from the cache, built there if missing; None (having said why) without qemu or a guest."""
    if QEMU is None:
        say("bench/recovery.py: --hypervisor kvm needs qemu-system-x86_64 (apt-get install qemu-system-x86)")
        return None
    try:
        return testguest.ensure()
    except testguest.BuildError as error:
        say(f"bench/recovery.py: the test guest cannot be built: {error}")
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hypervisor", choices=("fake", "kvm"), default="fake",
                        help="fake: a process per instance (default); kvm: QEMU guests (the test guest)")
    parser.add_argument("--instances", type=int, default=20, help="replicated instances on the killed node")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of kill and recovery (default 5)")
    parser.add_argument("--load-s", type=float, default=60.0, help="seconds of saturated cores (default 60)")
    parser.add_argument("--dir", type=Path, default=None, help="where the clusters live (default: a tmp dir)")
    args = parser.parse_args()
    if args.instances < 1 or args.rounds < 1:
        say("bench/recovery.py: --instances and --rounds must be at least 1")
        return 2
    guest = None
    if args.hypervisor == "kvm":
        guest = test_guest()
        if guest is None:
            return 2
    root = args.dir or Path(tempfile.mkdtemp(prefix="cairn-recovery-"))
    results = []
    try:
        for number in range(1, args.rounds + 1):
            kill_leader = number % 2 == 1
            if guest is None:
                result = one_round(number, root, args.instances, kill_leader)
            else:
                result = one_kvm_round(number, root, args.instances, kill_leader, guest)
            results.append(result)
            booted = "" if guest is None else f", booted there after {result['booted_s']:.2f} s"
            guests = "" if guest is None else (f" of {result['acknowledged']}; load average "
                                                f"{os.getloadavg()[0]:.2f}")
            say(f"round {number}: killed {result['victim']} ({'leader' if kill_leader else 'follower'}): "
                f"{args.instances} instances running on their secondaries after {result['recovery_s']:.2f} s"
                f"{booted}; double runs {result['double_runs']} in {result['samples']} samples; lost acknowledged "
                f"writes {result['lost']}{guests}")
        false_fences = load_phase(root, args.instances, args.load_s, guest) if args.load_s > 0 else 0
        say(f"load: {false_fences} fence(s) in {args.load_s:g} s with both cores saturated")
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    times = [r["recovery_s"] for r in results]
    say("reference: Proxmox VE HA recovers in about 120 s; Ganeti needs an operator")
    say(f"RESULT recovery_p50_s={statistics.median(times):.2f} recovery_max_s={max(times):.2f} "
        f"double_runs={sum(r['double_runs'] for r in results)} lost_acked_writes={sum(r['lost'] for r in results)} "
        f"false_fences={false_fences} rounds={len(results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
