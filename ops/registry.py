"""The registry of operations: one line per operation module, by name."""

from types import ModuleType

from ops.base import conforms
from ops import (
    cluster_init, cluster_mode, cluster_modify, group_add, group_assign_nodes, group_remove, group_rename, instance_add, instance_failover, instance_recover,
    instance_migrate, instance_modify, instance_reboot, instance_remove, instance_rename, instance_replace_disks,
    instance_shutdown,
    instance_startup, node_add, node_evacuate, node_fence, node_migrate, node_modify, node_remove, node_token_issue, tags_add, tags_remove,
    user_add, user_remove, user_set_role,
)

OPERATIONS: dict[str, ModuleType] = {
    module.NAME: conforms(module)
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
        instance_replace_disks,
        node_remove,
        node_migrate,
        node_evacuate,
        node_modify,
        node_fence,
        instance_recover,
        node_token_issue,
        group_add,
        group_remove,
        group_rename,
        group_assign_nodes,
        user_add,
        user_remove,
        user_set_role,
        cluster_modify,
        cluster_mode,
        tags_add,
        tags_remove,
    )
}


def get(name: str) -> ModuleType:
    """The operation module called `name`; KeyError names the known ones."""
    try:
        return OPERATIONS[name]
    except KeyError:
        raise KeyError(f"unknown operation {name!r}; known: {', '.join(sorted(OPERATIONS))}") from None
