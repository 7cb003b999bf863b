"""Real guests under the `kvm` hypervisor (QEMU, TCG here) on a local 3-node cluster of real daemons.

The guest tier: each test boots the test guest (kernel + busybox initramfs,
built from Debian packages) through the cluster's own jobs and watches it on
its serial console log, which the QEMU driver keeps beside the instance, and
through its control shell. Skipped where qemu or the guest is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time

import pytest

from images import guestlink
from tests.integration.cluster_support import InstanceMonitor, started
from tests.integration.qemu_support import (add_instance, guest_or_skip, instance_dir, instance_files, instance_id,
                                            wait_booted)

pytestmark = [pytest.mark.qemu, pytest.mark.slow]


@pytest.fixture(scope="module")
def guest():
    return guest_or_skip()


def disk_states(cluster, name: str) -> dict[str, str]:
    """Node name -> the recorded state of that node's copy of disk 0."""
    row = next(r for r in cluster.json("instance", "list", "-o", "name,disk_states") if r["name"] == name)
    return {entry["node"]: entry["state"] for entry in row["disk_states"] if entry["disk"] == 0}


def copy_states_recorded(cluster, instance: str, node: str) -> list[str]:
    """Every state recorded for node `node`'s copy of the instance's disk 0, in commit order (the exported log)."""
    node_id = next(row["id"] for row in cluster.json("node", "list", "-o", "name,id") if row["name"] == node)
    export = cluster.run("events", "export", "--format", "jsonl")
    states = []
    for line in export.stdout.splitlines():
        event = json.loads(line)
        payload = event.get("payload", {})
        if event["name"] == "DiskStateObserved" and payload.get("instance") == instance \
                and payload.get("node") == node_id and payload.get("disk") == 0:
            states.append(payload["state"])
    return states


def test_a_live_migration_keeps_the_guest_counting(tmp_path, guest):
    """A diskless guest boots on node1 (its marker on the console), then `instance migrate -n node2` moves it
    live: the TICK counter goes on at last+1 with the same boot id there, and node1 runs nothing any more."""
    with started(tmp_path, 3, "kvm") as cluster:
        add_instance(cluster, guest, "vm1", "node1")
        vm = instance_id(cluster, "vm1")
        bootid = wait_booted(cluster, "node1", vm)
        source_log = instance_dir(cluster, "node1", vm) / "console.log"
        cluster.wait(lambda: len(guestlink.ticks(source_log)) >= 5, 60, "five ticks on node1")
        watcher = guestlink.TickWatcher(source_log)
        watcher.poll()

        cluster.run("instance", "migrate", "-n", "node2", "vm1", timeout_s=300)

        row = cluster.json("instance", "list", "-o", "name,pnode,status")[0]
        assert row["pnode"] == "node2" and row["status"] == "running", row
        last_on_source = (watcher.poll() or [None])[-1]
        target_log = instance_dir(cluster, "node2", vm) / "console.log"
        cluster.wait(lambda: len(guestlink.ticks(target_log)) >= 3, 60, "ticks on node2 after the migration")
        arrived = guestlink.ticks(target_log)
        assert {tick.bootid for tick in arrived} == {bootid}, "the guest rebooted instead of migrating"
        numbers = [tick.n for tick in arrived]
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), "ticks missing or repeated on node2"
        if last_on_source is not None:
            assert numbers[0] == last_on_source.n + 1, (last_on_source, arrived[:3])
        cluster.wait(lambda: not (instance_dir(cluster, "node1", vm) / "pid").exists(), 30,
                     "node1 to drop its copy of the instance")


def test_a_replicated_guest_survives_the_loss_of_its_primary_node(tmp_path, guest):
    """The guest writes numbered records (each acknowledged by its O_DIRECT write returning) to its replicated
    disk; then node1, its primary, loses power (kill -9 of everything it runs). The cluster fences node1,
    boots the guest on node2 from node2's copy, and every acknowledged record is on that disk; the instance
    never runs on two nodes at once."""
    with started(tmp_path, 3, "kvm") as cluster, InstanceMonitor(cluster.directory) as monitor:
        add_instance(cluster, guest, "db1", "node1:node2", "replicated", disk_io_timeout="3")
        vm = instance_id(cluster, "db1")
        wait_booted(cluster, "node1", vm)
        cluster.wait(lambda: disk_states(cluster, "db1").get("node2") == "UPTODATE", 60, "node2's copy UPTODATE")
        guestlink.wait_for_line(instance_dir(cluster, "node1", vm) / "console.log", "GUEST-VIRTIO", 60)
        with guestlink.ControlShell.connect(instance_files(cluster, "node1", vm).control) as shell:
            acknowledged = guestlink.acknowledged(shell.run("records /dev/vda 1 300", 120))
        assert acknowledged == list(range(1, 301))
        relays = [int(path.read_text().split()[0]) for path in (cluster.directory / "node1").glob("kvm/relays/*/pid")]

        cluster.kill_whole_node("node1")
        for pid in relays:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        cluster.wait(lambda: next(r for r in cluster.json("instance", "list", "-o", "name,pnode,status", "--api",
                                                          cluster.address("node2"))
                                  if r["name"] == "db1") == {"name": "db1", "pnode": "node2", "status": "running"},
                     90, "db1 running on node2")
        wait_booted(cluster, "node2", vm)
        disk = cluster.directory / "node2" / "disks" / vm / "disk0.raw"
        missing = [n for n in acknowledged if guestlink.record_on_disk(disk, n) is None]
        assert missing == [], f"acknowledged records missing on node2's copy: {missing[:10]}"
    assert monitor.double_runs == 0, monitor.doubles[:5]


def test_a_hung_secondary_degrades_the_disk_instead_of_freezing_the_guest(tmp_path, guest):
    """The secondary's export stops answering (SIGSTOP): the guest's writes wait at most about the disk I/O
    timeout, the secondary's copy is recorded DEGRADED before they go on (fence-peer), and once the
    secondary answers again its copy is mirrored again until UPTODATE."""
    io_timeout_s = 3
    with started(tmp_path, 3, "kvm") as cluster:
        add_instance(cluster, guest, "db1", "node1:node2", "replicated", disk_io_timeout=str(io_timeout_s))
        vm = instance_id(cluster, "db1")
        cluster.wait(lambda: disk_states(cluster, "db1").get("node2") == "UPTODATE", 60, "node2's copy UPTODATE")
        guestlink.wait_for_line(instance_dir(cluster, "node1", vm) / "console.log", "GUEST-VIRTIO", 60)
        export = int((cluster.directory / "node2" / "kvm" / "exports" / f"{vm}.0" / "pid").read_text().split()[0])
        with guestlink.ControlShell.connect(instance_files(cluster, "node1", vm).control) as shell:
            assert guestlink.acknowledged(shell.run("records /dev/vda 1 5", 60)) == [1, 2, 3, 4, 5]
            os.kill(export, signal.SIGSTOP)
            try:
                began = time.monotonic()
                written = guestlink.acknowledged(shell.run("records /dev/vda 6 5", 60))
                waited = time.monotonic() - began
                recorded = copy_states_recorded(cluster, vm, "node2")
            finally:
                os.kill(export, signal.SIGCONT)
        assert written == [6, 7, 8, 9, 10]
        assert io_timeout_s - 0.5 <= waited <= io_timeout_s + 10, waited
        assert recorded[-1] == "DEGRADED", recorded     # recorded before the writes went on (fence-peer)
        cluster.wait(lambda: disk_states(cluster, "db1").get("node2") == "UPTODATE", 60,
                     "node2's copy mirrored again")


def test_a_killed_secondary_is_mirrored_again_once_its_node_is_back(tmp_path, guest):
    """kill -9 of the secondary's export: the relay loses it, the copy is recorded DEGRADED, the guest goes on;
    the primary mirrors it again (a full copy) and it is UPTODATE, with every record on both copies."""
    with started(tmp_path, 3, "kvm") as cluster:
        add_instance(cluster, guest, "db1", "node1:node2", "replicated", disk_io_timeout="3")
        vm = instance_id(cluster, "db1")
        cluster.wait(lambda: disk_states(cluster, "db1").get("node2") == "UPTODATE", 60, "node2's copy UPTODATE")
        guestlink.wait_for_line(instance_dir(cluster, "node1", vm) / "console.log", "GUEST-VIRTIO", 60)
        export = int((cluster.directory / "node2" / "kvm" / "exports" / f"{vm}.0" / "pid").read_text().split()[0])
        with guestlink.ControlShell.connect(instance_files(cluster, "node1", vm).control) as shell:
            os.kill(export, signal.SIGKILL)
            assert guestlink.acknowledged(shell.run("records /dev/vda 1 20", 60)) == list(range(1, 21))
        # DEGRADED may last only a moment (the copy is mirrored again at once), so it is looked for in the history.
        cluster.wait(lambda: "DEGRADED" in copy_states_recorded(cluster, vm, "node2"), 30,
                     "node2's copy recorded DEGRADED")
        cluster.wait(lambda: disk_states(cluster, "db1").get("node2") == "UPTODATE", 60, "node2's copy UPTODATE")
        recorded = copy_states_recorded(cluster, vm, "node2")
        assert recorded.index("DEGRADED") < len(recorded) - 1 and recorded[-1] == "UPTODATE", recorded
        secondary = cluster.directory / "node2" / "disks" / vm / "disk0.raw"
        assert [n for n in range(1, 21) if guestlink.record_on_disk(secondary, n) is None] == []
