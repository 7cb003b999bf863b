"""The replicated fake beyond its contract: real guests killed mid-write, continuing counters, resync progress."""

import os
import random
import signal

import pytest
import trio

from appliance.drivers import records
from appliance.drivers.base import DEGRADED, PRIMARY, SECONDARY, SYNCING, UPTODATE, DriverError, Storage
from appliance.drivers.fake import read_pid
from appliance.drivers.memory import MemoryStorage, MemoryWorld
from tests.contract.test_drivers_fake import REPLICATED_SPEC, replicated_nodes


async def pair_disk(storages, instance_id="inst-1", disks=1, primary=0):
    """Create the instance's disks on both nodes and pair them, primary on `storages[primary]`."""
    names = [storage.node_name for storage in storages]
    for index in range(disks):
        for storage in storages:
            await storage.create(instance_id, index, 64)
        for position, storage in enumerate(storages):
            role = PRIMARY if position == primary else SECONDARY
            await storage.set_peer(instance_id, index, names[1 - position], role)


async def write_fast_then_kill(hypervisor, instance_id, rng, during=None) -> None:
    """Send the guest units of work back to back, then SIGKILL it at a random moment, mid-write or not.

    `during`, if given, runs once half way through (to cut a node off while the guest writes).
    """
    pid, _ = read_pid(hypervisor.entry(instance_id))
    signals = rng.randint(20, 120)
    for sent in range(signals):
        hypervisor.request_work(instance_id)
        if during is not None and sent == signals // 2:
            during()
        await trio.sleep(rng.uniform(0, 0.002))
    os.kill(pid, signal.SIGKILL)
    await hypervisor.list()


async def test_acked_never_claims_a_record_the_secondary_lacks_after_a_kill(tmp_path):
    """A guest killed at random while writing never has acknowledged a record the secondary copy lacks."""
    rng = random.Random(20240611)
    async with replicated_nodes(tmp_path) as ((node1, _), storages, roots):
        for run in range(8):
            instance_id = f"inst-{run}"
            await pair_disk(storages, instance_id)
            await node1.start(instance_id, REPLICATED_SPEC)
            await write_fast_then_kill(node1, instance_id, rng)
            acked = records.acked_count(roots["node1"], instance_id, 0)
            secondary = records.record_set(roots["node2"], instance_id, 0)
            assert acked <= records.highest_record(roots["node2"], instance_id, 0)
            assert set(range(1, acked + 1)) <= secondary
            assert acked > 0


async def test_after_a_kill_with_the_peer_cut_every_acked_record_is_mirrored_or_listed_alone(tmp_path):
    """Cut off mid-stream, every acknowledged record is on the secondary or in the primary's degraded list."""
    rng = random.Random(7)
    async with replicated_nodes(tmp_path) as ((node1, _), storages, roots):
        for run in range(4):
            instance_id = f"inst-{run}"
            await pair_disk(storages, instance_id)
            await node1.start(instance_id, REPLICATED_SPEC)
            await write_fast_then_kill(node1, instance_id, rng,
                                       during=lambda: records.set_unreachable(roots["node2"], True))
            acked = records.acked_count(roots["node1"], instance_id, 0)
            mirrored = records.record_set(roots["node2"], instance_id, 0)
            alone = records.lone_records(roots["node1"], instance_id, 0)
            assert set(range(1, acked + 1)) <= mirrored | alone
            records.set_unreachable(roots["node2"], False)


async def test_a_guest_restarted_on_the_former_secondary_continues_its_records(tmp_path):
    """After a crash and a failover the guest numbers on from its copy's highest record, mirrored back."""
    async with replicated_nodes(tmp_path) as ((node1, node2), storages, roots):
        await pair_disk(storages)
        await node1.start("inst-1", REPLICATED_SPEC)
        for _ in range(3):
            await node1.guest_work("inst-1")
        await node1.crash("inst-1")
        await node1.stop("inst-1", 1)
        await storages[1].set_peer("inst-1", 0, "node1", PRIMARY)
        await storages[0].set_peer("inst-1", 0, "node2", SECONDARY)
        await node2.start("inst-1", REPLICATED_SPEC)
        assert (await node2.guest_work("inst-1")) == 4
        assert records.record_set(roots["node2"], "inst-1", 0) == {1, 2, 3, 4}
        assert records.record_set(roots["node1"], "inst-1", 0) == {1, 2, 3, 4}
        assert records.acked_count(roots["node2"], "inst-1", 0) == 4
        assert (await storages[1].states()) == [("inst-1", 0, UPTODATE, 100)]


async def test_a_migrated_guest_writes_to_the_copy_on_its_new_node(tmp_path):
    """After a live migration the guest's next record lands first on the target's copy, then the source's."""
    async with replicated_nodes(tmp_path) as ((node1, node2), storages, roots):
        await pair_disk(storages, disks=2)
        spec = {**REPLICATED_SPEC, "disks": (64, 64)}
        await node1.start("inst-1", spec)
        await node1.guest_work("inst-1")
        await node1.guest_work("inst-1")
        await node1.migrate("inst-1", "node2")
        assert (await node2.guest_work("inst-1")) == 3
        for index in (0, 1):
            assert records.acked_count(roots["node2"], "inst-1", index) == 3
            assert records.record_set(roots["node1"], "inst-1", index) == {1, 2, 3}
        assert records.acked_count(roots["node1"], "inst-1", 0) == 2


async def test_a_copy_shows_syncing_with_its_progress_while_a_resync_runs(tmp_path):
    """A slow resync is seen SYNCING, with a percentage that grows, and ends UPTODATE."""
    async with replicated_nodes(tmp_path, resync_pause_s=0.05) as (_, (primary, secondary), roots):
        await pair_disk([primary, secondary])
        # The primary wrote 3500 records alone (written here directly, as the guest would).
        prefix = records.copy_prefix(roots["node1"], "inst-1", 0)
        records.with_suffix(prefix, "records").write_text("".join(f"{n}\n" for n in range(1, 3501)))
        records.with_suffix(prefix, "degraded").write_text("".join(f"{n}\n" for n in range(1, 3501)))
        records.with_suffix(prefix, "acked").write_text("3500\n")
        assert (await secondary.states()) == [("inst-1", 0, DEGRADED, 0)]
        seen = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(secondary.resync, "inst-1", 0, "node1")
            for _ in range(100):
                await trio.sleep(0.01)
                (state,) = await secondary.states()
                seen.append(state[2:])
                if state[2] == UPTODATE:
                    break
        syncing = [percent for state, percent in seen if state == SYNCING]
        assert syncing and all(0 <= percent <= 99 for percent in syncing)
        assert max(syncing) > 0
        assert (await secondary.states()) == [("inst-1", 0, UPTODATE, 100)]
        assert (await primary.states()) == [("inst-1", 0, UPTODATE, 100)]


async def test_resync_rewrites_a_copy_that_holds_records_its_peer_never_had(tmp_path):
    """An old primary that wrote alone becomes, on resync, a copy of the new primary's records."""
    async with replicated_nodes(tmp_path) as (_, (node1, node2), roots):
        await pair_disk([node1, node2], primary=1)
        records.with_suffix(records.copy_prefix(roots["node1"], "inst-1", 0), "records").write_text("1\n2\n3\n")
        records.with_suffix(records.copy_prefix(roots["node2"], "inst-1", 0), "records").write_text("1\n2\n")
        await node1.resync("inst-1", 0, "node2")
        assert records.record_set(roots["node1"], "inst-1", 0) == {1, 2}


async def test_a_record_cut_short_by_a_kill_is_not_a_record(tmp_path):
    """A last line without its newline (the writer died mid-write) is not counted."""
    path = tmp_path / "0.records"
    path.write_text("1\n2\n3")
    assert records.read_record_set(path) == {1, 2}


async def test_a_guest_without_a_known_peer_writes_alone_and_the_pair_is_degraded(tmp_path):
    """A peer the storage's mapping does not name cannot be mirrored to: writes are acknowledged alone."""
    async with replicated_nodes(tmp_path) as ((node1, _), (primary, secondary), roots):
        await pair_disk([primary, secondary])
        primary.peers = {}
        await primary.set_peer("inst-1", 0, "node2", PRIMARY)
        await node1.start("inst-1", REPLICATED_SPEC)
        await node1.guest_work("inst-1")
        assert records.lone_records(roots["node1"], "inst-1", 0) == {1}
        assert records.record_set(roots["node2"], "inst-1", 0) == set()
        assert (await primary.states()) == [("inst-1", 0, DEGRADED, 0)]
        assert (await secondary.states()) == [("inst-1", 0, DEGRADED, 0)]


async def test_a_replicated_guest_needs_its_disk_copy_on_the_node(tmp_path):
    """Starting a replicated instance whose disk was not created there is refused with what to do."""
    async with replicated_nodes(tmp_path) as ((node1, _), _storages, _roots):
        with pytest.raises(DriverError, match="create the disk there first"):
            await node1.start("inst-1", REPLICATED_SPEC)
        node1.disk_roots = {}
        with pytest.raises(DriverError, match="disk_roots"):
            await node1.start("inst-1", REPLICATED_SPEC)


async def test_storage_without_replication_has_no_states_and_refuses_pairing():
    """The port's defaults: no states; set_peer and resync say the driver keeps no replicated disks."""

    class Plain(Storage):
        async def create(self, instance_id, index, size_mib):
            pass

        async def remove(self, instance_id, index):
            pass

        async def list(self):
            return []

    plain = Plain()
    assert (await plain.states()) == []
    with pytest.raises(DriverError, match="keeps no replicated disks"):
        await plain.set_peer("inst-1", 0, "node2", PRIMARY)
    with pytest.raises(DriverError, match="keeps no replicated disks"):
        await plain.resync("inst-1", 0, "node2")


async def test_the_memory_storage_shows_syncing_during_a_resync(autojump_clock):
    """MemoryStorage is SYNCING for the latency of a resync, then UPTODATE."""
    world = MemoryWorld(["node1", "node2"])
    node1, node2 = (MemoryStorage(world.hosts[name], trio.sleep, 1.0) for name in ("node1", "node2"))
    watcher = MemoryStorage(world.hosts["node2"], trio.sleep, 0.1)
    await pair_disk([node1, node2])
    world.hosts["node2"].disks_reachable = False
    world.hosts["node1"].guest_write("inst-1")
    world.hosts["node2"].disks_reachable = True
    assert (await watcher.states()) == [("inst-1", 0, DEGRADED, 0)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node2.resync, "inst-1", 0, "node1")
        await trio.sleep(0.1)
        assert (await watcher.states()) == [("inst-1", 0, SYNCING, 0)]
    assert (await watcher.states()) == [("inst-1", 0, UPTODATE, 100)]


async def test_lost_acknowledged_names_acked_records_the_serving_copy_lacks(tmp_path):
    """The benchmark's check: records acknowledged anywhere but missing where the instance now runs."""
    async with replicated_nodes(tmp_path) as ((node1, _), storages, roots):
        await pair_disk(storages)
        await node1.start("inst-1", REPLICATED_SPEC)
        await node1.guest_work("inst-1")
        records.set_unreachable(roots["node2"], True)
        await node1.guest_work("inst-1")
        assert records.acknowledged(roots.values(), "inst-1", 0) == 2
        assert records.lost_acknowledged(roots.values(), roots["node2"], "inst-1", 0) == {2}
        assert records.lost_acknowledged(roots.values(), roots["node1"], "inst-1", 0) == set()
