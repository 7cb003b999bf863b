"""Change a user's role; the last admin cannot be demoted."""

from dataclasses import dataclass

from appliance.model import events as ev
from ops import _common
from ops.base import Claims, Plan, one_step, no_prepare

NAME = "user_set_role"
OPCODE = "USER_SET_ROLE"
ROLE = "admin"
DRAIN_EXEMPT = False
BEFORE_INIT = False
REFERENCES = {}
prepare = no_prepare


@dataclass(frozen=True)
class Params:
    name: str
    role: str


def claims(state, params: Params) -> Claims:
    return Claims(cluster=True)


def check(state, params: Params) -> None:
    found = _common.user(state, params.name)
    _common.role(params.role)
    if params.role != "admin":
        _common.not_last_admin(state, found, "demote")


def plan(state, params: Params) -> Plan:
    if state.users[params.name].role == params.role:
        return Plan(steps=(), result=f"user {params.name} already has role {params.role}")
    return one_step(f"setting the role of user {params.name} to {params.role}", ev.UserRoleSet(params.name, params.role))
