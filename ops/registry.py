"""The registry of operations: one line per operation module, by name."""

from types import ModuleType

from ops import (
    cluster_init, instance_add, instance_failover, instance_migrate, instance_modify, instance_reboot,
    instance_remove, instance_rename, instance_shutdown, instance_startup, node_add,
)

OPERATIONS: dict[str, ModuleType] = {
    module.NAME: module
    for module in (
        cluster_init,
        node_add,
        instance_add,
        instance_remove,
        instance_startup,
        instance_shutdown,
        instance_reboot,
        instance_modify,
        instance_rename,
        instance_migrate,
        instance_failover,
    )
}


def get(name: str) -> ModuleType:
    """The operation module called `name`; KeyError names the known ones."""
    try:
        return OPERATIONS[name]
    except KeyError:
        raise KeyError(f"unknown operation {name!r}; known: {', '.join(sorted(OPERATIONS))}") from None
