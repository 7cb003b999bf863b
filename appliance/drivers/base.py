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
"""

from __future__ import annotations

import abc

RUNNING, CRASHED, SHUTDOWN = "running", "crashed", "shutdown"
STATUSES = (RUNNING, CRASHED, SHUTDOWN)


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
    async def migrate(self, instance_id: str, target: str) -> None:
        """Move the running instance live to node `target`; on failure it keeps running here."""


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
