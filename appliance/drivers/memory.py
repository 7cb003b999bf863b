"""In-memory drivers: instances and disks as data, for the simulator and fast tests.

`MemoryHost` is one node's machine as plain data that changes only when told
(synchronously; the simulator decides when each change lands). The async
ports `MemoryHypervisor` and `MemoryStorage` wrap a host and wait a latency
through an injected `sleep`, so the contract suites run them under a mock
clock. Hosts of one `MemoryWorld` can migrate instances between them.

A disk paired with `set_peer` is one copy of a replicated pair, with the
same rules as the file fake (`records.py`, `files.py`): records as a set of
numbers, the highest acknowledged record, the records acknowledged alone;
`guest_write` is the guest's unit of work. A host is cut off from the others
(its copies cannot be reached, nor can it reach theirs) while powered off or
while `disks_reachable` is False.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from appliance.drivers.base import (CRASHED, DEGRADED, PRIMARY, RUNNING, SECONDARY, SHUTDOWN, SYNCING,
                                    UPTODATE, DriverError, Hypervisor, Storage, check_pairing)


@dataclass
class DiskCopy:
    """One node's copy of a disk as the replicated fake sees it."""

    records: set[int] = field(default_factory=set)
    acked: int = 0
    lone: set[int] = field(default_factory=set)
    peer: str | None = None
    role: str | None = None


class MemoryHost:
    """One node's hypervisor and storage as data."""

    def __init__(self, name: str, world: MemoryWorld | None = None) -> None:
        self.name = name
        self.world = world
        self.instances: dict[str, str] = {}
        self.specs: dict[str, dict] = {}
        self.disks: dict[tuple[str, int], int] = {}
        self.copies: dict[tuple[str, int], DiskCopy] = {}
        self.resyncing: set[tuple[str, int]] = set()
        self.powered = True
        self.disks_reachable = True

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
        if index < 0:
            raise DriverError(f"disk index {index} of instance {instance_id} is negative; indexes start at 0")
        self.disks[(instance_id, index)] = max(size_mib, self.disks.get((instance_id, index), 0))
        self.copies.setdefault((instance_id, index), DiskCopy())

    def remove_disk(self, instance_id: str, index: int) -> None:
        self._powered()
        self.disks.pop((instance_id, index), None)
        self.copies.pop((instance_id, index), None)

    # --- replicated copies ----------------------------------------------------------

    def set_disk_peer(self, instance_id: str, index: int, peer_node: str, role: str) -> None:
        self._powered()
        check_pairing(instance_id, index, peer_node, role, self.name)
        copy = self._copy(instance_id, index)
        copy.peer, copy.role = peer_node, role

    def _copy(self, instance_id: str, index: int) -> DiskCopy:
        copy = self.copies.get((instance_id, index))
        if copy is None:
            raise DriverError(f"disk {index} of instance {instance_id} does not exist on {self.name}; "
                              "create it before pairing or resyncing it")
        return copy

    def peer_copy(self, instance_id: str, index: int, peer_node: str) -> DiskCopy | None:
        """The peer's copy if both hosts can reach each other and the peer holds one, else None."""
        peer = self.world.hosts.get(peer_node) if self.world is not None else None
        if peer is None or not (self.powered and self.disks_reachable and peer.powered and peer.disks_reachable):
            return None
        return peer.copies.get((instance_id, index))

    def disk_states(self) -> list[tuple[str, int, str, int]]:
        states = []
        for (instance_id, index), copy in sorted(self.copies.items()):
            if copy.peer is None:
                continue
            if (instance_id, index) in self.resyncing:
                states.append((instance_id, index, SYNCING, 0))
                continue
            peer = self.peer_copy(instance_id, index, copy.peer)
            if peer is None:
                states.append((instance_id, index, DEGRADED, 0))
                continue
            acked = max(copy.acked, peer.acked)
            required = {r for r in copy.records | peer.records if r <= acked} | copy.lone | peer.lone
            in_step = required <= copy.records and required <= peer.records
            states.append((instance_id, index, UPTODATE, 100) if in_step else (instance_id, index, DEGRADED, 0))
        return states

    def check_resync(self, instance_id: str, index: int, peer_node: str) -> DiskCopy:
        """The peer copy to resync from, after the same checks as the file fake."""
        self._powered()
        copy = self._copy(instance_id, index)
        if copy.peer is None:
            copy.peer, copy.role = peer_node, SECONDARY
        elif copy.peer != peer_node:
            raise DriverError(f"disk {index} of instance {instance_id} is paired with {copy.peer}, not "
                              f"{peer_node}; pair it with set_peer first if its peer has changed")
        elif copy.role == PRIMARY:
            raise DriverError(f"disk {index} of instance {instance_id} is the primary copy here, which a resync "
                              f"would overwrite; resync the secondary on {peer_node}, or make this copy the "
                              "secondary with set_peer first")
        peer = self.peer_copy(instance_id, index, peer_node)
        if peer is None:
            raise DriverError(f"cannot resync disk {index} of instance {instance_id}: the copy on {peer_node} "
                              "cannot be reached (or does not exist); resync once the node is back")
        return peer

    def resync_disk(self, instance_id: str, index: int, peer_node: str) -> None:
        """Make this copy hold what the peer's holds (a copy of it, if this one holds records it lacks)."""
        peer = self.check_resync(instance_id, index, peer_node)
        copy = self._copy(instance_id, index)
        copy.records = set(peer.records) if copy.records - peer.records else copy.records | peer.records

    def guest_write(self, instance_id: str) -> int:
        """The guest's unit of work: write the next record to each paired copy of the instance here.

        Each copy gets the record, then its peer does, or (peer unreachable) it is noted as acknowledged
        alone; then every copy acknowledges it. Returns the record number.
        """
        self._powered()
        mine = sorted((index, copy) for (iid, index), copy in self.copies.items()
                      if iid == instance_id and copy.peer is not None)
        if not mine:
            raise DriverError(f"instance {instance_id} has no paired disk on {self.name} to write to")
        record = max(max(copy.records, default=0) for _, copy in mine) + 1
        for index, copy in mine:
            copy.records.add(record)
            peer = self.peer_copy(instance_id, index, copy.peer)
            if peer is not None:
                peer.records.add(record)
            else:
                copy.lone.add(record)
        for _, copy in mine:
            copy.acked = record
        return record

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

    @property
    def node_name(self) -> str:
        return self.host.name

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

    async def states(self) -> list[tuple[str, int, str, int]]:
        await self.sleep(self.latency_s)
        self.host._powered()
        return self.host.disk_states()

    async def set_peer(self, instance_id: str, index: int, peer_node: str, role: str) -> None:
        await self.sleep(self.latency_s)
        self.host.set_disk_peer(instance_id, index, peer_node, role)

    async def resync(self, instance_id: str, index: int, peer_node: str) -> None:
        """Check, stay SYNCING for one latency, then copy (checking again: the peer may have gone)."""
        self.host.check_resync(instance_id, index, peer_node)
        self.host.resyncing.add((instance_id, index))
        try:
            await self.sleep(self.latency_s)
            self.host.resync_disk(instance_id, index, peer_node)
        finally:
            self.host.resyncing.discard((instance_id, index))
