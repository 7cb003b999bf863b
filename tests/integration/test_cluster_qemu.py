"""Real guests under the `kvm` hypervisor (QEMU, TCG here) on a local 3-node cluster of real daemons.

The guest tier of docs/qemu.md: each test boots the test guest (kernel + busybox
initramfs, built from Debian packages) through the cluster's own jobs and
watches it on its serial console log, which the QEMU driver keeps beside the
instance. Skipped where qemu or the guest is missing.
"""

from __future__ import annotations

import pytest

from images import guestlink
from tests.integration.cluster_support import started
from tests.integration.qemu_support import guest_or_skip, hvparams, instance_dir, instance_id, wait_booted

pytestmark = [pytest.mark.qemu, pytest.mark.slow]


@pytest.fixture(scope="module")
def guest():
    return guest_or_skip()


def test_a_live_migration_keeps_the_guest_counting(tmp_path, guest):
    """A diskless guest boots on node1 (its marker on the console), then `instance migrate` moves it to node2
    live: the TICK counter goes on at last+1 with the same boot id there, and node1 runs nothing any more."""
    with started(tmp_path, 3, "kvm") as cluster:
        cluster.run("instance", "add", "-t", "diskless", "-n", "node1", "-B", "memory=256", "-H", hvparams(guest),
                    "--no-install", "vm1")
        vm = instance_id(cluster, "vm1")
        bootid = wait_booted(cluster, "node1", vm)
        source_log = instance_dir(cluster, "node1", vm) / "console.log"
        cluster.wait(lambda: len(guestlink.ticks(source_log)) >= 5, 60, "five ticks on node1")

        cluster.run("instance", "migrate", "-n", "node2", "vm1", timeout_s=300)

        row = cluster.json("instance", "list", "-o", "name,pnode,status")[0]
        assert row["pnode"] == "node2" and row["status"] == "running", row
        last_on_source = guestlink.ticks(source_log)[-1] if source_log.exists() else None
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
