"""The behaviour every storage driver has: the in-memory driver, files and replicated disks each run this suite.

A subclass of `StorageContract` provides `open_storage(tmp_path)`, an async context manager yielding a
Storage. A driver with replicated disks also subclasses `ReplicatedStorageContract` and provides
`open_replicated(tmp_path)`, yielding a `ReplicatedPair`: the drivers of two nodes and the hooks that
make a guest write and cut a node off.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from appliance.drivers.base import DEGRADED, PRIMARY, SECONDARY, UPTODATE, DriverError, Storage


class StorageContract:
    """Subclass with `open_storage(tmp_path)`."""

    def open_storage(self, tmp_path) -> contextlib.AbstractAsyncContextManager[Storage]:
        raise NotImplementedError

    async def test_a_created_disk_is_listed(self, tmp_path):
        """create makes the disk, and list names it by instance and index."""
        async with self.open_storage(tmp_path) as storage:
            await storage.create("inst-1", 0, 64)
            await storage.create("inst-1", 1, 64)
            assert (await storage.list()) == [("inst-1", 0), ("inst-1", 1)]

    async def test_create_and_remove_are_idempotent(self, tmp_path):
        """Creating twice keeps one disk; removing twice, or a disk never made, is no error."""
        async with self.open_storage(tmp_path) as storage:
            await storage.create("inst-1", 0, 64)
            await storage.create("inst-1", 0, 64)
            assert (await storage.list()) == [("inst-1", 0)]
            await storage.remove("inst-1", 0)
            await storage.remove("inst-1", 0)
            await storage.remove("inst-2", 3)
            assert (await storage.list()) == []


@dataclass
class ReplicatedPair:
    """Two storage drivers holding the copies of replicated disks, the names of their nodes, and hooks.

    `write(instance_id)` makes the instance's guest on the primary node write its next record to its
    paired disks and returns the record's number; `cut(node)` and `heal(node)` cut a node off from the
    other and bring it back; `acked(node, instance_id, index)` and `records(...)` read a copy.
    """

    primary: Storage
    secondary: Storage
    primary_node: str
    secondary_node: str
    write: Callable[[str], Awaitable[int]]
    cut: Callable[[str], None]
    heal: Callable[[str], None]
    acked: Callable[[str, str, int], int]
    records: Callable[[str, str, int], set[int]]


class ReplicatedStorageContract:
    """Subclass with `open_replicated(tmp_path)`, an async context manager yielding a ReplicatedPair."""

    def open_replicated(self, tmp_path) -> contextlib.AbstractAsyncContextManager[ReplicatedPair]:
        raise NotImplementedError

    @staticmethod
    async def paired(pair: ReplicatedPair, instance_id: str = "inst-1") -> None:
        """Create disk 0 of the instance on both nodes and pair the copies, primary on the first node."""
        await pair.primary.create(instance_id, 0, 64)
        await pair.secondary.create(instance_id, 0, 64)
        await pair.primary.set_peer(instance_id, 0, pair.secondary_node, PRIMARY)
        await pair.secondary.set_peer(instance_id, 0, pair.primary_node, SECONDARY)

    async def test_an_unpaired_disk_has_no_replication_state(self, tmp_path):
        """states lists only copies paired with set_peer."""
        async with self.open_replicated(tmp_path) as pair:
            await pair.primary.create("inst-1", 0, 64)
            assert (await pair.primary.states()) == []

    async def test_new_paired_copies_are_uptodate_on_both_nodes(self, tmp_path):
        """A fresh pair, both copies reachable and empty, is UPTODATE on both nodes."""
        async with self.open_replicated(tmp_path) as pair:
            await self.paired(pair)
            assert (await pair.primary.states()) == [("inst-1", 0, UPTODATE, 100)]
            assert (await pair.secondary.states()) == [("inst-1", 0, UPTODATE, 100)]

    async def test_a_write_is_acknowledged_only_with_both_copies_holding_it(self, tmp_path):
        """After a write its record is on both copies and acknowledged; the pair stays UPTODATE."""
        async with self.open_replicated(tmp_path) as pair:
            await self.paired(pair)
            for expected in (1, 2, 3):
                assert (await pair.write("inst-1")) == expected
            assert pair.acked(pair.primary_node, "inst-1", 0) == 3
            assert pair.records(pair.primary_node, "inst-1", 0) == {1, 2, 3}
            assert pair.records(pair.secondary_node, "inst-1", 0) == {1, 2, 3}
            assert (await pair.primary.states()) == [("inst-1", 0, UPTODATE, 100)]
            assert (await pair.secondary.states()) == [("inst-1", 0, UPTODATE, 100)]

    async def test_a_cut_off_peer_degrades_the_pair_until_it_is_back(self, tmp_path):
        """With the peer unreachable both copies are DEGRADED; back with nothing missed, UPTODATE again."""
        async with self.open_replicated(tmp_path) as pair:
            await self.paired(pair)
            pair.cut(pair.secondary_node)
            assert (await pair.primary.states()) == [("inst-1", 0, DEGRADED, 0)]
            assert (await pair.secondary.states()) == [("inst-1", 0, DEGRADED, 0)]
            pair.heal(pair.secondary_node)
            assert (await pair.primary.states()) == [("inst-1", 0, UPTODATE, 100)]
            assert (await pair.secondary.states()) == [("inst-1", 0, UPTODATE, 100)]

    async def test_writes_without_the_peer_leave_a_stale_secondary_that_is_never_uptodate(self, tmp_path):
        """A write acknowledged on the primary alone degrades the pair, and the secondary stays stale once back."""
        async with self.open_replicated(tmp_path) as pair:
            await self.paired(pair)
            await pair.write("inst-1")
            pair.cut(pair.secondary_node)
            await pair.write("inst-1")
            assert pair.acked(pair.primary_node, "inst-1", 0) == 2
            assert pair.records(pair.secondary_node, "inst-1", 0) == {1}
            pair.heal(pair.secondary_node)
            await pair.write("inst-1")
            assert (await pair.primary.states()) == [("inst-1", 0, DEGRADED, 0)]
            assert (await pair.secondary.states()) == [("inst-1", 0, DEGRADED, 0)]

    async def test_resync_brings_a_stale_secondary_up_to_date(self, tmp_path):
        """resync copies the records the secondary missed; both copies are then UPTODATE."""
        async with self.open_replicated(tmp_path) as pair:
            await self.paired(pair)
            await pair.write("inst-1")
            pair.cut(pair.secondary_node)
            await pair.write("inst-1")
            await pair.write("inst-1")
            pair.heal(pair.secondary_node)
            await pair.secondary.resync("inst-1", 0, pair.primary_node)
            assert pair.records(pair.secondary_node, "inst-1", 0) == {1, 2, 3}
            assert (await pair.primary.states()) == [("inst-1", 0, UPTODATE, 100)]
            assert (await pair.secondary.states()) == [("inst-1", 0, UPTODATE, 100)]
            assert (await pair.write("inst-1")) == 4
            assert pair.records(pair.secondary_node, "inst-1", 0) == {1, 2, 3, 4}

    async def test_set_peer_and_resync_are_idempotent(self, tmp_path):
        """Pairing twice, or resyncing a copy already in step, changes nothing."""
        async with self.open_replicated(tmp_path) as pair:
            await self.paired(pair)
            await self.paired(pair)
            await pair.write("inst-1")
            await pair.secondary.resync("inst-1", 0, pair.primary_node)
            await pair.secondary.resync("inst-1", 0, pair.primary_node)
            assert pair.records(pair.secondary_node, "inst-1", 0) == {1}
            assert (await pair.secondary.states()) == [("inst-1", 0, UPTODATE, 100)]

    async def test_a_recreated_secondary_is_stale_until_resynced(self, tmp_path):
        """A secondary copy removed and made again lacks the acknowledged records: DEGRADED, then resync."""
        async with self.open_replicated(tmp_path) as pair:
            await self.paired(pair)
            await pair.write("inst-1")
            await pair.secondary.remove("inst-1", 0)
            assert (await pair.primary.states()) == [("inst-1", 0, DEGRADED, 0)]
            await pair.secondary.create("inst-1", 0, 64)
            await pair.secondary.set_peer("inst-1", 0, pair.primary_node, SECONDARY)
            assert (await pair.secondary.states()) == [("inst-1", 0, DEGRADED, 0)]
            await pair.secondary.resync("inst-1", 0, pair.primary_node)
            assert (await pair.secondary.states()) == [("inst-1", 0, UPTODATE, 100)]

    async def test_a_removed_copy_leaves_the_states(self, tmp_path):
        """remove drops the copy and its pairing: states no longer lists it."""
        async with self.open_replicated(tmp_path) as pair:
            await self.paired(pair)
            await pair.primary.remove("inst-1", 0)
            assert (await pair.primary.states()) == []
            assert (await pair.primary.list()) == []

    async def test_set_peer_refuses_bad_input_with_what_to_do(self, tmp_path):
        """An unknown role, a missing disk or the node itself as peer are refused with a clear message."""
        async with self.open_replicated(tmp_path) as pair:
            with pytest.raises(DriverError, match="create it before"):
                await pair.primary.set_peer("inst-1", 0, pair.secondary_node, PRIMARY)
            await pair.primary.create("inst-1", 0, 64)
            with pytest.raises(DriverError, match="not one of primary, secondary"):
                await pair.primary.set_peer("inst-1", 0, pair.secondary_node, "master")
            with pytest.raises(DriverError, match="its own node"):
                await pair.primary.set_peer("inst-1", 0, pair.primary_node, PRIMARY)
            with pytest.raises(DriverError, match="needs a peer node name"):
                await pair.primary.set_peer("inst-1", 0, "", PRIMARY)

    async def test_resync_refuses_the_primary_copy(self, tmp_path):
        """A resync would overwrite the copy the instance writes to, so it is refused on the primary."""
        async with self.open_replicated(tmp_path) as pair:
            await self.paired(pair)
            with pytest.raises(DriverError, match="is the primary copy here"):
                await pair.primary.resync("inst-1", 0, pair.secondary_node)

    async def test_resync_refuses_a_peer_it_is_not_paired_with(self, tmp_path):
        """Resyncing from another node than the recorded peer asks for set_peer first."""
        async with self.open_replicated(tmp_path) as pair:
            await self.paired(pair)
            with pytest.raises(DriverError, match="set_peer first"):
                await pair.secondary.resync("inst-1", 0, "node9")

    async def test_resync_refuses_an_unreachable_peer(self, tmp_path):
        """A resync needs the peer's copy; with the peer cut off it says to wait until it is back."""
        async with self.open_replicated(tmp_path) as pair:
            await self.paired(pair)
            pair.cut(pair.primary_node)
            with pytest.raises(DriverError, match="cannot be reached"):
                await pair.secondary.resync("inst-1", 0, pair.primary_node)
            assert (await pair.secondary.states()) == [("inst-1", 0, DEGRADED, 0)]
