"""Flat arrays of a cluster, shared by the C engine and its pure twin, and the codes both speak.

`flatten(cluster)` turns a parsed `Cluster` into a `Spec`: one list per node and instance field, in
file order, with node and instance references as indices. Both engines take exactly this.
"""

from fastpath.model import LOCAL_STORAGE, MEMORY_STATUSES, MIRRORED, SHARED, TEMPLATES, Cluster
from fastpath.record import field, record

# Move kinds, in the order hbal tries them for one target node.
FAILOVER, REPLACE_SECONDARY, REPLACE_AND_FAILOVER, REPLACE_PRIMARY, FAILOVER_AND_REPLACE, FAILOVER_TO_ANY = range(6)


def new_nodes(kind: int, primary: int, secondary: int, target: int) -> tuple[int, int]:
    """An instance's (primary, secondary) after a move of `kind` to `target`."""
    return {FAILOVER: (secondary, primary), REPLACE_SECONDARY: (primary, target),
            REPLACE_AND_FAILOVER: (target, primary), REPLACE_PRIMARY: (target, secondary),
            FAILOVER_AND_REPLACE: (secondary, target), FAILOVER_TO_ANY: (target, -1)}[kind]


# Step flags. NO_PRUNING turns off the C core's exact lower-bound pruning (same answers, slower);
# FORTH_MOVES lets the C core's move search move forthcoming instances too (engines with
# `native_forth_moves`; balance checks them in Python through forthmove.Moves otherwise).
NO_DISK_MOVES, NO_INSTANCE_MOVES, EVAC_MODE, IGNORE_SOFT, NO_PRUNING, RESTRICTED_MIGRATION, FORTH_MOVES = \
    1, 2, 4, 8, 16, 32, 64

# Allocation mask values per node: never, either role (online nodes), only as secondary (offline
# too), only as primary. The last two serve hail's allocate-secondary, which fixes the primary.
ALLOC_NEVER, ALLOC_EITHER, ALLOC_SECONDARY, ALLOC_PRIMARY = range(4)



def hail_order(n_nodes: int, candidates: list[tuple[int, int, float]]) -> list[tuple[int, int, float]]:
    """Candidates in hail's order: lower score first, of equal scores the later one (in scan order) first."""
    return sorted(candidates, key=lambda c: (c[2], -(c[0] * (n_nodes + 1) + c[1] + 1)))


class Ranked:
    """The valid candidates of one allocation scan in hail's order within runs (an engine's
    `ranked_allocs`): a run per primary for a two-node allocation, one run for a one-node one.
    `runs` lists each run's (start, end); `at(k)` is candidate k as (primary, secondary, score)."""

    def __init__(self, runs: list[tuple[int, int]], at):
        self.runs, self.at = runs, at


# Placement failure reasons, numbered as hail names them.
FAIL_NAMES = ("OK", "FailMem", "FailDisk", "FailCPU", "FailN1", "FailTags", "FailMig", "FailDiskCount",
              "FailSpindles", "FailInternal")
OK, FAIL_MEM, FAIL_DISK, FAIL_CPU, FAIL_N1, FAIL_TAGS, FAIL_MIG, FAIL_DISKCOUNT, FAIL_SPINDLES, FAIL_INTERNAL = \
    range(10)

METRIC_NAMES = ("free_mem_cv", "free_disk_cv", "n1_cnt", "reserved_mem_cv", "offline_all_cnt", "offline_pri_cnt",
                "vcpu_ratio_cv", "cpu_load_cv", "mem_load_cv", "disk_load_cv", "net_load_cv", "pri_tags_score",
                "spindles_cv", "free_mem_cv_forth", "free_disk_cv_forth", "vcpu_ratio_cv_forth",
                "spindles_cv_forth", "location_score", "location_exclusion_score", "reserved_mem_rtotal")
WEIGHTS = (0.5, 0.5, 1.0, 1.0, 4.0, 16.0, 0.5, 1.0, 1.0, 1.0, 1.0, 2.0, 0.5, 0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 0.25)
# Aggregation per metric: 0 standard deviation over online nodes, 1 sum over online nodes,
# 2 sum over offline nodes, 3 the cluster-wide location/exclusion map.
AGGREGATION = (0, 0, 1, 0, 2, 2, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 3, 1)
# Distinct exclusion and location tags: the C core keeps each node's count of each exclusion tag
# (n_nodes x tags ints) and one count per group, location and exclusion tag (groups x locations x
# tags ints, rounded up to whole 64-bit words of each).
MAX_EXCLUSION_TAGS = 4096
MAX_LOCATION_TAGS = 4096
MAX_MIGRATION_TAGS = 64  # migration classes: the engines keep a node's as one 64-bit mask

# What forthcoming instances take of a node (htools' *Forth figures less the real ones); moving a
# forthcoming instance changes only these and its primary's exclusion tags.
FORTH_FIELDS = ("forth_mem", "forth_dsk", "forth_cpu", "forth_sp", "forth_fsp")
NODE_FIELDS = ("t_mem", "mem_base", "f_mem", "t_dsk", "f_dsk", "t_cpu", "cpu_speed", "node_cpus", "hi_spindles",
               "vcpu_ratio", "lo_dsk", "offline", "group", "loc_mask", "mig_mask", "rmig_mask", "forth_mem", "forth_dsk",
               "forth_cpu", "forth_sp", "excl", "f_sp", "t_sp", "forth_fsp")
# Exclusive storage (excl): free spindles (f_sp as reported, t_sp in total, forth_fsp taken by
# forthcoming instances) are a resource and free_disk_cv counts them; spindle use does not count.
INSTANCE_FIELDS = ("mem", "dsk", "vcpus", "spindle_use", "pnode", "snode", "kind", "uses_mem", "uses_cpu",
                   "sec_mem", "movable", "excl_mask", "desired_mask", "disk_sp", "util_cpu", "util_mem", "util_dsk",
                   "util_net")
# disk_sp: the disks' total spindles (htools' getTotalSpindles), -1 when some disk gives none.
# util_*: the dynamic utilisation (hbal -U; htools' default 1 each, 0 with --ignore-dynu): a node's
# cpu, memory and net loads sum its primaries', its disk load its primaries' and secondaries'.
# Instance storage kinds the engines need: 0 none (file, diskless), 1 local non-mirrored (plain),
# 2 mirrored (drbd), 3 shared (moved by failover to any node).
KIND_NONE, KIND_LOCAL, KIND_MIRRORED, KIND_SHARED = range(4)


@record
class Spec:
    """Flat per-node and per-instance arrays; `capacity` instances fit, `count` are defined."""

    nodes: dict[str, list] = field(default_factory=dict)
    instances: dict[str, list] = field(default_factory=dict)
    node_names: list[str] = field(default_factory=list)
    instance_names: list[str] = field(default_factory=list)
    n_tags: int = 0
    n_locations: int = 0
    # Forthcoming instances (indices): htools counts them only in the *_forth metrics, which the
    # nodes' forth_* fields carry; the engines leave them unplaced.
    forthcoming: list[int] = field(default_factory=list)

    @property
    def n_nodes(self) -> int:
        """How many nodes."""
        return len(self.node_names)

    @property
    def n_instances(self) -> int:
        """How many instances are defined."""
        return len(self.instance_names)


def template_kind(template: str) -> int:
    """The storage kind of an htools template name."""
    if template in MIRRORED:
        return KIND_MIRRORED
    if template in SHARED:
        return KIND_SHARED
    if template in LOCAL_STORAGE:
        return KIND_LOCAL
    if template not in TEMPLATES:
        raise ValueError(f"unknown disk template '{template}'")
    return KIND_NONE


def _migration_masks(cluster: Cluster) -> list[tuple[int, int]]:
    """Per node: (its migration classes, the classes it may receive), as bit masks.

    Node tags `PREFIX:...` with cluster tag `htools:migration:PREFIX` are migration classes;
    `htools:allowmigration:X::Y` lets nodes of class Y receive from class X.
    """
    prefixes = [t[len("htools:migration:"):] + ":" for t in cluster.tags if t.startswith("htools:migration:")]
    allowed = [t[len("htools:allowmigration:"):].split("::", 1) for t in cluster.tags
               if t.startswith("htools:allowmigration:") and "::" in t]
    classes = _Interner("migration", MAX_MIGRATION_TAGS)
    out = []
    for node in cluster.nodes:
        own = [t for t in node.tags if any(t.startswith(p) for p in prefixes)]
        receive = own + [src for src, dst in allowed if dst in own]
        out.append((classes.mask(own), classes.mask(receive)))
    return out


def _prefixes(cluster: Cluster, extra_exclusion: list[str]) -> tuple[list[str], list[str], list[str]]:
    excl = [t[len("htools:iextags:"):] for t in cluster.tags if t.startswith("htools:iextags:")]
    excl += [x + ":" for x in extra_exclusion]
    loc = [t[len("htools:nlocation:"):] + ":" for t in cluster.tags if t.startswith("htools:nlocation:")]
    desired = [t[len("htools:desiredlocation:"):] for t in cluster.tags if t.startswith("htools:desiredlocation:")]
    return excl, loc, desired


class _Interner:
    """Numbers distinct tag strings as bits of a mask (at most `limit` of them)."""

    def __init__(self, what: str, limit: int):
        self.ids: dict[str, int] = {}
        self.what = what
        self.limit = limit

    def mask(self, tags: list[str]) -> int:
        bits = 0
        for tag in tags:
            if tag not in self.ids:
                if len(self.ids) >= self.limit:
                    raise ValueError(f"more than {self.limit} distinct {self.what} tags; "
                                     "use fewer distinct values or shorter prefixes")
                self.ids[tag] = len(self.ids)
            bits |= 1 << self.ids[tag]
        return bits


def flatten(cluster: Cluster, group_index: dict[str, int] | None = None, extra_exclusion: list[str] = (),
            offline: set[str] = frozenset(), ignore_dynu: bool = False) -> Spec:
    """The flat arrays of a cluster; nodes named in `offline` are treated as offline, and with
    `ignore_dynu` every instance's dynamic utilisation is 0 (else its `util`)."""
    group_index = group_index or {g.uuid: k for k, g in enumerate(cluster.groups)}
    excl, loc_prefixes, desired = _prefixes(cluster, list(extra_exclusion))
    locs, excls = _Interner("location", MAX_LOCATION_TAGS), _Interner("exclusion", MAX_EXCLUSION_TAGS)
    spec = Spec()
    spec.nodes = {name: [] for name in NODE_FIELDS}
    spec.instances = {name: [] for name in INSTANCE_FIELDS}
    primary_mem = {n.name: 0 for n in cluster.nodes}
    for inst in cluster.instances:
        if inst.status in MEMORY_STATUSES and not inst.forthcoming:
            primary_mem[inst.pnode] += inst.mem
    migration = _migration_masks(cluster)
    forth = _forthcoming_use(cluster)
    for k, node in enumerate(cluster.nodes):
        policy = cluster.policy_of(node.group)
        # htools freezes the memory it cannot explain at load time (xMem); only positive values count.
        missing = int(node.t_mem) - node.n_mem - primary_mem[node.name] - node.f_mem
        values = dict(t_mem=float(node.t_mem), mem_base=int(node.t_mem) - node.n_mem - max(0, missing),
                      f_mem=node.f_mem, t_dsk=float(node.t_dsk), f_dsk=node.f_dsk, t_cpu=float(node.t_cpu),
                      cpu_speed=float(node.cpu_speed), node_cpus=node.node_cpus,
                      hi_spindles=policy.spindle_ratio * node.spindles, vcpu_ratio=policy.vcpu_ratio, lo_dsk=0.0,
                      offline=int(node.offline or node.name in offline), group=group_index[node.group],
                      loc_mask=locs.mask([t for t in node.tags if any(t.startswith(p) for p in loc_prefixes)]),
                      mig_mask=migration[k][0], rmig_mask=migration[k][1], excl=int(node.excl_stor),
                      f_sp=node.free_spindles, t_sp=float(node.spindles), **forth[k])
        for name in NODE_FIELDS:
            spec.nodes[name].append(values[name])
        spec.node_names.append(node.name)
    index = {name: k for k, name in enumerate(spec.node_names)}
    for inst in cluster.instances:
        if inst.forthcoming:
            spec.forthcoming.append(len(spec.instance_names))
        append_instance(spec, inst, index, excls, excl, desired, locs)
        if ignore_dynu:
            for name in ("util_cpu", "util_mem", "util_dsk", "util_net"):
                spec.instances[name][-1] = 0.0
    spec.n_tags = len(excls.ids)
    spec.n_locations = len(locs.ids)
    spec.excl_interner, spec.loc_interner = excls, locs  # kept for instances added later
    spec.excl_prefixes, spec.desired_prefixes = excl, desired
    return spec


def _forthcoming_use(cluster) -> list[dict[str, int]]:
    """What forthcoming instances take on each node, as htools' *_forth metrics count it: memory
    and (online ones) CPUs on the primary, local disk and spindle use on primary and secondary,
    and on exclusive storage free spindles as htools' loader leaves them (`forth_fsp` is the
    reported free spindles less that figure): each forthcoming instance placed there takes its
    disks' spindles, and one without a spindle count sets the figure to -1 (calcNewFreeSpindlesForth),
    in file order."""
    use = {n.name: dict(forth_mem=0, forth_dsk=0, forth_cpu=0, forth_sp=0, forth_fsp=0) for n in cluster.nodes}
    exclusive = {n.name: n.free_spindles for n in cluster.nodes if n.excl_stor}
    left = dict(exclusive)  # htools' fSpindlesForth while the instances are placed
    for inst in cluster.instances:
        if not inst.forthcoming or not inst.pnode:
            continue
        local = template_kind(inst.template) in (KIND_LOCAL, KIND_MIRRORED)
        use[inst.pnode]["forth_mem"] += inst.mem
        use[inst.pnode]["forth_cpu"] += inst.vcpus if inst.status != "ADMIN_offline" else 0
        for name in (inst.pnode, inst.snode):
            if name in exclusive:
                spindles = disk_spindles(inst)
                left[name] = -1 if spindles < 0 else left[name] - spindles
            if not name or not local:
                continue
            use[name]["forth_dsk"] += inst.dsk
            if name not in exclusive:
                use[name]["forth_sp"] += inst.spindle_use
    for name, free in exclusive.items():
        use[name]["forth_fsp"] = free - left[name]
    return [use[n.name] for n in cluster.nodes]


def append_instance(spec: Spec, inst, index: dict[str, int], excls=None, excl=None, desired=None, locs=None) -> int:
    """Add one instance to the arrays (placed if it names nodes, else unplaced); returns its index."""
    excls = excls or spec.excl_interner
    locs = locs or spec.loc_interner
    excl = spec.excl_prefixes if excl is None else excl
    desired = spec.desired_prefixes if desired is None else desired
    values = instance_values(inst, index, excls.mask([t for t in inst.tags if any(t.startswith(p) for p in excl)]),
                             locs.mask([t for t in inst.tags if any(t.startswith(p) for p in desired)]))
    for name in INSTANCE_FIELDS:
        spec.instances[name].append(values[name])
    spec.instance_names.append(inst.name)
    spec.n_tags = len(excls.ids)
    spec.n_locations = len(locs.ids)
    return len(spec.instance_names) - 1


def instance_values(inst, index: dict[str, int], excl_mask: int = 0, desired_mask: int = 0) -> dict:
    """The engine fields of one instance (`INSTANCE_FIELDS`), its nodes looked up in `index`."""
    kind = template_kind(inst.template)
    uses_mem = inst.status in MEMORY_STATUSES and not inst.forthcoming
    offline = inst.status == "ADMIN_offline"
    local = kind in (KIND_LOCAL, KIND_MIRRORED)
    return dict(
        mem=inst.mem, dsk=inst.dsk if local else 0, vcpus=inst.vcpus, spindle_use=inst.spindle_use if local else 0,
        pnode=index[inst.pnode] if inst.pnode else -1, snode=index[inst.snode] if inst.snode else -1,
        kind=kind, uses_mem=int(uses_mem), uses_cpu=int(not offline),
        sec_mem=inst.mem if kind == KIND_MIRRORED and not offline and inst.auto_balance else 0,
        movable=int(kind in (KIND_MIRRORED, KIND_SHARED) and inst.auto_balance),
        excl_mask=excl_mask, desired_mask=desired_mask, disk_sp=disk_spindles(inst),
        util_cpu=float(inst.util[0]), util_mem=float(inst.util[1]), util_dsk=float(inst.util[2]),
        util_net=float(inst.util[3]))


def disk_spindles(inst) -> int:
    """An instance's total disk spindles, -1 when unknown ("-" in the text format)."""
    if inst.spindles in ("-", ""):
        return -1
    try:
        return int(inst.spindles)
    except ValueError:
        raise ValueError(f"instance {inst.name}: spindles '{inst.spindles}' must be a whole number or '-'") from None
