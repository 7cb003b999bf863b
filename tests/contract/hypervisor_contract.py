"""The behaviour every hypervisor driver has: the in-memory driver, the process fake and QEMU each run this suite.

A subclass provides `open_pair(tmp_path)`, an async context manager yielding a
`Pair`: two drivers on two nodes that can migrate to each other, and the ways
to make an instance crash or shut itself down (a kill, a guest poweroff).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from appliance.drivers.base import CRASHED, RUNNING, SHUTDOWN, DriverError, Hypervisor

SPEC = {"name": "web1.example.com", "memory_mib": 128, "vcpus": 1, "disks": (), "nics": (), "hypervisor": "fake"}


@dataclass
class Pair:
    """Two drivers, the name of the second node, and fault hooks on the first."""

    source: Hypervisor
    target: Hypervisor
    target_name: str
    crash: Callable
    guest_shutdown: Callable


class HypervisorContract:
    """Subclass with `open_pair(tmp_path)`."""

    def open_pair(self, tmp_path) -> contextlib.AbstractAsyncContextManager[Pair]:
        raise NotImplementedError

    async def test_a_started_instance_is_listed_running(self, tmp_path):
        """start makes the instance run, and list says so."""
        async with self.open_pair(tmp_path) as pair:
            await pair.source.start("inst-1", SPEC)
            assert (await pair.source.list()) == {"inst-1": RUNNING}

    async def test_start_is_idempotent(self, tmp_path):
        """Starting a running instance again changes nothing."""
        async with self.open_pair(tmp_path) as pair:
            await pair.source.start("inst-1", SPEC)
            await pair.source.start("inst-1", SPEC)
            assert (await pair.source.list()) == {"inst-1": RUNNING}

    async def test_stop_removes_the_instance_and_is_idempotent(self, tmp_path):
        """stop ends the instance; stopping it again, or an unknown one, is no error."""
        async with self.open_pair(tmp_path) as pair:
            await pair.source.start("inst-1", SPEC)
            await pair.source.stop("inst-1", 5)
            await pair.source.stop("inst-1", 5)
            await pair.source.stop("inst-unknown", 5)
            assert (await pair.source.list()) == {}

    async def test_a_crash_is_listed_until_stop_clears_it(self, tmp_path):
        """An instance that ends unexpectedly is listed crashed; stop clears the entry."""
        async with self.open_pair(tmp_path) as pair:
            await pair.source.start("inst-1", SPEC)
            await pair.crash("inst-1")
            assert (await pair.source.list()) == {"inst-1": CRASHED}
            await pair.source.stop("inst-1", 5)
            assert (await pair.source.list()) == {}

    async def test_a_guest_shutdown_is_listed_as_such(self, tmp_path):
        """A guest that powers itself off is listed shutdown, not crashed (Ganeti's USER_down)."""
        async with self.open_pair(tmp_path) as pair:
            await pair.source.start("inst-1", SPEC)
            await pair.guest_shutdown("inst-1")
            assert (await pair.source.list()) == {"inst-1": SHUTDOWN}
            await pair.source.stop("inst-1", 5)
            assert (await pair.source.list()) == {}

    async def test_start_replaces_a_shutdown_entry(self, tmp_path):
        """Starting an instance its guest powered off runs it again."""
        async with self.open_pair(tmp_path) as pair:
            await pair.source.start("inst-1", SPEC)
            await pair.guest_shutdown("inst-1")
            await pair.source.start("inst-1", SPEC)
            assert (await pair.source.list()) == {"inst-1": RUNNING}

    async def test_migrating_to_a_node_that_already_runs_it_fails(self, tmp_path):
        """A migration never leaves two running copies: a target already running the instance is refused."""
        async with self.open_pair(tmp_path) as pair:
            await pair.source.start("inst-1", SPEC)
            await pair.target.start("inst-1", SPEC)
            with pytest.raises(DriverError):
                await pair.source.migrate("inst-1", pair.target_name)
            assert (await pair.source.list()) == {"inst-1": RUNNING}
            assert (await pair.target.list()) == {"inst-1": RUNNING}

    async def test_start_replaces_a_dead_entry(self, tmp_path):
        """Starting a crashed instance runs it again."""
        async with self.open_pair(tmp_path) as pair:
            await pair.source.start("inst-1", SPEC)
            await pair.crash("inst-1")
            await pair.source.start("inst-1", SPEC)
            assert (await pair.source.list()) == {"inst-1": RUNNING}

    async def test_migrate_moves_the_instance_to_the_target(self, tmp_path):
        """After a live migration the instance runs on the target and no longer on the source."""
        async with self.open_pair(tmp_path) as pair:
            await pair.source.start("inst-1", SPEC)
            await pair.source.migrate("inst-1", pair.target_name)
            assert (await pair.source.list()) == {}
            assert (await pair.target.list()) == {"inst-1": RUNNING}

    async def test_a_failed_migration_leaves_the_source_running(self, tmp_path):
        """Migrating to a node that cannot take it fails and the instance keeps running on the source."""
        async with self.open_pair(tmp_path) as pair:
            await pair.source.start("inst-1", SPEC)
            with pytest.raises(DriverError):
                await pair.source.migrate("inst-1", "no-such-node")
            assert (await pair.source.list()) == {"inst-1": RUNNING}

    async def test_migrating_an_instance_that_does_not_run_fails(self, tmp_path):
        """Only a running instance migrates."""
        async with self.open_pair(tmp_path) as pair:
            with pytest.raises(DriverError):
                await pair.source.migrate("inst-1", pair.target_name)
