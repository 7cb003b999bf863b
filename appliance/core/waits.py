"""Waits: the typed predicates a job step waits for, judged against the committed state.

A wait's deadline runs from the moment its step's JobProgressed was proposed
(a committed time, so every leader computes the same deadline).
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.model.errors import WRONG_STATE

TIMEOUT = "timeout"
FAILED = WRONG_STATE


@dataclass(frozen=True)
class Verdict:
    """Whether a step's waits hold: pending (with the deadline), passed, or failed (with why)."""

    pending: bool = False
    failed: bool = False
    deadline: float | None = None
    compensate: bool = False
    retry: bool = False
    code: str = ""
    message: str = ""


PASSED = Verdict()


def verdict(state, step_waits: tuple, since: float, now: float) -> Verdict:
    """The verdict over every wait of one step."""
    pending_until = None
    for wait in step_waits:
        outcome = holds(state, wait)
        deadline = since + wait.timeout_s
        if outcome is True:
            continue
        if outcome is not None or now >= deadline:
            why = outcome if outcome is not None else f"timed out after {wait.timeout_s} s waiting for {describe(state, wait)}"
            return Verdict(failed=True, compensate=wait.on_timeout == "compensate",
                           retry=wait.on_timeout == "retry" and outcome is None,
                           code=TIMEOUT if outcome is None else FAILED, message=why)
        pending_until = deadline if pending_until is None else min(pending_until, deadline)
    if pending_until is not None:
        return Verdict(pending=True, deadline=pending_until)
    return PASSED


def holds(state, wait) -> bool | str | None:
    """True when the wait holds, None while it may still, a message when it never will."""
    instance = state.instances.get(wait.instance)
    if wait.what == "observed_running":
        if instance is None:
            return f"instance {wait.instance} was removed"
        node = state.nodes.get(wait.node)
        if node is None or node.offline:
            return f"instance {instance.name} cannot start: node {node.name if node else wait.node} is offline"
        return True if (instance.observed_state, instance.observed_node) == ("running", wait.node) else None
    if wait.what == "observed_stopped":
        node = state.nodes.get(wait.node)
        if instance is None or node is None or node.fenced:
            return True
        return None if (instance.observed_state, instance.observed_node) == ("running", wait.node) else True
    if wait.what == "migration_finished":
        if instance is None:
            return f"instance {wait.instance} was removed"
        source = state.nodes.get(wait.node)
        if source is None or source.offline:
            return f"the migration of instance {instance.name} cannot finish: its source node is offline"
        if instance.migration_status == "done":
            return True
        if instance.migration_status == "failed":
            return f"migration of instance {instance.name} failed; it still runs on its primary"
        return None
    if wait.what == "stop_confirmed":
        return True if instance is None or not instance.pending_stop else None
    raise ValueError(f"unknown wait {wait.what!r}")


def describe(state, wait) -> str:
    instance = state.instances.get(wait.instance)
    name = instance.name if instance is not None else wait.instance
    node = state.nodes[wait.node].name if wait.node in state.nodes else wait.node
    return {"observed_running": f"instance {name} to run on {node}",
            "observed_stopped": f"instance {name} to stop on {node}",
            "migration_finished": f"the migration of instance {name} to finish",
            "stop_confirmed": f"every old node of instance {name} to confirm it stopped"}[wait.what]
