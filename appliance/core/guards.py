"""Guards: each step's preconditions, checked again just before the step is proposed.

A plan was checked when it was made; by the time a step runs, the facts it
relies on may have moved (a node reported, an operator acted outside the job).
A guard that fails makes the job fail with a message, rather than commit a
step whose premise no longer holds.
"""

from __future__ import annotations

from typing import Any

from appliance.model import events as ev


def problem(state, step) -> str | None:
    """Why the step must not run now, or None."""
    for event in step.events:
        why = _event_problem(state, event)
        if why is not None:
            return why
    return None


def _event_problem(state, event: Any) -> str | None:
    kind = type(event)
    if kind is ev.InstanceAdded:
        if event.instance in state.instances or event.name in state.instance_names:
            return f"instance {event.name} already exists"
        return _nodes_exist(state, event.primary, event.secondary)
    instance_id = getattr(event, "instance", None)
    if instance_id is None:
        return None
    instance = state.instances.get(instance_id)
    if instance is None:
        return f"instance {instance_id} no longer exists"
    if kind is ev.InstanceMigrationStarted:
        if instance.secondary and (instance.primary, instance.secondary) != (event.source, event.target):
            return f"instance {instance.name} is no longer on {event.source} with secondary {event.target}"
        if not instance.secondary and (instance.primary != event.source or event.target not in state.nodes):
            return f"instance {instance.name} is no longer on {event.source}, or node {event.target} is gone"
        if (instance.observed_state, instance.observed_node) != ("running", event.source):
            return f"instance {instance.name} is not seen running on its primary; it cannot migrate live"
    if kind is ev.InstanceMigrated:
        if (instance.migration_target, instance.migration_status) != (event.primary, "done"):
            return f"the migration of instance {instance.name} to {event.primary} has not finished"
    if kind is ev.InstanceRecovered and instance.primary != event.old_primary:
        return f"instance {instance.name} is no longer on {event.old_primary}"
    if kind is ev.InstanceFailedOver:
        if (instance.primary, instance.secondary) != (event.secondary, event.primary):
            return f"instance {instance.name} is no longer on {event.secondary} with secondary {event.primary}"
    return None


def _nodes_exist(state, *node_ids: str) -> str | None:
    for node_id in node_ids:
        if node_id and node_id not in state.nodes:
            return f"node {node_id} no longer exists"
    return None
