"""Fail a replicated instance over to its secondary: stop on the primary, start on the secondary."""

from dataclasses import dataclass

from ops import _common, _migration
from ops.base import Claims, Plan

NAME = "instance_failover"
OPCODE = "INSTANCE_FAILOVER"


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
    return _migration.plan(state, params.instance, "failing over", params.timeout_s)
