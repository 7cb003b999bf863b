"""Remove tags from the cluster, a node, a group or an instance; every tag named must be there."""

from dataclasses import dataclass

from appliance.model import events as ev
from appliance.model.errors import UNKNOWN_ENTITY, PrereqError
from ops import _common
from ops.base import Claims, Plan, one_step, no_prepare

NAME = "tags_remove"
OPCODE = "TAGS_DEL"
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
    missing = [tag for tag in _common.tags(params.tags) if tag not in current]
    if missing:
        raise PrereqError(UNKNOWN_ENTITY, f"Tag(s) {', '.join(missing)} not found on {params.kind} {name}; "
                                          f"'cairn {params.kind} list-tags' shows its tags")


def plan(state, params: Params) -> Plan:
    target, name, _ = _common.tag_target(state, params.kind, params.target)
    return one_step(f"removing tags from {params.kind} {name}",
                    ev.TagsRemoved(params.kind, target, _common.tags(params.tags)))
