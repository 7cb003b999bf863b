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
    # SHA-256 (hex) of the user's first bearer token (the CLI makes the token and shows it once).
    credential_hash: str = ""


def claims(state, params: Params) -> Claims:
    # Users are cluster-wide: the last-admin rule needs to see every role change in order.
    return Claims(cluster=True)


def check(state, params: Params) -> None:
    if not is_simple_name(params.name):
        raise PrereqError(WRONG_INPUT, f"Invalid user name '{params.name}': use lower-case letters, digits, ._-")
    if params.name.startswith("cairn-"):
        raise PrereqError(WRONG_INPUT, f"Invalid user name '{params.name}': names starting with 'cairn-' are the "
                                       "cluster's own actors; choose another name")
    _common.role(params.role)
    if params.name in state.users:
        raise PrereqError(ALREADY_EXISTS, f"User '{params.name}' already exists; "
                                          f"use 'cairn user set-role {params.name} ROLE' to change its role")
    if params.credential_hash:
        _common.credential_hash(params.credential_hash)
        if params.credential_hash in state.credentials:
            raise PrereqError(ALREADY_EXISTS, "That token is already in use; make a new one")


def plan(state, params: Params) -> Plan:
    events = [ev.UserAdded(params.name, params.role)]
    if params.credential_hash:
        events.append(ev.CredentialAdded(params.name, params.credential_hash, "first token"))
    return one_step(f"adding user {params.name} ({params.role})", *events)
