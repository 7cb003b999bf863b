"""Several hypervisor drivers on one node, behind the one port the reconciler drives.

A cluster enables hypervisors (`kvm`, `fake`) and each instance names one; a
node runs every instance with the driver its spec names. `list` merges the
drivers' listings; `stop` and `migrate` go to the driver that holds the
instance (a stop of an instance no driver holds is a no-op, as the port asks).
"""

from __future__ import annotations

from collections.abc import Mapping

from appliance.drivers.base import DriverError, Hypervisor


class HypervisorSet(Hypervisor):
    """The node's hypervisor drivers by name; an instance runs under the one its spec's `hypervisor` names."""

    def __init__(self, drivers: Mapping[str, Hypervisor]) -> None:
        if not drivers:
            raise ValueError("a node needs at least one hypervisor driver")
        self.drivers = dict(drivers)

    def driver(self, name: str) -> Hypervisor:
        """The driver called `name`; DriverError naming the ones this node has."""
        found = self.drivers.get(name)
        if found is None:
            raise DriverError(f"hypervisor {name!r} is not available on this node (it has "
                              f"{', '.join(sorted(self.drivers))}); give the instance one of those with -H")
        return found

    async def _holder(self, instance_id: str) -> Hypervisor | None:
        for driver in self.drivers.values():
            if instance_id in await driver.list():
                return driver
        return None

    async def start(self, instance_id: str, spec: dict) -> None:
        wanted = self.driver(spec.get("hypervisor") or next(iter(self.drivers)))
        holder = await self._holder(instance_id)
        if holder is not None and holder is not wanted:
            # A dead entry left by another driver (the instance was changed to another hypervisor) goes first.
            await holder.stop(instance_id, 0)
        await wanted.start(instance_id, spec)

    async def stop(self, instance_id: str, timeout_s: float) -> None:
        for driver in self.drivers.values():
            if instance_id in await driver.list():
                await driver.stop(instance_id, timeout_s)

    async def list(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for driver in self.drivers.values():
            merged.update(await driver.list())
        return merged

    async def migrate(self, instance_id: str, target: str):
        holder = await self._holder(instance_id)
        if holder is None:
            raise DriverError(f"instance {instance_id} does not run on this node, so it cannot be migrated")
        return await holder.migrate(instance_id, target)
