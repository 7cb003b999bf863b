"""Start an instance: mark it up so its primary's reconciler runs it (idempotent, as in Ganeti)."""

from dataclasses import dataclass

from appliance.model import events as ev
from appliance.model.errors import WRONG_STATE, PrereqError
from ops import _common
from ops.base import Claims, Plan, Wait, one_step, no_prepare

NAME = "instance_startup"
OPCODE = "INSTANCE_STARTUP"
ROLE = "operator"
DRAIN_EXEMPT = False
BEFORE_INIT = False
REFERENCES = {"instance": "instance"}
prepare = no_prepare


@dataclass(frozen=True)
class Params:
    instance: str
    timeout_s: int = 300


def claims(state, params: Params) -> Claims:
    return _common.instance_claims(state, params.instance)


def check(state, params: Params) -> None:
    found = _common.instance(state, params.instance)
    if found.admin_state == "offline":
        raise PrereqError(WRONG_STATE, f"Instance '{found.name}' is marked offline, cannot start it; "
                                       "bring it online first")
    _common.primary_online(state, found, "start")
    _common.positive(params.timeout_s, "timeout (s)")


def already_running(found) -> bool:
    """Marked up and seen running on its primary: there is nothing to do."""
    return found.admin_state == "up" and found.observed_state == "running" and found.observed_node == found.primary


def plan(state, params: Params) -> Plan:
    found = _common.instance(state, params.instance)
    if already_running(found):
        return Plan(steps=(), result=f"instance {found.name} is already running")
    # Repeating the request for an instance marked up but not running (Ganeti's ERROR_down) repairs it.
    return one_step(f"starting instance {found.name}", ev.InstanceStartupRequested(found.id),
                    waits=(Wait("observed_running", found.id, found.primary, params.timeout_s, "retry"),))
