"""Rename an instance; its id, disks and MACs stay. Like Ganeti, only a stopped instance is renamed."""

from dataclasses import dataclass

from appliance.model import events as ev
from appliance.model.errors import WRONG_STATE, PrereqError
from ops import _common
from ops.base import Claims, Plan, one_step, no_prepare

NAME = "instance_rename"
OPCODE = "INSTANCE_RENAME"
ROLE = "operator"
DRAIN_EXEMPT = False
BEFORE_INIT = False
REFERENCES = {"instance": "instance"}
prepare = no_prepare


@dataclass(frozen=True)
class Params:
    instance: str
    new_name: str


def claims(state, params: Params) -> Claims:
    return _common.instance_claims(state, params.instance, params.new_name)


def check(state, params: Params) -> None:
    found = _common.instance(state, params.instance)
    _common.hostname(params.new_name, "instance")
    _common.unique_instance_name(state, params.new_name)
    if found.admin_state == "up":
        raise PrereqError(WRONG_STATE, f"Instance '{found.name}' is marked to be up, cannot rename; "
                                       f"shut it down first with 'cairn instance shutdown {found.name}'")
    if found.observed_state == "running":
        raise PrereqError(WRONG_STATE, f"Instance '{found.name}' is running on node "
                                       f"{_common.node_name(state, found.observed_node)}, cannot rename; "
                                       "wait until it is seen stopped")


def plan(state, params: Params) -> Plan:
    found = _common.instance(state, params.instance)
    return one_step(f"Instance '{found.name}' renamed to '{params.new_name}'",
                    ev.InstanceRenamed(found.id, params.new_name), result=params.new_name)
