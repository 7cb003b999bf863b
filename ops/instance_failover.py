"""Fail a replicated instance over to its secondary: stop on the primary, start on the secondary."""

from dataclasses import dataclass

from ops import _common, _migration
from ops.base import Claims, Plan, no_prepare

NAME = "instance_failover"
OPCODE = "INSTANCE_FAILOVER"
ROLE = "operator"
DRAIN_EXEMPT = False
BEFORE_INIT = False
REFERENCES = {"instance": "instance"}
prepare = no_prepare


@dataclass(frozen=True)
class Params:
    instance: str
    timeout_s: int = 600


def claims(state, params: Params) -> Claims:
    return _migration.claims(state, params.instance)


def check(state, params: Params) -> None:
    _migration.check_common(state, params.instance, "fail over")
    _common.positive(params.timeout_s, "timeout (s)")


def plan(state, params: Params) -> Plan:
    """One InstanceFailedOver (the old primary must then confirm it stopped the instance), as _migration builds it."""
    return _migration.failover_plan(state, params.instance, params.timeout_s)
