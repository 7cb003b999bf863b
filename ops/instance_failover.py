"""Fail a replicated instance over to its secondary: stop on the primary, start on the secondary."""

from dataclasses import dataclass

from appliance.model.errors import WRONG_STATE, PrereqError
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
    ignore_consistency: bool = False


def claims(state, params: Params) -> Claims:
    return _migration.claims(state, params.instance)


def check(state, params: Params) -> None:
    found, _, secondary = _migration.check_common(state, params.instance, "fail over")
    _common.positive(params.timeout_s, "timeout (s)")
    stale = _migration.stale_copies(found, unknown_is_stale=False)
    if stale and not params.ignore_consistency:
        raise PrereqError(WRONG_STATE, f"Disk(s) {', '.join(stale)} of instance {found.name} on {secondary.name} "
                                       "are not UPTODATE: the copy there may have missed writes; wait for the "
                                       "resync, or fail over with --ignore-consistency to accept losing them")


def plan(state, params: Params) -> Plan:
    """One InstanceFailedOver (the old primary must then confirm it stopped the instance), as _migration builds it."""
    return _migration.failover_plan(state, params.instance, params.timeout_s)
