"""Stop an instance: mark it down so its primary's reconciler stops it (idempotent, as in Ganeti)."""

from dataclasses import dataclass

from appliance.model import events as ev
from ops import _common
from ops.base import Claims, Plan, Wait, one_step, no_prepare

NAME = "instance_shutdown"
OPCODE = "INSTANCE_SHUTDOWN"
ROLE = "operator"
DRAIN_EXEMPT = False
BEFORE_INIT = False
REFERENCES = {"instance": "instance"}
prepare = no_prepare


@dataclass(frozen=True)
class Params:
    instance: str
    timeout_s: int = 120


def claims(state, params: Params) -> Claims:
    return _common.instance_claims(state, params.instance)


def check(state, params: Params) -> None:
    _common.instance(state, params.instance)
    _common.positive(params.timeout_s, "timeout (s)")


def already_stopped(found) -> bool:
    """Marked down and not seen running anywhere: there is nothing to do."""
    return found.admin_state != "up" and found.observed_state != "running"


def plan(state, params: Params) -> Plan:
    found = _common.instance(state, params.instance)
    if already_stopped(found):
        return Plan(steps=(), result=f"instance {found.name} is already stopped")
    # An offline primary cannot report back; marking the instance down is still right, so do not wait.
    offline = state.nodes[found.primary].offline
    waits = () if offline else (Wait("observed_stopped", found.id, found.primary, params.timeout_s + 60),)
    return one_step(f"shutting down instance {found.name}", ev.InstanceShutdownRequested(found.id, params.timeout_s),
                    waits=waits)
