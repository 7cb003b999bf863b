"""hbal's greedy balancing loop over an engine, its stop rules, move lines, job sets and commands.

Pure stdlib; the engine (C or pure twin) does the scoring and the search.
"""

from fastpath.record import field, record
from fastpath.spec import (EVAC_MODE, FAILOVER, FAILOVER_AND_REPLACE, FAILOVER_TO_ANY, IGNORE_SOFT, NO_DISK_MOVES,
                           NO_INSTANCE_MOVES, REPLACE_AND_FAILOVER, REPLACE_PRIMARY, REPLACE_SECONDARY,
                           FORTH_MOVES, KIND_MIRRORED, KIND_SHARED, OK, RESTRICTED_MIGRATION, Spec)


@record
class BalanceOptions:
    """hbal's balancing options, with hbal's defaults."""

    max_moves: int = -1
    min_gain: float = 0.01
    min_gain_limit: float = 0.1
    epsilon: float = 1e-9
    no_disk_moves: bool = False
    no_instance_moves: bool = False
    evac_mode: bool = False
    ignore_soft_errors: bool = False
    restricted_migration: bool = False

    def flags(self) -> int:
        """The engine's step flags for these options."""
        return ((NO_DISK_MOVES if self.no_disk_moves else 0) | (NO_INSTANCE_MOVES if self.no_instance_moves else 0)
                | (EVAC_MODE if self.evac_mode else 0) | (IGNORE_SOFT if self.ignore_soft_errors else 0)
                | (RESTRICTED_MIGRATION if self.restricted_migration else 0))


@record
class Move:
    """One accepted move, with names, as hbal prints it."""

    instance: str
    old: tuple[str, str]
    new: tuple[str, str]
    score: float
    code: str
    kind: int
    index: int


@record
class BalanceResult:
    """The outcome of a balancing run."""

    initial: float
    final: float
    lower_bound: float
    moves: list[Move] = field(default_factory=list)
    already_balanced: bool = False
    forthcoming: dict[int, tuple[int, int]] = field(default_factory=dict)  # their final (primary, secondary)


def move_code(kind: int, target: str) -> str:
    """hbal's short code for a move kind."""
    return {FAILOVER: "f", REPLACE_SECONDARY: f"r:{target}", REPLACE_AND_FAILOVER: f"r:{target} f",
            REPLACE_PRIMARY: f"f r:{target} f", FAILOVER_AND_REPLACE: f"f r:{target}",
            FAILOVER_TO_ANY: f"fa:{target}"}[kind]


def lower_bound(spec: Spec, group: int, pnode: list[int], snode: list[int]) -> float:
    """The score below which hbal stops: the reserve memory the secondaries need, spread at best."""
    nodes = [k for k in range(spec.n_nodes) if spec.nodes["group"][k] == group and not spec.nodes["offline"][k]]
    if len(nodes) < 2:
        return 0.0
    total = sum(spec.nodes["t_mem"][k] for k in nodes)
    rest = total - max(spec.nodes["t_mem"][k] for k in nodes)
    reserve = sum(spec.instances["sec_mem"][i] for i in range(spec.n_instances)
                  if snode[i] >= 0 and spec.nodes["group"][snode[i]] == group)
    return 0.25 * (reserve / rest - reserve / total) if rest > 0 else 0.0


def balance(engine, spec: Spec, group: int, options: BalanceOptions, on_move=None) -> BalanceResult:
    """Greedy steps until no move helps, the limit is hit or the score reaches the lower bound."""
    names = spec.node_names
    current = engine.score(group)
    nodes = [engine.nodes_of(i) for i in range(spec.n_instances)]
    bound = lower_bound(spec, group, [p for p, _ in nodes], [s for _, s in nodes])
    result = BalanceResult(current, current, bound)
    if current - bound < options.epsilon:
        result.already_balanced = True
        return result
    flags = options.flags()
    moves = None
    if spec.forthcoming:
        from fastpath.forthmove import Moves  # only clusters with forthcoming instances need it

        moves = Moves(engine, spec)
    while (options.max_moves < 0 or len(result.moves) < options.max_moves) and current > bound + options.epsilon:
        if moves is not None and engine.native_forth_moves:
            best = engine.best_move(group, flags | FORTH_MOVES)  # the same search with them, in C
        else:
            best = engine.best_move(group, flags)
            if moves is not None:
                best = _with_forthcoming(moves, spec, group, flags, best, current)
        if best is None:
            break
        i, kind, target, value = best
        if not (value < current and (current > options.min_gain_limit or current - value >= options.min_gain)):
            break
        mover = moves or engine
        op, os_ = mover.nodes_of(i)
        mover.apply_move(i, kind, target)
        np_, ns = mover.nodes_of(i)
        move = Move(spec.instance_names[i], (names[op], names[os_] if os_ >= 0 else ""),
                    (names[np_], names[ns] if ns >= 0 else ""), value,
                    move_code(kind, names[target] if target >= 0 else ""), kind, i)
        result.moves.append(move)
        current = value
        if on_move is not None:
            on_move(len(result.moves), move)
    result.final = current
    if moves is not None:
        result.forthcoming = dict(moves.forth)
    return result


def _with_forthcoming(moves, spec: Spec, group: int, flags: int, best, current: float):
    """The best move once hbal's moves of forthcoming instances are counted too: they change only
    the *Forth figures (`fastpath.forthmove`). hbal scans instances in order, each one's moves in
    the engine's order, and keeps a move only if it scores strictly lower, so of equal scores the
    earlier instance wins."""
    nodes = spec.nodes
    value = best[3] if best is not None else current
    for i in sorted(spec.forthcoming):
        p, s = moves.nodes_of(i)
        if p < 0 or not spec.instances["movable"][i] or nodes["group"][p] != group:
            continue
        if s >= 0 and nodes["group"][s] != group:
            continue
        if flags & EVAC_MODE and not (nodes["offline"][p] or (s >= 0 and nodes["offline"][s])):
            continue
        for kind, target in _forthcoming_candidates(spec, group, flags, p, s, spec.instances["kind"][i]):
            status, score = moves.eval_move(group, i, kind, target, flags)
            if status == OK and (score < value or (score == value and best is not None and i < best[0])):
                best, value = (i, kind, target, score), score
    return best


def _forthcoming_candidates(spec: Spec, group: int, flags: int, p: int, s: int, kind: int):
    """hbal's candidate moves of one instance, in the C core's order (`instance_moves`)."""
    nodes = spec.nodes
    targets = [t for t in range(spec.n_nodes) if nodes["group"][t] == group and not nodes["offline"][t]
               and t not in (p, s)]
    if kind == KIND_MIRRORED and s >= 0:
        if not flags & NO_INSTANCE_MOVES and not nodes["offline"][s]:
            yield FAILOVER, -1
        if flags & NO_DISK_MOVES:
            return
        for t in targets:
            yield REPLACE_SECONDARY, t
            if flags & NO_INSTANCE_MOVES or (flags & RESTRICTED_MIGRATION and not nodes["offline"][p]):
                continue
            yield REPLACE_AND_FAILOVER, t
            if nodes["offline"][s]:
                continue
            if not flags & RESTRICTED_MIGRATION:
                yield REPLACE_PRIMARY, t
            yield FAILOVER_AND_REPLACE, t
    elif kind == KIND_SHARED and not flags & NO_INSTANCE_MOVES:
        for t in targets:
            if t != p:
                yield FAILOVER_TO_ANY, t


def move_line(number: int, move: Move, name_width: int, pair_width: int) -> str:
    """One numbered move line in hbal's layout."""
    old = f"{move.old[0]}:{move.old[1]}" if move.old[1] else move.old[0]
    new = f"{move.new[0]}:{move.new[1]}" if move.new[1] else move.new[0]
    return f"  {number:3d}. {move.instance:<{name_width}} {old:<{pair_width}} => {new:<{pair_width}} " \
           f"{move.score:12.8f} a={move.code}"


def jobsets(moves: list[Move]) -> list[list[Move]]:
    """Group moves into sets that touch disjoint nodes; sets run one after another, jobs in a set in parallel."""
    # Like hbal, the greedy grouping scans from the last move back to the first.
    sets: list[list[Move]] = []
    used: set[str] = set()
    for move in reversed(moves):
        touched = {n for n in (*move.old, *move.new) if n}
        if not sets or touched & used:
            sets.append([])
            used = set()
        sets[-1].append(move)
        used |= touched
    return [list(reversed(group)) for group in reversed(sets)]


def commands(move: Move, running: bool) -> list[str]:
    """The gnt-instance commands that carry out one move."""
    failover = f"gnt-instance migrate -f {move.instance}" if running else f"gnt-instance failover -f {move.instance}"
    target = move.code.split(":")[1].split(" ")[0] if ":" in move.code else ""
    replace = f"gnt-instance replace-disks -n {target} {move.instance}"
    return {FAILOVER: [failover], REPLACE_SECONDARY: [replace], REPLACE_AND_FAILOVER: [replace, failover],
            REPLACE_PRIMARY: [failover, replace, failover], FAILOVER_AND_REPLACE: [failover, replace],
            FAILOVER_TO_ANY: [f"gnt-instance migrate -f -n {target} {move.instance}"]}[move.kind]
