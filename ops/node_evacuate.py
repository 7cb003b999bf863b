"""Move every instance off a node (Ganeti's gnt-node evacuate): one follow-up job per instance.

`prepare` asks hail's node-evacuate on the state the job is planned against (or, with a
new secondary node given, replaces every secondary with it) and keeps the answer in
the params, so the moves are committed with the plan and a new leader never chooses
again. The plan returns ResultWithJobs: per instance a migration (failing over an
instance that is not running) for a primary, a replace-disks for a secondary, or
hail's three steps (replace the secondary, migrate, replace the secondary) to move
both nodes in `all` mode. Like Ganeti, the whole evacuation is refused when any
instance cannot move.
"""

import random
from dataclasses import dataclass, replace

from appliance.model.errors import INSUFFICIENT_RESOURCES, WRONG_INPUT, PrereqError
from ops import _allocator as allocator
from ops import _common
from ops.base import Claims, Plan, ResultWithJobs

NAME = "node_evacuate"
OPCODE = "NODE_EVACUATE"
ROLE = "operator"
DRAIN_EXEMPT = False
BEFORE_INIT = False
REFERENCES = {"node": "node", "remote_node": "node"}


@dataclass(frozen=True)
class Params:
    node: str
    mode: str = "all"             # all, primary-only or secondary-only (Ganeti's evacuation modes)
    iallocator: str = ""          # "" or "hail": hail chooses where each instance goes
    remote_node: str = ""         # the new secondary of every secondary instance (secondary-only)
    jobs: tuple = ()              # filled in by prepare: the follow-up jobs
    failed: tuple = ()            # filled in by prepare: (instance, why) for what cannot move


def prepare(state, params: Params, rng: random.Random) -> Params:
    """Choose every move now (hail, or the given new secondary), so that the choice is committed with the plan."""
    if params.mode not in allocator.EVACUATION_MODES:
        raise PrereqError(WRONG_INPUT, f"Unknown evacuation mode '{params.mode}'; use "
                                       f"{', '.join(allocator.EVACUATION_MODES)}")
    if params.iallocator and params.remote_node:
        raise PrereqError(WRONG_INPUT, "Give either an iallocator (-I hail) or a new node (-n NODE), not both")
    node = _common.node(state, params.node)
    if params.remote_node:
        return replace(params, jobs=_onto(state, node, params), failed=())
    try:
        allocator.check_allocator(params.iallocator or "hail")
        evacuation = allocator.evacuate(state, node.id, params.mode)
    except ValueError as error:  # AllocatorError is none; an opcode Cairn cannot run, or a bad name, is
        raise PrereqError(WRONG_INPUT, str(error)) from None
    return replace(params, jobs=evacuation.jobs, failed=evacuation.failed)


def _onto(state, node, params: Params) -> tuple:
    """One replace-disks job per secondary instance of the node, onto the given node."""
    if params.mode != "secondary-only":
        raise PrereqError(WRONG_INPUT, f"A new node (-n) replaces secondaries only, not in mode '{params.mode}'; "
                                       "use secondary-only (--secondary-only), or -I hail to move primaries too")
    target = _common.node(state, params.remote_node)
    if target.id == node.id:
        raise PrereqError(WRONG_INPUT, f"Node {node.name} cannot be its own new secondary; pick another node")
    return tuple(({"op": "instance_replace_disks", "params": {"instance": name, "node": target.name}},)
                 for name in allocator.evacuated_instances(state, node.id, "secondary-only"))


def claims(state, params: Params) -> Claims:
    nodes = {_common.claim_key(state, "node", params.node)}
    if params.remote_node:
        nodes.add(_common.claim_key(state, "node", params.remote_node))
    return Claims(shared_nodes=frozenset(nodes))


def check(state, params: Params) -> None:
    node = _common.node(state, params.node)
    if params.failed:
        reasons = "; ".join(f"{name} ({why})" for name, why in params.failed)
        raise PrereqError(INSUFFICIENT_RESOURCES, f"Unable to evacuate instances {reasons}; move them by hand "
                                                  f"('cairn instance migrate', 'cairn instance replace-disks') "
                                                  f"or free resources, then evacuate {node.name} again")
    if params.remote_node:
        target = _common.node(state, params.remote_node)
        _common.vm_capable(target, "secondary")


def plan(state, params: Params) -> Plan:
    node = _common.node(state, params.node)
    summary = f"{len(params.jobs)} instance(s) to move off {node.name} ({params.mode})"
    return Plan(steps=(), result=ResultWithJobs(tuple(params.jobs), summary))
