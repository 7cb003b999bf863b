"""The hypervisor and storage contracts, run against the process fake and the file storage in real time.

Every guest these tests start is a real process; `fake_nodes` stops every instance at the end and
then kills, by pid, any guest process still alive whose working directory is under the test's
tmp_path (found in /proc, pid file or not), failure or not.
"""

import contextlib
import os
import signal
from pathlib import Path

from appliance.drivers import records
from appliance.drivers.fake import GUEST_NAME, FakeHypervisor
from appliance.drivers.files import FileStorage
from tests.contract.hypervisor_contract import SPEC, HypervisorContract, Pair
from tests.contract.storage_contract import ReplicatedPair, ReplicatedStorageContract, StorageContract

REPLICATED_SPEC = {**SPEC, "disk_template": "replicated", "disks": (64,)}


def guests_under(root) -> set[int]:
    """The pids of every live fake guest whose working directory is under `root`, found in /proc.

    This sees a guest even if no pid file names it, and only guests this test started (a zombie's
    command line is empty, so the dead are not counted).
    """
    prefix = os.path.realpath(root) + os.sep
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            arguments = (proc / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if GUEST_NAME.encode() in arguments and cwd.startswith(prefix):
            found.add(int(proc.name))
    return found


def kill_leftovers(root) -> None:
    """Kill every fake guest this test left under `root`."""
    for pid in guests_under(root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.asynccontextmanager
async def fake_nodes(tmp_path, names=("node1", "node2")):
    """FakeHypervisors on nodes `names`, peers of each other, cleaned up however the test ends."""
    dirs = {name: tmp_path / name for name in names}
    for directory in dirs.values():
        directory.mkdir(exist_ok=True)
    drivers = [FakeHypervisor(dirs[name], name, dirs) for name in names]
    try:
        yield drivers
    finally:
        try:
            for driver in drivers:
                for instance_id in await driver.list():
                    await driver.stop(instance_id, 1)
        finally:
            kill_leftovers(tmp_path)


@contextlib.asynccontextmanager
async def replicated_nodes(tmp_path, names=("node1", "node2"), resync_pause_s=0.0):
    """Nodes laid out like a local cluster (`<node>/hv`, `<node>/disks`): (hypervisors, storages, disk roots).

    The hypervisors know every node's disk root, the storages every other node's; guests are cleaned
    up however the test ends.
    """
    roots = {name: tmp_path / name / "disks" for name in names}
    for root in roots.values():
        root.mkdir(parents=True, exist_ok=True)
    storages = [FileStorage(roots[name], {n: r for n, r in roots.items() if n != name}, name, resync_pause_s)
                for name in names]
    hv_dirs = {name: tmp_path / name / "hv" for name in names}
    for directory in hv_dirs.values():
        directory.mkdir(exist_ok=True)
    hypervisors = [FakeHypervisor(hv_dirs[name], name, hv_dirs, roots) for name in names]
    try:
        yield hypervisors, storages, roots
    finally:
        try:
            for driver in hypervisors:
                for instance_id in await driver.list():
                    await driver.stop(instance_id, 1)
        finally:
            kill_leftovers(tmp_path)


class TestFakeHypervisor(HypervisorContract):
    """FakeHypervisor passes the hypervisor contract: crash is SIGKILL, guest shutdown is SIGUSR1."""

    @contextlib.asynccontextmanager
    async def open_pair(self, tmp_path):
        async with fake_nodes(tmp_path) as (source, target):
            yield Pair(source, target, "node2", source.crash, source.guest_shutdown)


class TestFileStorage(StorageContract):
    """FileStorage passes the storage contract."""

    @contextlib.asynccontextmanager
    async def open_storage(self, tmp_path):
        yield FileStorage(tmp_path / "disks")


class TestFileReplicatedStorage(ReplicatedStorageContract):
    """FileStorage passes the replicated storage contract, its writes made by a real fake guest on node1."""

    @contextlib.asynccontextmanager
    async def open_replicated(self, tmp_path):
        async with replicated_nodes(tmp_path) as ((hypervisor, _), (primary, secondary), roots):

            async def write(instance_id):
                if instance_id not in await hypervisor.list():
                    await hypervisor.start(instance_id, REPLICATED_SPEC)
                return await hypervisor.guest_work(instance_id)

            yield ReplicatedPair(
                primary, secondary, "node1", "node2", write,
                lambda node: records.set_unreachable(roots[node], True),
                lambda node: records.set_unreachable(roots[node], False),
                lambda node, instance_id, index: records.acked_count(roots[node], instance_id, index),
                lambda node, instance_id, index: records.record_set(roots[node], instance_id, index))
