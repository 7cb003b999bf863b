"""`cairn balance -t FILE`: hbal's run on a text-format cluster, producing hbal's key output lines.

The CLI only parses options and prints what `run` emits.
"""

from fastpath import engine_class
from fastpath.balance import BalanceOptions, balance, commands, jobsets, lower_bound, move_line
from fastpath.htools_text import parse, write
from fastpath.model import Cluster
from fastpath.record import field, record
from fastpath.spec import Spec, flatten


class HbalError(Exception):
    """A fatal error with hbal's exit code 1."""


@record
class HbalRequest:
    """What one balance run was asked for."""

    text: str
    options: BalanceOptions = field(default_factory=BalanceOptions)
    offline: list[str] = field(default_factory=list)
    group: str | None = None
    print_commands: bool = False
    save_prefix: str | None = None
    exclusion_tags: list[str] = field(default_factory=list)
    ignore_dynu: bool = False
    implementation: str = "c"
    select_instances: list[str] = field(default_factory=list)
    exclude_instances: list[str] = field(default_factory=list)
    max_cpu: float | None = None
    min_disk: float | None = None
    utilisation: str | None = None  # the text of hbal's -U file: lines "instance cpu mem disk net"


# A number as hbal's `read` takes it: decimal with optional fraction and exponent, or hex / octal.
_NUMBER = r"-?(?:\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|0[xX][0-9a-fA-F]+|0[oO][0-7]+)"


def parse_utilisation(text: str) -> dict[str, tuple[float, float, float, float]]:
    """hbal's -U file: per instance (cpu, mem, disk, net) load; a later line for a name wins.

    hbal's rules: five fields separated by single spaces, numbers as Haskell reads them. Unlike
    hbal, NaN and infinities are refused (hbal takes them and prints NaN scores)."""
    import re  # here, not at the top: importing re (and enum) costs every balance process ~8 ms

    pattern = re.compile(_NUMBER)
    loads = {}
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split(" ")
        if len(fields) != 5:
            raise HbalError(f"can't parse utilisation data: Cannot parse line {line!r} (line {number}); write "
                            "'instance cpu mem disk net', separated by single spaces")
        values = []
        for value in fields[1:]:
            if not pattern.fullmatch(value):
                raise HbalError(f"can't parse utilisation data: {fields[0]}: cannot parse string '{value}' "
                                f"(line {number}); write a finite number such as 0.5 or 12")
            values.append(float(int(value, 0)) if value.lstrip("-")[:2].lower() in ("0x", "0o") else float(value))
        loads[fields[0]] = tuple(values)
    return loads


def select_group(cluster: Cluster, wanted: str | None):
    """The group to balance: the only one, or the one named by -G."""
    if wanted is None:
        if len(cluster.groups) > 1:
            names = ", ".join(g.name for g in cluster.groups)
            raise HbalError(f"Found multiple node groups: {names}. Aborting; choose one with -G GROUP.")
        if not cluster.groups:
            raise HbalError("the cluster has no node group; add one to the first section of the file")
        return cluster.groups[0]
    try:
        return cluster.find_group(wanted)
    except KeyError:
        raise HbalError(f"unknown node group '{wanted}'; use one of "
                        f"{', '.join(g.name for g in cluster.groups)}") from None


def n1_failures(spec: Spec, group: int) -> tuple[set[int], int]:
    """(online nodes failing N+1 at load, distinct instances on them), as hbal's initial check reports."""
    nodes, inst = spec.nodes, spec.instances
    peers: list[dict[int, int]] = [dict() for _ in range(spec.n_nodes)]
    real = [i for i in range(spec.n_instances) if i not in set(spec.forthcoming)]  # htools' pList/sList
    for i in real:
        p, s = inst["pnode"][i], inst["snode"][i]
        if p >= 0 and s >= 0:
            peers[s][p] = peers[s].get(p, 0) + inst["sec_mem"][i]
    bad = {k for k in range(spec.n_nodes) if nodes["group"][k] == group and not nodes["offline"][k]
           and nodes["f_mem"][k] < max(peers[k].values(), default=0)}
    instances = sum(1 for i in real if inst["pnode"][i] in bad or inst["snode"][i] in bad)
    return bad, instances


def policy_violations(spec: Spec, group: int, n1_bad: set[int]) -> int:
    """Nodes of the group over their vCPU ratio or spindle limit, as hbal counts them: offline ones
    included, those already failing N+1 (`n1_bad`) left out (Hbal.hs checkGroup)."""
    nodes, inst = spec.nodes, spec.instances
    cpus = list(nodes["node_cpus"])
    spindles = [0] * spec.n_nodes
    forthcoming = set(spec.forthcoming)  # htools' real figures leave them out
    for i in range(spec.n_instances):
        if i in forthcoming:
            continue
        p, s = inst["pnode"][i], inst["snode"][i]
        if p >= 0:
            cpus[p] += inst["vcpus"][i] * inst["uses_cpu"][i]
            spindles[p] += inst["spindle_use"][i]
        if s >= 0:
            spindles[s] += inst["spindle_use"][i]
    return sum(1 for k in range(spec.n_nodes) if nodes["group"][k] == group and k not in n1_bad
               and (spindles[k] > nodes["hi_spindles"][k] or cpus[k] / nodes["t_cpu"][k] > nodes["vcpu_ratio"][k]))


def _apply_limits(spec: Spec, request: HbalRequest) -> None:
    """--select-instances / --exclude-instances, --max-cpu and --min-disk, applied to the arrays."""
    names = set(spec.instance_names)
    for name in request.select_instances + request.exclude_instances:
        if name not in names:
            raise HbalError(f"Unknown instance '{name}'; check the names given to --select/--exclude-instances")
    for i, name in enumerate(spec.instance_names):
        if (request.select_instances and name not in request.select_instances) or name in request.exclude_instances:
            spec.instances["movable"][i] = 0
    if request.max_cpu is not None:
        spec.nodes["vcpu_ratio"] = [request.max_cpu] * spec.n_nodes
    if request.min_disk is not None:
        spec.nodes["lo_dsk"] = [request.min_disk * t for t in spec.nodes["t_dsk"]]


def _balanced_copy(cluster: Cluster, spec: Spec, engine, forthcoming: dict[int, tuple[int, int]]) -> Cluster:
    # Like hbal's -S, the saved file keeps each node's load-time free memory and updates free disk;
    # forthcoming instances (their nodes in `forthcoming`) take no real disk.
    import copy  # only -S needs it; every balance process would pay its import

    out = copy.deepcopy(cluster)
    names = spec.node_names
    by_name = {n.name: n for n in out.nodes}
    pending = set(spec.forthcoming)
    for i, inst in enumerate(out.instances):
        real = i not in pending
        p, s = engine.nodes_of(i) if real else forthcoming.get(i, (spec.instances["pnode"][i],
                                                                     spec.instances["snode"][i]))
        for name in (inst.pnode, inst.snode):
            if name and real and spec.instances["dsk"][i]:
                by_name[name].f_dsk += inst.dsk
        inst.pnode, inst.snode = names[p], names[s] if s >= 0 else ""
        for name in (inst.pnode, inst.snode):
            if name and real and spec.instances["dsk"][i]:
                by_name[name].f_dsk -= inst.dsk
    return out


def _load(request: HbalRequest) -> tuple[Cluster, object, Spec, int]:
    """The cluster (with -U loads), the group to balance, the flat arrays and the group's index."""
    loads = parse_utilisation(request.utilisation) if request.utilisation is not None else {}
    cluster = parse(request.text)
    if not request.ignore_dynu:
        for inst in cluster.instances:
            inst.util = loads.get(inst.name, inst.util)  # names the file lists but the cluster lacks are ignored
    group = select_group(cluster, request.group)
    unknown = [n for n in request.offline if n not in {node.name for node in cluster.nodes}]
    if unknown:
        raise HbalError(f"unknown node(s) given to -O: {', '.join(unknown)}; check the names in the file")
    index = {g.uuid: k for k, g in enumerate(cluster.groups)}
    spec = flatten(cluster, index, request.exclusion_tags, set(request.offline), request.ignore_dynu)
    _apply_limits(spec, request)
    return cluster, group, spec, index[group.uuid]


def _initial_check(request: HbalRequest, spec: Spec, gidx: int, group, emit, report: dict) -> None:
    """hbal's lines about the group, its N+1 failures and policy violations."""
    members = [k for k in range(spec.n_nodes) if spec.nodes["group"][k] == gidx]
    own = [i for i in range(spec.n_instances) if spec.instances["pnode"][i] in set(members)]
    emit(f"Group size {len(members)} nodes, {len(own)} instances")
    emit(f"Selected node group: {group.name}")
    bad_nodes, bad_instances = n1_failures(spec, gidx)
    report.update(group_nodes=len(members), group_instances=len(own),
                  n1_bad_nodes=[spec.node_names[k] for k in sorted(bad_nodes)], n1_bad_instances=bad_instances)
    emit(f"Initial check done: {len(bad_nodes)} bad nodes, {bad_instances} bad instances.")
    if bad_nodes:
        emit("Cluster is not N+1 happy, continuing but no guarantee that the cluster will end N+1 happy.")
    violating = policy_violations(spec, gidx, bad_nodes)
    report["policy_violating_nodes"] = violating
    if violating:
        emit(f"The cluster contains {violating} policy-violating nodes.")
        if request.options.ignore_soft_errors:
            emit("Continuing, ignoring soft errors.")
        else:
            emit("Continuing, but the set of moves might be too restricted; consider using the "
                 "--ignore-soft-errors option.")


def run(request: HbalRequest, emit, report: dict | None = None) -> dict[str, str]:
    """Balance the cluster of `request`, calling emit(line) as hbal would print; returns files to save.

    `report`, if given, is filled with the same facts for scripts (`cairn balance --output json`):
    sizes, group, initial N+1 check, scores, the outcome (empty, balanced, improved, no-moves),
    the moves with their jobsets (moves of a jobset touch disjoint nodes) and the gnt-instance
    commands of each move."""
    report = {} if report is None else report
    cluster, group, spec, gidx = _load(request)
    report.update(nodes=len(cluster.nodes), instances=len(cluster.instances), group=group.name)
    if not cluster.instances:
        emit("Cluster is empty, exiting.")
        report.update(outcome="empty", moves=[])
        return {}
    emit(f"Loaded {len(cluster.nodes)} nodes, {len(cluster.instances)} instances")
    _initial_check(request, spec, gidx, group, emit, report)
    engine = engine_class(request.implementation)(spec)
    initial = engine.score(gidx)
    emit(f"Initial score: {initial:.8f}")
    report["initial_score"] = report["final_score"] = round(initial, 8)
    name_width = max(len(n) for n in spec.instance_names)
    pair_width = 2 * max(len(n) for n in spec.node_names) + 1
    nodes = [engine.nodes_of(i) for i in range(spec.n_instances)]
    bound = lower_bound(spec, gidx, [p for p, _ in nodes], [s for _, s in nodes])
    report["lower_bound"] = round(bound, 8)
    if initial - bound < request.options.epsilon:
        report.update(outcome="balanced", moves=[])
        emit(f"Cluster is already well balanced (initial score {initial:.6f},")
        emit(f"optimum score due to N+1 reservations {_haskell_g(bound)},")
        emit(f"minimum score {request.options.epsilon:.6f}).")
        emit("Nothing to do, exiting")
        return {}
    emit("Trying to minimize the CV...")
    result = balance(engine, spec, gidx, request.options,
                     on_move=lambda k, m: emit(move_line(k, m, name_width, pair_width)))
    if result.moves:
        emit(f"Cluster score improved from {result.initial:.8f} to {result.final:.8f}")
    else:
        emit("No solution found")
    emit(f"Solution length={len(result.moves)}")
    _report_moves(report, cluster, result)
    if request.print_commands and result.moves:
        _emit_commands(cluster, result.moves, emit)
    if request.save_prefix:
        return {f"{request.save_prefix}.original": write(cluster),
                f"{request.save_prefix}.balanced": write(_balanced_copy(cluster, spec, engine, result.forthcoming))}
    return {}


def _report_moves(report: dict, cluster: Cluster, result) -> None:
    running = {i.name: i.status == "running" for i in cluster.instances}
    jobset_of = {id(move): number for number, jobset in enumerate(jobsets(result.moves), start=1) for move in jobset}
    report["outcome"] = "improved" if result.moves else "no-moves"
    report["final_score"] = round(result.final, 8)
    report["moves"] = [{"step": step, "instance": move.instance, "from": [n for n in move.old if n],
                        "to": [n for n in move.new if n], "score": round(move.score, 8), "move": move.code,
                        "jobset": jobset_of[id(move)], "commands": commands(move, running[move.instance])}
                       for step, move in enumerate(result.moves, start=1)]


def _haskell_g(value: float) -> str:
    """A number the way hbal's printf %g shows it: plain from 0.1 up, else mantissa e exponent (1.1e-2)."""
    if value == 0 or 0.1 <= abs(value) < 1e7:
        return f"{value:.6f}".rstrip("0").rstrip(".") if value else "0.0"
    mantissa, exponent = f"{value:.6e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _emit_commands(cluster: Cluster, moves, emit) -> None:
    running = {i.name: i.status == "running" for i in cluster.instances}
    emit("")
    emit("Commands to run to reach the above solution:")
    for number, jobset in enumerate(jobsets(moves), start=1):
        emit("  ")
        emit(f"  echo jobset {number}, {len(jobset)} jobs")
        for k, move in enumerate(jobset, start=1):
            emit(f"    echo job {number}/{k}")
            for command in commands(move, running[move.instance]):
                emit(f"    {command}")
