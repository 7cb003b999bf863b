"""Reboot an instance; a stopped instance is started instead, as Ganeti does."""

from dataclasses import dataclass

from appliance.model import events as ev
from appliance.model.errors import WRONG_INPUT, WRONG_STATE, PrereqError
from ops import _common
from ops.base import Claims, Plan, Wait, one_step, no_prepare

NAME = "instance_reboot"
OPCODE = "INSTANCE_REBOOT"
ROLE = "operator"
DRAIN_EXEMPT = False
BEFORE_INIT = False
REFERENCES = {"instance": "instance"}
prepare = no_prepare
REBOOT_TYPES = ("soft", "hard", "full")


@dataclass(frozen=True)
class Params:
    instance: str
    reboot_type: str = "hard"
    timeout_s: int = 300


def claims(state, params: Params) -> Claims:
    return _common.instance_claims(state, params.instance)


def check(state, params: Params) -> None:
    found = _common.instance(state, params.instance)
    if params.reboot_type not in REBOOT_TYPES:
        raise PrereqError(WRONG_INPUT, f"Invalid reboot type '{params.reboot_type}'; "
                                       f"choose one of {', '.join(REBOOT_TYPES)}")
    if found.admin_state == "offline":
        raise PrereqError(WRONG_STATE, f"Instance '{found.name}' is marked offline, cannot reboot it; "
                                       "bring it online first")
    _common.primary_online(state, found, "reboot")
    _common.positive(params.timeout_s, "timeout (s)")


def is_stopped(found) -> bool:
    """Marked down, or last seen stopped: a reboot becomes a start (not yet observed counts as running)."""
    return found.admin_state != "up" or found.observed_state == "stopped"


def plan(state, params: Params) -> Plan:
    found = _common.instance(state, params.instance)
    waits = (Wait("observed_running", found.id, found.primary, params.timeout_s),)
    if is_stopped(found):
        return one_step(f"Instance {found.name} was already stopped, starting now",
                        ev.InstanceStartupRequested(found.id), waits=waits)
    return one_step(f"rebooting instance {found.name} ({params.reboot_type})",
                    ev.InstanceRebootRequested(found.id, params.reboot_type), waits=waits)
