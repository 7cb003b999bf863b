"""Add a user with a role (admin, operator or read-only); only admins manage users."""

from dataclasses import dataclass

from appliance.model import events as ev
from appliance.model.errors import ALREADY_EXISTS, WRONG_INPUT, PrereqError
from appliance.model.ids import is_simple_name
from ops import _common
from ops.base import Claims, Plan, one_step, no_prepare

NAME = "user_add"
OPCODE = "USER_ADD"
ROLE = "admin"
DRAIN_EXEMPT = False
BEFORE_INIT = False
REFERENCES = {}
prepare = no_prepare


@dataclass(frozen=True)
class Params:
    name: str
    role: str = "operator"


def claims(state, params: Params) -> Claims:
    # Users are cluster-wide: the last-admin rule needs to see every role change in order.
    return Claims(cluster=True)


def check(state, params: Params) -> None:
    if not is_simple_name(params.name):
        raise PrereqError(WRONG_INPUT, f"Invalid user name '{params.name}': use lower-case letters, digits, ._-")
    _common.role(params.role)
    if params.name in state.users:
        raise PrereqError(ALREADY_EXISTS, f"User '{params.name}' already exists; "
                                          f"use 'cairn user set-role {params.name} ROLE' to change its role")


def plan(state, params: Params) -> Plan:
    return one_step(f"adding user {params.name} ({params.role})", ev.UserAdded(params.name, params.role))
