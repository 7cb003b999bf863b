"""Moving existing instances for the iallocator: relocate, node-evacuate and change-group, with Ganeti opcodes.

Pure stdlib; `fastpath.iallocator` reads the request and calls these with its `fastpath.session.Session`.
"""

from fastpath.allocate import allocate
from fastpath.forthmove import ForthcomingSearch
from fastpath.session import group_text, network_check, policy_figures, policy_refusals
from fastpath.spec import FAIL_NAMES, FAILOVER, FAILOVER_TO_ANY, KIND_MIRRORED, KIND_SHARED, OK, REPLACE_SECONDARY


def replace_disks(instance: str, node: str) -> dict:
    """The opcode that gives an instance a new secondary."""
    return {"OP_ID": "OP_INSTANCE_REPLACE_DISKS", "instance_name": instance, "early_release": False,
            "ignore_ipolicy": False, "mode": "replace_new_secondary", "disks": [], "remote_node": node}


def migrate(instance: str, target: str | None = None) -> dict:
    """The opcode that moves an instance's primary (to its secondary, or to `target` for shared storage)."""
    op = {"OP_ID": "OP_INSTANCE_MIGRATE", "instance_name": instance}
    if target is not None:
        op["target_node"] = target  # hail prints it second
    return {**op, "allow_runtime_changes": False, "ignore_ipolicy": False, "cleanup": False, "allow_failover": True,
            "ignore_hvversions": True}


def failover(instance: str, target: str | None = None) -> dict:
    """The opcode hail gives a forthcoming instance in place of a migration (a failover, `target` as for migrate)."""
    op = {"OP_ID": "OP_INSTANCE_FAILOVER", "instance_name": instance, "shutdown_timeout": 120,
          "ignore_consistency": False}
    if target is not None:
        op["target_node"] = target  # where Ganeti's opcode lists it
    return {**op, "ignore_ipolicy": False, "cleanup": False}


def _primary_op(session, inst: int, target: int | None = None) -> dict:
    """The opcode that moves an instance's primary: a migration, a failover for a forthcoming instance."""
    name = session.spec.instance_names[inst]
    node = None if target is None else session.names[target]
    return failover(name, node) if inst in session.moves.forth else migrate(name, node)


def _targets(session, inst: int, excluded: set[int], group: int | None = None):
    """The candidate targets of a one-node move, in node order: online nodes of `group` (default:
    the instance's) other than its own and the excluded ones."""
    spec = session.spec
    p, s = session.moves.nodes_of(inst)
    group = session.group_of_node(p) if group is None else group
    return [t for t in range(spec.n_nodes) if spec.nodes["group"][t] == group and not spec.nodes["offline"][t]
            and t not in (p, s) and t not in excluded]


def _evaluate(session, inst: int, kind: int, target: int, group: int | None = None) -> tuple[int, float]:
    """(status, score over `group`, default the instance's) of one move."""
    group = session.group_of_node(session.moves.nodes_of(inst)[0]) if group is None else group
    return session.moves.eval_move(group, inst, kind, target, 8 if session.options.ignore_soft_errors else 0)


def best_target(session, inst: int, kind: int, excluded: set[int] = frozenset(),
                group: int | None = None) -> tuple[int, float] | None:
    """The target node with the lowest score after the move (even if the score gets worse); of equal
    scores the last node wins, as in hail's evacuation fold. With `group` (change-group), the
    targets are that group's nodes and the score is over it (evacOneNodeOnly's gdx)."""
    best = None
    for t in _targets(session, inst, excluded, group):
        status, score = _evaluate(session, inst, kind, t, group)
        if status == OK and (best is None or score <= best[1]):
            best = (t, score)
    return best


def no_target_text(session, inst: int, kind: int, excluded: set[int] = frozenset(), group: int | None = None) -> str:
    """hail's text when no target fits a one-node move: each candidate's failure, in node order
    (nothing after the colon when there is no candidate at all)."""
    failures = "".join(f" Node {session.names[t]} failed: {FAIL_NAMES[_evaluate(session, inst, kind, t, group)[0]]};"
                       for t in _targets(session, inst, excluded, group))
    return f"Can't find any good node: {failures}"


def _template_error(session, inst: int, mode: str) -> str | None:
    """hail's refusal of an instance its template cannot move in `mode` (nodeEvacInstance), or None."""
    template = session.cluster.instances[inst].template
    if template in ("plain", "file"):
        return f"Instances of type {template} cannot be relocated"
    if template == "drbd":
        return None
    if mode == "secondary-only":
        return f"Instances with disk template '{template}' can't execute change secondary"
    if template == "diskless":
        return "Can't relocate/evacuate non-mirrored instances"
    return None


def evacuate_one(session, inst: int, mode: str, groups: list[int] | None = None,
                 excluded: set[int] = frozenset()):
    """Move one instance; returns (new node indices, opcodes) or an error message."""
    engine, spec = session.moves, session.spec
    name = spec.instance_names[inst]
    kind = spec.instances["kind"][inst]
    p, s = engine.nodes_of(inst)
    refusal = _template_error(session, inst, mode)
    if refusal is not None:
        return refusal
    if mode == "secondary-only":
        best = best_target(session, inst, REPLACE_SECONDARY, excluded)
        if best is None:
            return no_target_text(session, inst, REPLACE_SECONDARY, excluded)
        engine.apply_move(inst, REPLACE_SECONDARY, best[0])
        return engine.nodes_of(inst), [replace_disks(name, session.names[best[0]])]
    if mode == "primary-only":
        if kind == KIND_MIRRORED:
            status, _ = engine.eval_move(session.group_of_node(p), inst, FAILOVER, -1,
                                         8 if session.options.ignore_soft_errors else 0)
            if status != OK:
                return FAIL_NAMES[status]
            engine.apply_move(inst, FAILOVER, -1)
            return engine.nodes_of(inst), [_primary_op(session, inst)]
        best = best_target(session, inst, FAILOVER_TO_ANY, excluded)
        if best is None:
            return no_target_text(session, inst, FAILOVER_TO_ANY, excluded)
        engine.apply_move(inst, FAILOVER_TO_ANY, best[0])
        return engine.nodes_of(inst), [_primary_op(session, inst, best[0])]
    if kind == KIND_SHARED:
        group = groups[0] if groups is not None else None
        best = best_target(session, inst, FAILOVER_TO_ANY, excluded, group)
        if best is None:
            return no_target_text(session, inst, FAILOVER_TO_ANY, excluded, group)
        engine.apply_move(inst, FAILOVER_TO_ANY, best[0])
        return engine.nodes_of(inst), [_primary_op(session, inst, best[0])]
    if groups is None:
        return _move_both(session, inst, [session.group_of_node(p)], excluded)
    return _move_both(session, inst, groups, excluded, keep_secondary=True)


def _try_pair_prefix(session, inst: int, t1: int, flags: int) -> str | None:
    """Replace the secondary with t1 and fail over (hail's first two steps); the failure, or None."""
    engine = session.moves
    group = session.group_of_node(engine.nodes_of(inst)[0])
    status, _ = engine.eval_move(group, inst, REPLACE_SECONDARY, t1, flags)
    if status != OK:
        return f"Changing secondary to new primary: {FAIL_NAMES[status]}"
    engine.apply_move(inst, REPLACE_SECONDARY, t1)
    status, _ = engine.eval_move(group, inst, FAILOVER, -1, flags)
    if status != OK:
        return f"Failing over to new primary: {FAIL_NAMES[status]}"
    engine.apply_move(inst, FAILOVER, -1)
    return None


def _move_both(session, inst: int, groups: list[int], excluded: set[int], keep_secondary: bool = False):
    """New primary and secondary for a drbd instance: for every pair, replace secondary, migrate, replace
    secondary, each step checked; keep the pair with the lowest group score (last of equals).

    With `keep_secondary` (change-group) the final secondary may be the instance's current secondary,
    as in hail, whose change-group leaves out only offline nodes: an instance split across groups can
    end on the node it already uses in the target group. Cairn does not try that node as the new
    primary (a secondary replaced by itself), which hail would."""
    engine, spec = session.moves, session.spec
    name = spec.instance_names[inst]
    p, s = engine.nodes_of(inst)
    flags = 8 if session.options.ignore_soft_errors else 0
    saved = engine.touched_flags()
    best, last_failure = None, None
    for group in groups:
        finals = [k for k in range(spec.n_nodes) if spec.nodes["group"][k] == group and not spec.nodes["offline"][k]
                  and k != p and (k != s or keep_secondary) and k not in excluded]
        avail = [k for k in finals if k != s]
        for t1 in avail:
            failure = _try_pair_prefix(session, inst, t1, flags)
            for t2 in finals:
                if t2 == t1:
                    continue
                if failure is not None:
                    last_failure = failure
                    continue
                status, score = engine.eval_move(group, inst, REPLACE_SECONDARY, t2, flags)
                if status != OK:
                    last_failure = f"Changing secondary to final secondary: {FAIL_NAMES[status]}"
                elif best is None or score <= best[2]:
                    best = (t1, t2, score)
            engine.restore(inst, p, s, saved)
    if best is None:
        reason = f"Allocation failed: {last_failure}" if last_failure else "no nodes available"
        return f"Can't find any good nodes for relocation: {reason}"
    t1, t2, _ = best
    engine.apply_move(inst, REPLACE_SECONDARY, t1)
    engine.apply_move(inst, FAILOVER, -1)
    engine.apply_move(inst, REPLACE_SECONDARY, t2)
    return (t1, t2), [replace_disks(name, session.names[t1]), _primary_op(session, inst),
                      replace_disks(name, session.names[t2])]


def target_group(session, inst: int, groups: list[int]):
    """hail's change-group first step: the group the instance would be allocated to, or the failure text."""
    if not groups:
        # hail prints its internal records here; this names the cause and the fix.
        return ("no groups for evacuation: every group allowed (target_groups, or all groups when it is "
                "empty) holds the primary of an instance of this request; name another group in target_groups")
    engine, spec = session.engine, session.spec
    required = 2 if spec.instances["kind"][inst] == KIND_MIRRORED else 1
    # Like hail, the instance stays where it is while a copy of it is tried in the target groups.
    values = {name: column[inst] for name, column in spec.instances.items()}
    values["pnode"] = values["snode"] = -1
    session.spare = engine.define_instance(values, session.spare)
    session.copy_of[session.spare] = inst
    instance = session.cluster.instances[inst]
    figures = policy_figures(instance)
    refused = policy_refusals(session, *figures) if figures else None
    # hail allocates a forthcoming instance as forthcoming: only the forthcoming checks and figures.
    search = ForthcomingSearch(session.moves, values) if inst in session.moves.forth else None
    chosen, outcomes = allocate(engine, spec, session.cluster, session.spare, required, groups, None,
                                session.options.ignore_soft_errors, session.options.capacity_checks,
                                unconnected=network_check(session.cluster, instance.networks, instance.name),
                                refused_primaries=refused, search=search)
    if chosen is None:
        return ", ".join(group_text(o) for o in outcomes)
    return chosen.index


def evacuated_nodes(session, names: list[str], mode: str) -> set[int]:
    """The nodes being emptied (never targets): secondaries, primaries or both of the listed instances."""
    nodes = set()
    for name in names:
        if name not in session.spec.instance_names:
            continue
        p, s = session.moves.nodes_of(session.spec.instance_names.index(name))
        if mode in ("primary-only", "all"):
            nodes.add(p)
        if mode in ("secondary-only", "all") and s >= 0:
            nodes.add(s)
    return nodes


def evacuate_many(session, names: list[str], mode: str, groups: list[int] | None = None) -> dict:
    """The [moved, failed, jobs] answer for node-evacuate and change-group."""
    moved, failed, jobs = [], [], []
    index = {name: k for k, name in enumerate(session.spec.instance_names)}
    excluded = evacuated_nodes(session, names, mode) if groups is None else set()
    for name in names:
        if name not in index:
            failed.append([name, f"Unknown instance '{name}'"])
            continue
        targets = groups
        if groups is not None:
            chosen = target_group(session, index[name], groups)
            if isinstance(chosen, str):
                failed.append([name, chosen])
                continue
            targets = [chosen]
        outcome = evacuate_one(session, index[name], mode, targets, excluded)
        if isinstance(outcome, str):
            failed.append([name, outcome])
            continue
        (np_, ns), ops = outcome
        group = session.cluster.groups[session.group_of_node(np_)].name
        moved.append([name, group, [session.names[k] for k in (np_, ns) if k >= 0]])
        jobs.append(ops)
    info = f"{len(failed)} instances failed to move and {len(moved)} were moved successfully"
    return {"success": True, "info": f"Request successful: {info}", "result": [moved, failed, jobs]}
