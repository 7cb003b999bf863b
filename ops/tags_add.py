"""Add tags to the cluster, a node, a group or an instance; tags already there are kept, not doubled."""

from dataclasses import dataclass

from appliance.model import events as ev
from appliance.model.errors import WRONG_INPUT, PrereqError
from ops import _common
from ops.base import Claims, Plan, one_step, no_prepare

NAME = "tags_add"
OPCODE = "TAGS_SET"
ROLE = "operator"
DRAIN_EXEMPT = False
BEFORE_INIT = False
REFERENCES = {"target": "tag_target"}
prepare = no_prepare


@dataclass(frozen=True)
class Params:
    kind: str
    tags: tuple
    target: str = ""


def claims(state, params: Params) -> Claims:
    return _common.tag_claims(state, params.kind, params.target)


def check(state, params: Params) -> None:
    _, name, current = _common.tag_target(state, params.kind, params.target)
    wanted = _common.tags(params.tags)
    total = len(set(current) | set(wanted))
    if total > _common.MAX_TAGS:
        raise PrereqError(WRONG_INPUT, f"Too many tags on {params.kind} {name}: {total}, at most "
                                       f"{_common.MAX_TAGS}; remove some first")


def plan(state, params: Params) -> Plan:
    target, name, current = _common.tag_target(state, params.kind, params.target)
    new = tuple(tag for tag in _common.tags(params.tags) if tag not in current)
    if not new:
        return Plan(steps=(), result=f"{params.kind} {name} already has these tags")
    return one_step(f"adding tags to {params.kind} {name}", ev.TagsAdded(params.kind, target, new))
