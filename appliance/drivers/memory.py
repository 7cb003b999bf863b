"""In-memory drivers: instances and disks as data, for the simulator and fast tests.

`MemoryHost` is one node's machine as plain data that changes only when told
(synchronously; the simulator decides when each change lands). The async
ports `MemoryHypervisor` and `MemoryStorage` wrap a host and wait a latency
through an injected `sleep`, so the contract suites run them under a mock
clock. Hosts of one `MemoryWorld` can migrate instances between them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from appliance.drivers.base import CRASHED, RUNNING, SHUTDOWN, DriverError, Hypervisor, Storage


class MemoryHost:
    """One node's hypervisor and storage as data."""

    def __init__(self, name: str, world: MemoryWorld | None = None) -> None:
        self.name = name
        self.world = world
        self.instances: dict[str, str] = {}
        self.specs: dict[str, dict] = {}
        self.disks: dict[tuple[str, int], int] = {}
        self.powered = True

    def start(self, instance_id: str, spec: dict) -> None:
        self._powered()
        if self.instances.get(instance_id) == RUNNING:
            return
        self.instances[instance_id] = RUNNING
        self.specs[instance_id] = dict(spec)

    def stop(self, instance_id: str) -> None:
        self._powered()
        self.instances.pop(instance_id, None)
        self.specs.pop(instance_id, None)

    def migrate(self, instance_id: str, target: str) -> None:
        """Move a running instance to another host of the world, atomically."""
        self._powered()
        if self.instances.get(instance_id) != RUNNING:
            raise DriverError(f"instance {instance_id} is not running on {self.name}; nothing to migrate")
        peer = self.world.hosts.get(target) if self.world is not None else None
        if peer is None or not peer.powered:
            raise DriverError(f"migration target {target} cannot be reached from {self.name}")
        if peer.instances.get(instance_id) == RUNNING:
            raise DriverError(f"instance {instance_id} already runs on {target}")
        peer.instances[instance_id] = RUNNING
        peer.specs[instance_id] = self.specs.pop(instance_id, {})
        del self.instances[instance_id]

    def create_disk(self, instance_id: str, index: int, size_mib: int) -> None:
        self._powered()
        self.disks[(instance_id, index)] = max(size_mib, self.disks.get((instance_id, index), 0))

    def remove_disk(self, instance_id: str, index: int) -> None:
        self._powered()
        self.disks.pop((instance_id, index), None)

    # --- what happens to a machine without being asked ----------------------------

    def crash(self, instance_id: str) -> None:
        if self.instances.get(instance_id) == RUNNING:
            self.instances[instance_id] = CRASHED

    def guest_shutdown(self, instance_id: str) -> None:
        if self.instances.get(instance_id) == RUNNING:
            self.instances[instance_id] = SHUTDOWN

    def power_off(self) -> None:
        """The machine loses power: every instance is gone; disks stay."""
        self.instances.clear()
        self.specs.clear()
        self.powered = False

    def power_on(self) -> None:
        self.powered = True

    def running(self) -> set[str]:
        return {i for i, status in self.instances.items() if status == RUNNING}

    def _powered(self) -> None:
        if not self.powered:
            raise DriverError(f"host {self.name} is powered off")


class MemoryWorld:
    """The hosts that can reach each other (for migration)."""

    def __init__(self, names: list[str] = ()) -> None:
        self.hosts: dict[str, MemoryHost] = {}
        for name in names:
            self.add(name)

    def add(self, name: str) -> MemoryHost:
        self.hosts[name] = MemoryHost(name, self)
        return self.hosts[name]


Sleep = Callable[[float], Awaitable[None]]


class MemoryHypervisor(Hypervisor):
    """The hypervisor port over a MemoryHost; each call waits `latency_s` through `sleep` first."""

    def __init__(self, host: MemoryHost, sleep: Sleep, latency_s: float = 0.01) -> None:
        self.host, self.sleep, self.latency_s = host, sleep, latency_s

    async def start(self, instance_id: str, spec: dict) -> None:
        await self.sleep(self.latency_s)
        self.host.start(instance_id, spec)

    async def stop(self, instance_id: str, timeout_s: float) -> None:
        await self.sleep(self.latency_s)
        self.host.stop(instance_id)

    async def list(self) -> dict[str, str]:
        await self.sleep(self.latency_s)
        self.host._powered()
        return dict(self.host.instances)

    async def migrate(self, instance_id: str, target: str) -> None:
        await self.sleep(self.latency_s)
        self.host.migrate(instance_id, target)


class MemoryStorage(Storage):
    """The storage port over a MemoryHost."""

    def __init__(self, host: MemoryHost, sleep: Sleep, latency_s: float = 0.01) -> None:
        self.host, self.sleep, self.latency_s = host, sleep, latency_s

    async def create(self, instance_id: str, index: int, size_mib: int) -> None:
        await self.sleep(self.latency_s)
        self.host.create_disk(instance_id, index, size_mib)

    async def remove(self, instance_id: str, index: int) -> None:
        await self.sleep(self.latency_s)
        self.host.remove_disk(instance_id, index)

    async def list(self) -> list[tuple[str, int]]:
        await self.sleep(self.latency_s)
        self.host._powered()
        return sorted(self.host.disks)
