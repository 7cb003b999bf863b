"""Live-migrate a replicated instance to its secondary node (the old primary becomes the secondary), or a
diskless one to the target node given."""

from dataclasses import dataclass

from appliance.model.errors import WRONG_STATE, PrereqError
from ops import _migration
from ops.base import Claims, Plan, no_prepare

NAME = "instance_migrate"
OPCODE = "INSTANCE_MIGRATE"
ROLE = "operator"
DRAIN_EXEMPT = False
BEFORE_INIT = False
REFERENCES = {"instance": "instance", "target_node": "node"}
prepare = no_prepare


@dataclass(frozen=True)
class Params:
    instance: str
    allow_failover: bool = False
    timeout_s: int = 600
    target_node: str | None = None


def claims(state, params: Params) -> Claims:
    claimed = _migration.claims(state, params.instance)
    target = state.node_by_name(params.target_node) if params.target_node else None
    if target is None:
        return claimed
    return Claims(instances=claimed.instances, shared_nodes=claimed.shared_nodes | {target.id})


def falls_back(state, params: Params) -> bool:
    """Whether a migration that cannot be live becomes a failover (only when the caller allows it)."""
    found = state.instance_by_name(params.instance)
    return params.allow_failover and found is not None and bool(found.secondary) and (
        found.admin_state != "up" or state.nodes[found.primary].offline)


def check(state, params: Params) -> None:
    found, primary, _ = _migration.check_common(state, params.instance, "migrate", params.target_node)
    if falls_back(state, params):
        return
    if found.admin_state != "up":
        raise PrereqError(WRONG_STATE, f"Instance '{found.name}' is marked down, cannot migrate it live; "
                                       f"use 'cairn instance failover {found.name}' (or --allow-failover)")
    if primary.offline:
        raise PrereqError(WRONG_STATE, f"Cannot migrate instance '{found.name}' live: its primary node "
                                       f"{primary.name} is offline; use 'cairn instance failover {found.name}'")


def plan(state, params: Params) -> Plan:
    if falls_back(state, params):
        return _migration.failover_plan(state, params.instance, params.timeout_s)
    return _migration.migrate_plan(state, params.instance, params.timeout_s, params.target_node)
