"""Remove a user; the last admin cannot be removed, or nobody could manage users again."""

from dataclasses import dataclass

from appliance.model import events as ev
from ops import _common
from ops.base import Claims, Plan, one_step, no_prepare

NAME = "user_remove"
OPCODE = "USER_REMOVE"
ROLE = "admin"
DRAIN_EXEMPT = False
BEFORE_INIT = False
REFERENCES = {}
prepare = no_prepare


@dataclass(frozen=True)
class Params:
    name: str


def claims(state, params: Params) -> Claims:
    return Claims(cluster=True)


def check(state, params: Params) -> None:
    found = _common.user(state, params.name)
    _common.not_last_admin(state, found, "remove")


def plan(state, params: Params) -> Plan:
    return one_step(f"removing user {params.name}", ev.UserRemoved(params.name))
