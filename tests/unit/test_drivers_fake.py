"""The process fake and the file storage beyond their contracts: restarts, real processes, timeouts, migration state."""

import json
import os
import signal

import pytest
import trio

from appliance.drivers.base import CRASHED, RUNNING, SHUTDOWN, DriverError
from appliance.drivers.fake import FakeHypervisor, guest_alive, read_pid
from appliance.drivers.files import FileStorage
from tests.contract.hypervisor_contract import SPEC
from tests.contract.test_drivers_fake import fake_nodes, guests_under


async def test_a_restarted_driver_still_lists_a_running_instance(tmp_path):
    """A new driver on the same state dir sees the instance the old one started, and can stop it."""
    async with fake_nodes(tmp_path) as (node1, _):
        await node1.start("inst-1", SPEC)
        pid = node1.pid("inst-1")
        restarted = FakeHypervisor(tmp_path / "node1", "node1")
        assert (await restarted.list()) == {"inst-1": RUNNING}
        assert restarted.pid("inst-1") == pid
        await restarted.stop("inst-1", 5)
        assert guests_under(tmp_path) == set()


async def test_stop_leaves_no_process_behind(tmp_path):
    """After stop the instance's process is gone and so are its files."""
    async with fake_nodes(tmp_path) as (node1, _):
        await node1.start("inst-1", SPEC)
        guest = read_pid(node1.entry("inst-1"))
        assert guest_alive(*guest)
        await node1.stop("inst-1", 5)
        assert not guest_alive(*guest)
        assert not node1.entry("inst-1").exists()
        assert guests_under(tmp_path) == set()


async def test_stop_kills_a_guest_that_ignores_the_request_after_the_timeout(tmp_path):
    """A guest without ACPI ignores SIGTERM; stop kills it once `timeout_s` has passed."""
    async with fake_nodes(tmp_path) as (node1, _):
        await node1.start("inst-1", {**SPEC, "acpi": False})
        began = trio.current_time()
        await node1.stop("inst-1", 0.3)
        assert 0.3 <= trio.current_time() - began < 3
        assert (await node1.list()) == {}
        assert guests_under(tmp_path) == set()


async def test_a_crash_and_a_guest_shutdown_survive_a_driver_restart(tmp_path):
    """Dead entries are told apart from files alone, so a restarted driver lists them the same way."""
    async with fake_nodes(tmp_path) as (node1, _):
        await node1.start("inst-1", SPEC)
        await node1.start("inst-2", SPEC)
        await node1.crash("inst-1")
        await node1.guest_shutdown("inst-2")
        restarted = FakeHypervisor(tmp_path / "node1", "node1")
        assert (await restarted.list()) == {"inst-1": CRASHED, "inst-2": SHUTDOWN}


async def test_a_guest_terminated_behind_the_drivers_back_is_crashed(tmp_path):
    """A SIGTERM that stop did not send ends the instance unexpectedly: it is listed crashed."""
    async with fake_nodes(tmp_path) as (node1, _):
        await node1.start("inst-1", SPEC)
        guest = read_pid(node1.entry("inst-1"))
        os.kill(guest[0], signal.SIGTERM)
        with trio.fail_after(5):
            while guest_alive(*guest):
                await trio.sleep(0.01)
        assert (await node1.list()) == {"inst-1": CRASHED}


async def test_start_keeps_the_spec_as_canonical_json(tmp_path):
    """The spec is stored with sorted keys and no spaces, so equal specs give equal files."""
    async with fake_nodes(tmp_path) as (node1, _):
        await node1.start("inst-1", SPEC)
        text = (node1.entry("inst-1") / "spec.json").read_text()
        assert text == json.dumps(SPEC, sort_keys=True, separators=(",", ":")) + "\n"


async def test_an_instance_id_that_cannot_name_a_directory_is_refused(tmp_path):
    """An id like '../x' never reaches the file system."""
    async with fake_nodes(tmp_path) as (node1, _):
        with pytest.raises(DriverError, match="cannot name a directory"):
            await node1.start("../escape", SPEC)
        assert guests_under(tmp_path) == set()


async def test_migrate_hands_the_guest_counter_to_the_target(tmp_path):
    """Live migration carries the guest's in-memory state over and ends the source process."""
    async with fake_nodes(tmp_path) as (node1, node2):
        await node1.start("inst-1", SPEC)
        for _ in range(3):
            await node1.guest_work("inst-1")
        source_pid = node1.pid("inst-1")
        await node1.migrate("inst-1", "node2")
        assert node2.guest_counter("inst-1") == 3
        assert await node2.guest_work("inst-1") == 4
        assert guests_under(tmp_path) == {node2.pid("inst-1")} and source_pid not in guests_under(tmp_path)


async def test_migrate_to_a_peer_whose_dir_is_missing_keeps_the_same_source_process(tmp_path):
    """A target whose state dir is gone is refused before anything moves; the source process is untouched."""
    async with fake_nodes(tmp_path) as (node1, _):
        node1.peers["node3"] = tmp_path / "node3"
        await node1.start("inst-1", SPEC)
        pid = node1.pid("inst-1")
        with pytest.raises(DriverError, match="node3"):
            await node1.migrate("inst-1", "node3")
        assert node1.pid("inst-1") == pid
        assert await node1.guest_work("inst-1") == 1


async def test_migrate_refuses_a_target_that_already_runs_the_instance(tmp_path):
    """Never two running copies: a target already running the instance is refused and both stay as they were."""
    async with fake_nodes(tmp_path) as (node1, node2):
        await node1.start("inst-1", SPEC)
        await node2.start("inst-1", SPEC)
        with pytest.raises(DriverError, match="already runs on node2"):
            await node1.migrate("inst-1", "node2")
        assert (await node1.list()) == {"inst-1": RUNNING}
        assert (await node2.list()) == {"inst-1": RUNNING}


async def test_a_new_driver_kills_the_guest_of_an_unfinished_start(tmp_path):
    """A start the old driver never finished leaves a hidden entry; the next driver kills its guest."""
    async with fake_nodes(tmp_path) as (node1, _):
        await node1.start("inst-1", SPEC)
        guest = read_pid(node1.entry("inst-1"))
        node1.entry("inst-1").rename(node1.instances / ".new-inst-1-0123456789abcdef")
        FakeHypervisor(tmp_path / "node1", "node1")
        with trio.fail_after(5):
            while guest_alive(*guest):
                await trio.sleep(0.01)
        assert list(node1.instances.iterdir()) == []


async def test_a_cancelled_start_leaves_no_unlisted_process(tmp_path):
    """However early a start is cancelled, every live guest is one that list reports."""
    async with fake_nodes(tmp_path) as (node1, _):
        for delay_s in (0, 0.0005, 0.001, 0.002, 0.003, 0.004, 0.006, 0.008, 0.012, 0.02):
            with trio.move_on_after(delay_s):
                await node1.start(f"inst-{delay_s}", SPEC)
        listed = {node1.pid(instance_id) for instance_id in await node1.list()}
        assert guests_under(tmp_path) == listed


async def test_a_file_disk_is_sparse_and_never_shrinks(tmp_path):
    """create makes a sparse file of size_mib and a smaller create keeps the larger size."""
    storage = FileStorage(tmp_path / "disks")
    await storage.create("inst-1", 0, 64)
    path = storage.path("inst-1", 0)
    assert path.stat().st_size == 64 * 1024 * 1024
    assert path.stat().st_blocks * 512 < 1024 * 1024
    await storage.create("inst-1", 0, 16)
    assert path.stat().st_size == 64 * 1024 * 1024
    await storage.remove("inst-1", 0)
    assert not path.parent.exists()
