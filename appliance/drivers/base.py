"""The driver ports the reconciler drives: a hypervisor and a storage driver, each an async interface.

Every implementation (the in-memory ones here, the process-based fake, QEMU)
passes the one contract suite of its family in tests/contract/. The rules the
reconciler relies on:
- start, stop, create and remove are idempotent ("ensure"), so a retry after an
  unknown outcome is always safe;
- `list` reports every instance the hypervisor holds: running, or dead as
  `crashed` (ended unexpectedly) or `shutdown` (the guest powered itself off),
  until `stop` clears it;
- a failed `migrate` leaves the instance running on the source.

Replicated disks (Ganeti's `drbd`, here a pair of copies on two nodes kept in
step by the writer, like DRBD protocol C or QEMU's write-blocking mirror):
- `create` makes a copy on this node; `set_peer(instance, index, peer_node,
  role)` pairs it with the copy on `peer_node` and says whether this copy is
  the one the instance writes to (`primary`) or the mirror (`secondary`).
  Call it on both nodes after `create` and before the instance starts; call
  it again after a migration or failover to swap the roles. Idempotent.
- A write is acknowledged once both copies hold it; when the peer cannot be
  reached the writer acknowledges on its own copy alone, and the pair is
  then degraded until a resync.
- `states()` reports every paired copy here as (instance id, disk index,
  state, sync_percent): UPTODATE (100) when both copies are reachable and
  hold every acknowledged write; SYNCING (0-99, how far it has come) on the
  copy a resync is rebuilding; DEGRADED (0) otherwise, on both copies: the
  peer cannot be reached, or either copy lacks an acknowledged write. A
  copy that missed writes never reports UPTODATE, so failover can refuse a
  secondary whose last recorded state was not UPTODATE.
- `resync(instance, index, peer_node)` makes this copy (the secondary) hold
  what the peer's copy holds, then returns; calling it again on a copy in
  step does nothing.
- Storage without replicated disks keeps the defaults: no states, and
  `set_peer`/`resync` refuse with a DriverError.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import trio

RUNNING, CRASHED, SHUTDOWN = "running", "crashed", "shutdown"
STATUSES = (RUNNING, CRASHED, SHUTDOWN)

SYNCING, UPTODATE, DEGRADED = "SYNCING", "UPTODATE", "DEGRADED"
DISK_STATES = (SYNCING, UPTODATE, DEGRADED)
PRIMARY, SECONDARY = "primary", "secondary"
DISK_ROLES = (PRIMARY, SECONDARY)


def check_pairing(instance_id: str, index: int, peer_node: str, role: str, own_node: str | None) -> None:
    """Refuse a `set_peer` that names no valid role, no peer, or this node itself."""
    if role not in DISK_ROLES:
        raise DriverError(f"disk role {role!r} is not one of {', '.join(DISK_ROLES)}; say whether this copy "
                          f"of disk {index} of instance {instance_id} is written to (primary) or mirrored")
    if not isinstance(peer_node, str) or not peer_node:
        raise DriverError(f"disk {index} of instance {instance_id} needs a peer node name to pair with, "
                          f"not {peer_node!r}")
    if peer_node == own_node:
        raise DriverError(f"disk {index} of instance {instance_id} cannot be paired with its own node "
                          f"{peer_node}; give the node that holds the other copy")


class DriverError(Exception):
    """A driver could not do what was asked; the message says what went wrong and what to check."""


class Hypervisor(abc.ABC):
    """Runs instances on this node."""

    @abc.abstractmethod
    async def start(self, instance_id: str, spec: dict) -> None:
        """Ensure the instance runs here (a dead entry is replaced); DriverError if it cannot."""

    @abc.abstractmethod
    async def stop(self, instance_id: str, timeout_s: float) -> None:
        """Ensure the instance does not run here: ask the guest, kill after `timeout_s`; clears dead entries."""

    @abc.abstractmethod
    async def list(self) -> dict[str, str]:
        """Every instance this hypervisor holds, by id: running, crashed or shutdown."""

    @abc.abstractmethod
    async def migrate(self, instance_id: str, target: str) -> str | None:
        """Move the running instance live to node `target`; on failure it keeps running here. May return a
        short text of the migration's figures (time, downtime), which the node reports with it."""


class Storage(abc.ABC):
    """Holds instance disks on this node."""

    @abc.abstractmethod
    async def create(self, instance_id: str, index: int, size_mib: int) -> None:
        """Ensure disk `index` of the instance exists here with at least `size_mib`."""

    @abc.abstractmethod
    async def remove(self, instance_id: str, index: int) -> None:
        """Ensure the disk does not exist here."""

    @abc.abstractmethod
    async def list(self) -> list[tuple[str, int]]:
        """Every disk held here, as (instance id, disk index)."""

    async def states(self) -> list[tuple[str, int, str, int]]:
        """Every paired (replicated) copy here, as (instance id, disk index, state, sync_percent), sorted."""
        return []

    async def set_peer(self, instance_id: str, index: int, peer_node: str, role: str) -> None:
        """Pair this copy of the disk with the copy on `peer_node`, as the `role` ("primary"/"secondary") copy."""
        raise DriverError(f"{type(self).__name__} keeps no replicated disks, so disk {index} of instance "
                          f"{instance_id} cannot be paired with {peer_node}; use a storage driver with "
                          "replicated disks for the 'replicated' template")

    async def resync(self, instance_id: str, index: int, peer_node: str) -> None:
        """Bring this (secondary) copy up to date from the copy on `peer_node`; nothing to do if it is."""
        raise DriverError(f"{type(self).__name__} keeps no replicated disks, so disk {index} of instance "
                          f"{instance_id} cannot be resynced from {peer_node}; use a storage driver with "
                          "replicated disks for the 'replicated' template")


async def poll_until(condition: Callable[[], bool], timeout_s: float, poll_s: float) -> bool:
    """Poll `condition` every `poll_s` until it holds (True) or `timeout_s` has passed (False)."""
    deadline = trio.current_time() + max(timeout_s, 0.0)
    while not condition():
        if trio.current_time() >= deadline:
            return False
        await trio.sleep(poll_s)
    return True
