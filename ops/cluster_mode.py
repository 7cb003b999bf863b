"""Switch an operational mode on or off, optionally until a time: replicated facts, not files on the master.

Modes: queue_drained (no new jobs), watcher_paused, recovery_disarmed (the
leader does not fail instances over on its own) are cluster-wide (target '');
maintenance is per node (target is a node). Unlike Ganeti, where drain and
watcher pause are local files lost on master failover, each is an event.

The operation is DRAIN_EXEMPT as a whole: undraining must work while the
queue is drained, and the other switches are what an operator reaches for in
the same emergency. `until` is seconds since the epoch; a mode whose `until`
has passed reads as off (state.mode_active) without any event. Turning on a
mode that is on replaces its expiry; turning off a mode that is off plans
nothing, as Ganeti's undrain of an undrained queue succeeds.
"""

from dataclasses import dataclass

from appliance.model import events as ev
from appliance.model.errors import WRONG_INPUT, PrereqError
from appliance.model.state import MODES
from ops import _common
from ops.base import Claims, Plan, one_step, no_prepare

NAME = "cluster_mode"
OPCODE = "CLUSTER_SET_MODE"
ROLE = "admin"
DRAIN_EXEMPT = True
BEFORE_INIT = False
REFERENCES = {"target": "node"}
prepare = no_prepare
NODE_MODES = ("maintenance",)


@dataclass(frozen=True)
class Params:
    mode: str
    on: bool = True
    until: float | None = None
    target: str = ""


def claims(state, params: Params) -> Claims:
    if params.mode in NODE_MODES:
        return Claims(nodes=frozenset({_common.claim_key(state, "node", params.target)}))
    # Cluster-wide modes deliberately claim nothing: draining must not wait behind the jobs it is meant to stop.
    return Claims()


def target_id(state, params: Params) -> str:
    return _common.node(state, params.target).id if params.mode in NODE_MODES else ""


def check(state, params: Params) -> None:
    if params.mode not in MODES:
        raise PrereqError(WRONG_INPUT, f"Unknown mode '{params.mode}'; choose one of {', '.join(MODES)}")
    if params.mode in NODE_MODES:
        if not params.target:
            raise PrereqError(WRONG_INPUT, f"The {params.mode} mode is per node; name the node")
        _common.node(state, params.target)
    elif params.target:
        raise PrereqError(WRONG_INPUT, f"The {params.mode} mode is cluster-wide; give no target")
    if params.until is not None:
        if not params.on:
            raise PrereqError(WRONG_INPUT, "An expiry only applies when switching a mode on")
        if isinstance(params.until, bool) or not isinstance(params.until, (int, float)) or params.until <= 0:
            raise PrereqError(WRONG_INPUT, f"Expiry must be a time in seconds since the epoch, got {params.until!r}")


def plan(state, params: Params) -> Plan:
    target = target_id(state, params)
    key = (params.mode, target)
    where = f" on node {params.target}" if target else ""
    if params.on:
        until = None if params.until is None else float(params.until)
        if key in state.modes and state.modes[key] == until:
            return Plan(steps=(), result=f"{params.mode}{where} is already on")
        expiry = "" if until is None else f" until {until:.0f}"
        return one_step(f"setting {params.mode}{where}{expiry}", ev.ModeSet(params.mode, target, until))
    if key not in state.modes:
        return Plan(steps=(), result=f"{params.mode}{where} is already off")
    return one_step(f"clearing {params.mode}{where}", ev.ModeCleared(params.mode, target))
