"""Remove an instance: stop it if it is marked up, then drop it (its disks and MACs) from the cluster."""

from dataclasses import dataclass

from appliance.model import events as ev
from ops import _common
from ops.base import Claims, Plan, Step, Wait, no_prepare

NAME = "instance_remove"
OPCODE = "INSTANCE_REMOVE"
ROLE = "operator"
DRAIN_EXEMPT = False
BEFORE_INIT = False
REFERENCES = {"instance": "instance"}
prepare = no_prepare


@dataclass(frozen=True)
class Params:
    instance: str
    shutdown_timeout_s: int = 120


def claims(state, params: Params) -> Claims:
    return _common.instance_claims(state, params.instance)


def check(state, params: Params) -> None:
    _common.instance(state, params.instance)
    _common.positive(params.shutdown_timeout_s, "shutdown timeout (s)")


def _needs_shutdown(state, found) -> bool:
    """An instance marked up on a reachable primary is stopped first, so removal never yanks a running VM."""
    return found.admin_state == "up" and not state.nodes[found.primary].offline


def plan(state, params: Params) -> Plan:
    found = _common.instance(state, params.instance)
    steps = []
    if _needs_shutdown(state, found):
        steps.append(Step(f"shutting down instance {found.name} on node {_common.node_name(state, found.primary)}",
                          (ev.InstanceShutdownRequested(found.id, params.shutdown_timeout_s),),
                          (Wait("observed_stopped", found.id, found.primary, params.shutdown_timeout_s + 60),)))
    steps.append(Step(f"removing instance {found.name}", (ev.InstanceRemoved(found.id),)))
    return Plan(steps=tuple(steps))
