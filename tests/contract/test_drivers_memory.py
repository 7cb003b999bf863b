"""The hypervisor and storage contracts, run against the in-memory drivers on a mock clock."""

import contextlib

import pytest
import trio

from appliance.drivers.base import DriverError
from appliance.drivers.hypervisors import HypervisorSet
from appliance.drivers.memory import MemoryHypervisor, MemoryStorage, MemoryWorld
from tests.contract.hypervisor_contract import SPEC, HypervisorContract, Pair
from tests.contract.storage_contract import ReplicatedPair, ReplicatedStorageContract, StorageContract


@pytest.fixture(autouse=True)
def _mock_time(autojump_clock):
    """Latencies pass on trio's autojump clock: the clock is injected, so no test waits in real time."""
    return autojump_clock


class TestMemoryHypervisor(HypervisorContract):
    """MemoryHypervisor passes the hypervisor contract."""

    @contextlib.asynccontextmanager
    async def open_pair(self, tmp_path):
        world = MemoryWorld(["node1", "node2"])
        source, target = world.hosts["node1"], world.hosts["node2"]

        async def crash(instance_id):
            source.crash(instance_id)

        async def guest_shutdown(instance_id):
            source.guest_shutdown(instance_id)

        yield Pair(MemoryHypervisor(source, trio.sleep, 0.5), MemoryHypervisor(target, trio.sleep, 0.5), "node2",
                   crash, guest_shutdown)


class TestMemoryStorage(StorageContract):
    """MemoryStorage passes the storage contract."""

    @contextlib.asynccontextmanager
    async def open_storage(self, tmp_path):
        yield MemoryStorage(MemoryWorld(["node1"]).hosts["node1"], trio.sleep, 0.5)


class TestMemoryReplicatedStorage(ReplicatedStorageContract):
    """MemoryStorage passes the replicated storage contract; a cut node has its disks unreachable."""

    @contextlib.asynccontextmanager
    async def open_replicated(self, tmp_path):
        world = MemoryWorld(["node1", "node2"])

        async def write(instance_id):
            return world.hosts["node1"].guest_write(instance_id)

        def cut(node):
            world.hosts[node].disks_reachable = False

        def heal(node):
            world.hosts[node].disks_reachable = True

        def acked(node, instance_id, index):
            return world.hosts[node].copies[(instance_id, index)].acked

        def records(node, instance_id, index):
            return set(world.hosts[node].copies[(instance_id, index)].records)

        yield ReplicatedPair(MemoryStorage(world.hosts["node1"], trio.sleep, 0.5),
                             MemoryStorage(world.hosts["node2"], trio.sleep, 0.5), "node1", "node2",
                             write, cut, heal, acked, records)


class TestHypervisorSet(HypervisorContract):
    """A node's set of hypervisors passes the contract for the instances of the driver each names."""

    @contextlib.asynccontextmanager
    async def open_pair(self, tmp_path):
        world, other = MemoryWorld(["node1", "node2"]), MemoryWorld(["node1", "node2"])
        source, target = world.hosts["node1"], world.hosts["node2"]

        async def crash(instance_id):
            source.crash(instance_id)

        async def guest_shutdown(instance_id):
            source.guest_shutdown(instance_id)

        def node(name):
            return HypervisorSet({"kvm": MemoryHypervisor(other.hosts[name], trio.sleep, 0.01),
                                  "fake": MemoryHypervisor(world.hosts[name], trio.sleep, 0.01)})

        yield Pair(node("node1"), node("node2"), "node2", crash, guest_shutdown)


async def test_a_hypervisor_set_runs_each_instance_under_the_driver_it_names():
    """start goes to the named driver, list merges, stop finds the holder; an unknown name is refused with the
    names this node has."""
    fake_world, kvm_world = MemoryWorld(["node1"]), MemoryWorld(["node1"])
    fake = MemoryHypervisor(fake_world.hosts["node1"], trio.sleep, 0.01)
    kvm = MemoryHypervisor(kvm_world.hosts["node1"], trio.sleep, 0.01)
    node = HypervisorSet({"fake": fake, "kvm": kvm})
    await node.start("a", {**SPEC, "hypervisor": "kvm"})
    await node.start("b", SPEC)
    assert await kvm.list() == {"a": "running"} and await fake.list() == {"b": "running"}
    assert await node.list() == {"a": "running", "b": "running"}
    await node.start("a", SPEC)      # changed to the other hypervisor: the old entry goes first
    assert await kvm.list() == {} and await fake.list() == {"a": "running", "b": "running"}
    await node.stop("a", 1)
    assert await node.list() == {"b": "running"}
    with pytest.raises(DriverError, match="'xen' is not available on this node.*fake, kvm"):
        await node.start("c", {**SPEC, "hypervisor": "xen"})
