"""Capacity planning like Ganeti's hspace: how many more instances fit, tiered and at the standard spec.

Pure stdlib; allocations go through `fastpath.allocate` on an engine. Written from the description
in shared/reference/htools.md section 7.2.
"""

import copy
import sys

from fastpath import dedicated, engine_class
from fastpath.allocate import allocate
from fastpath.model import Cluster, Instance
from fastpath.record import field, record
from fastpath.spec import FAIL_NAMES, MIRRORED, OK, flatten, instance_values

# The tiered phase shrinks a size (memory, disk, cpu, disk spindles) by one unit of the failing
# resource, never below one unit (htools' shrinkByType: 64 MiB, 256 MiB, 1 CPU, 1 spindle).
SHRINK = {"FailMem": (0, 64), "FailDisk": (1, 256), "FailCPU": (2, 1), "FailSpindles": (3, 1)}


class _Fits(dict):
    """The failure counts of an attempt that found a place (it was not taken)."""


def tiered_starts(request: "CapacityRequest") -> list[tuple[int, int, int, int]]:
    """The sizes (memory, disk, cpu, disk spindles) hspace's tiered phase starts from: the given
    spec (one spindle), else every min/max pair's maximum, in the policy's order."""
    if request.tiered_spec:
        return [(tuple(request.tiered_spec) + (1,))[:4]]
    return [(high.memory, high.disk, high.cpu, high.spindle_use) for _, high in request.cluster.policy.minmax]


def _ranked(failures: dict[str, int]) -> list[str]:
    """The failure modes by count, most first, of equal counts the later mode first (hspace sorts
    them ascending, stably, and walks the list from its end)."""
    ascending = sorted(FAIL_NAMES[1:], key=lambda name: failures.get(name, 0))
    return ascending[::-1]


def _shrunk(size: tuple, cause: str) -> tuple | None:
    if cause not in SHRINK:
        return None
    k, unit = SHRINK[cause]
    value = size[k] - unit
    return None if value < unit else size[:k] + (value,) + size[k + 1:]


def _shrink_until_fits(attempt, size: tuple, cause: str) -> tuple | None:
    """htools' sufficesShrinking: shrinking by `cause` alone while `cause` keeps failing, the first
    size that fits, if any (the size itself first)."""
    while size is not None:
        result = attempt(size)
        if isinstance(result, _Fits):
            return size
        if not result.get(cause, 0):
            return None
        size = _shrunk(size, cause)
    return None


@record
class CapacityRequest:
    """What to plan for."""

    cluster: Cluster
    accept_existing_errors: bool = False
    disk_template: str | None = None
    max_allocations: int = -1
    tiered: bool = True
    implementation: str = "c"
    tiered_spec: tuple[int, ...] | None = None  # (memory, disk, cpu[, spindles]); default: the policy's max specs


@record
class Phase:
    """The outcome of one allocation phase."""

    allocated: int = 0
    score: float = 0.0
    instances: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    tiers: list[tuple[tuple[int, int, int, int], int]] = field(default_factory=list)
    placed: list[tuple[Instance, str, str]] = field(default_factory=list)  # (instance, primary, secondary)

    def reason(self) -> str:
        """The most common failure reason of the allocation that stopped the phase."""
        if not any(self.failures.values()):
            return "FAILINTERNAL" if self.allocated == 0 else "FAILMEM"
        name = max(FAIL_NAMES[1:], key=lambda n: self.failures.get(n, 0))
        return name.upper()


class _Planner:
    """One engine and the allocation loop over it."""

    def __init__(self, request: CapacityRequest, extra: int):
        self.request = request
        self.cluster = request.cluster
        self.spec = flatten(self.cluster)
        self.engine = engine_class(request.implementation)(self.spec, extra_instances=extra)
        self.groups = list(range(len(self.cluster.groups)))
        self.scope = 0 if len(self.groups) == 1 else -1
        self.spare = -1
        self.template = request.disk_template or (self.cluster.policy.templates or ["drbd"])[0]
        self.placed: list[tuple[Instance, str, str]] = []

    def try_one(self, memory: int, disk: int, cpu: int, spindle_use: int, number: int,
                spindles: int | None = None, place: bool = True, capacity_check: bool | None = None):
        """Allocate one instance of this size (None) or return the failure counts; with `place`
        False only ask whether it would fit. hspace gives the instance one disk with the spec's
        spindle figure as its spindles unless `spindles` says otherwise. Like hspace, only a drbd
        instance is placed without the global N+1 check (`capacity_check` None)."""
        disk_spindles = spindle_use if spindles is None else spindles
        inst = Instance(f"new-{number}", memory, disk, cpu, "running", True, "", "", self.template,
                        spindle_use=spindle_use, spindles=str(disk_spindles))
        # A failed attempt leaves its slot unplaced; the next attempt reuses it.
        index = self.engine.define_instance(instance_values(inst, {}), self.spare)
        self.spare = index
        required = 2 if self.template in MIRRORED else 1
        if capacity_check is None:
            capacity_check = self.template not in MIRRORED
        chosen, outcomes = allocate(self.engine, self.spec, self.cluster, index, required, self.groups,
                                    capacity_check=capacity_check, refused_primaries=lambda g: self._refused(g, inst))
        if chosen is None or not place:
            failures: dict[str, int] = {}
            for outcome in outcomes:
                for name, count in outcome.failures.items():
                    failures[name] = failures.get(name, 0) + count
            return failures if chosen is None else _Fits(failures)
        self.engine.place(index, chosen.nodes[0], chosen.nodes[1])
        names = self.spec.node_names
        self.placed.append((inst, names[chosen.nodes[0]], names[chosen.nodes[1]] if chosen.nodes[1] >= 0 else ""))
        self.spare = -1
        return None

    def _refused(self, group: int, inst: Instance) -> dict[int, int]:
        """The nodes of `group` whose instance policy refuses `inst` as a primary, with hail's
        reason (instMatchesPolicy per candidate: on exclusive storage the disks' spindles count,
        elsewhere the spindle use); hspace counts every candidate on them as that failure."""
        policy = self.cluster.policy_of(self.cluster.groups[group].uuid)
        reasons = {exclusive: dedicated.placement_policy_failure(policy, inst.mem, inst.vcpus, [inst.dsk],
                                                                 inst.template, inst.spindle_use, int(inst.spindles),
                                                                 exclusive)
                   for exclusive in (False, True)}
        nodes = self.spec.nodes
        return {k: reasons[bool(nodes["excl"][k])] for k in range(self.spec.n_nodes)
                if nodes["group"][k] == group and reasons[bool(nodes["excl"][k])] != OK}

    def standard(self) -> Phase:
        std = self.cluster.policy.std
        phase = Phase()
        phase.failures = self._fill((std.memory, std.disk, std.cpu, std.spindle_use), std.spindle_use, phase,
                                    self._limit(), {})
        return self._finish(phase)

    def _limit(self) -> int | None:
        return None if self.request.max_allocations < 0 else self.request.max_allocations

    def _fill(self, size: tuple[int, int, int, int], spindle_use: int, phase: Phase, limit: int | None,
              checked: dict) -> dict[str, int]:
        """hspace's iterateAlloc: place instances of `size` until one does not fit, or `limit` of
        them are placed; the failure counts of the attempt that stopped it (with a limit, the
        attempt after the last placement: it fits, and is not placed)."""
        placed = 0
        while True:
            failures = self.try_one(*size[:3], spindle_use, phase.allocated, size[3],
                                    place=limit is None or placed < limit)
            if failures is not None:
                return dict(failures)
            placed += 1
            phase.allocated += 1
            checked.clear()  # the cluster changed

    def tiered(self) -> Phase:
        """hspace's tiered phase (3.0.2's Cluster.hs tieredAlloc): place instances of one size until
        one fails, then shrink the size by one unit of the resource that failed most and go on; if
        that places nothing more, take the first resource (most failures first) whose shrinking
        alone, while it keeps failing, makes an instance fit; stop when neither helps."""
        # Every instance uses the standard spec's spindle use; its one disk has the start spec's
        # spindles. Each min/max pair's maximum starts a run, each run going on from the last.
        spindle_use = self.cluster.policy.std.spindle_use
        phase = Phase()
        limit = self._limit()
        depth = sys.getrecursionlimit()
        sys.setrecursionlimit(max(depth, 50000))  # one level per unit shrunk, as in hspace
        try:
            for size in tiered_starts(self.request):
                if limit is not None and limit <= phase.allocated:
                    break
                # hspace passes on the limit less everything placed so far (combineTiered).
                self._tiered_level(size, spindle_use, phase, {}, None if limit is None else limit - phase.allocated)
        finally:
            sys.setrecursionlimit(depth)
        for inst, _, _ in self.placed:
            tier = (inst.mem, inst.dsk, inst.vcpus, int(inst.spindles))
            if phase.tiers and phase.tiers[-1][0] == tier:
                phase.tiers[-1] = (tier, phase.tiers[-1][1] + 1)
            else:
                phase.tiers.append((tier, 1))
        return self._finish(phase)

    def _tiered_level(self, size: tuple[int, int, int, int], spindle_use: int, phase: Phase,
                      checked: dict[tuple, dict], limit: int | None) -> None:
        """One tieredAlloc call: fill at `size`, then shrink (see `tiered`). `checked` holds the
        answers with the global N+1 check, per size, while nothing new is placed. Like hspace,
        the limit handed on is this level's limit less every instance the phase placed so far."""
        failures = self._fill(size, spindle_use, phase, limit, checked)
        phase.failures = failures
        if limit is not None and limit <= phase.allocated:
            return
        limit = None if limit is None else limit - phase.allocated
        ranked = _ranked(failures)  # most failures first; of equals the later failure mode

        def attempt(candidate: tuple) -> dict:
            # hspace asks these questions with its global N+1 check on, whatever the template.
            if candidate not in checked:
                checked[candidate] = self.try_one(*candidate[:3], spindle_use, phase.allocated, candidate[3],
                                                  place=False, capacity_check=True)
            return checked[candidate]
        smaller = _shrunk(size, ranked[0])
        if smaller is not None:
            before = phase.allocated
            self._tiered_level(smaller, spindle_use, phase, checked, limit)
            if phase.allocated > before:
                return
            phase.failures = failures
        for cause in ranked:
            fits = _shrink_until_fits(attempt, size, cause)
            if fits is not None:
                self._tiered_level(fits, spindle_use, phase, checked, limit)
                return

    def _finish(self, phase: Phase) -> Phase:
        phase.score = self.engine.score(self.scope)
        phase.instances = len(self.cluster.instances) + phase.allocated
        phase.placed = list(self.placed)
        return phase


def _extra(cluster: Cluster) -> int:
    memory = sum(n.t_mem for n in cluster.nodes if not n.offline)
    return int(memory // max(64, min(cluster.policy.std.memory, 1024))) + 64


def _after(cluster: Cluster, placed: list[tuple[Instance, str, str]]) -> Cluster:
    """The cluster model with the phase's new instances added, as hspace's node figures see them."""
    nodes = {n.name: copy.copy(n) for n in cluster.nodes}
    instances = list(cluster.instances)
    for inst, primary, secondary in placed:
        inst = copy.copy(inst)
        inst.pnode, inst.snode = primary, secondary
        instances.append(inst)
        nodes[primary].f_mem -= inst.mem
        for name in (primary, secondary) if secondary else (primary,):
            nodes[name].f_dsk -= inst.dsk
            if nodes[name].excl_stor:
                nodes[name].free_spindles -= int(inst.spindles)
    after = copy.copy(cluster)
    after.nodes = [nodes[n.name] for n in cluster.nodes]
    after.instances = instances
    return after


def _quoted(value) -> str:
    """hspace quotes a negative figure."""
    text = str(value)
    return f"'{text}'" if text.startswith("-") else text


def _ratio(part: float, whole: float) -> str:
    """A ratio as hspace prints it, where a division by zero is Haskell's NaN or Infinity."""
    if whole == 0:
        return "NaN" if part == 0 else ("Infinity" if part > 0 else "-Infinity")
    return f"{part / whole:.8f}"


def _resource_stats(cluster: Cluster, prefix: str) -> list[tuple[str, object]]:
    """hspace's per-resource FREE/AVAIL/RESVD/INST/OVERHEAD/EFF figures of a cluster as loaded."""
    online = [n for n in cluster.nodes if not n.offline]
    names = {n.name for n in online}
    down = ("ADMIN_down", "ADMIN_offline", "ERROR_down", "ERROR_nodedown", "ERROR_nodeoffline")
    imem = 0
    icpu = sum(n.node_cpus for n in online)  # each node's own CPU reservation counts as used
    peers: dict[str, dict[str, int]] = {n.name: {} for n in online}
    for inst in cluster.instances:
        if inst.pnode in names:
            imem += 0 if inst.status in down else inst.mem
            icpu += inst.vcpus
        if inst.snode in names and inst.auto_balance:
            peers[inst.snode][inst.pnode] = peers[inst.snode].get(inst.pnode, 0) + inst.mem
    # Available memory leaves the N+1 reserve: the largest memory a single peer would fail over.
    amem = [max(0, n.f_mem - max(peers[n.name].values(), default=0)) for n in online]
    tmem, tdsk = sum(n.t_mem for n in online), sum(n.t_dsk for n in online)
    fmem, fdsk = sum(n.f_mem for n in online), sum(n.f_dsk for n in online)
    tspn, fspn = sum(n.spindles for n in online), sum(n.free_spindles for n in online)
    vcpu = sum(n.t_cpu * cluster.policy_of(n.group).vcpu_ratio for n in online)
    p = f"HTS_{prefix}_"
    return [(p + "MEM_FREE", fmem), (p + "MEM_AVAIL", sum(amem)), (p + "MEM_RESVD", fmem - sum(amem)),
            (p + "MEM_INST", imem), (p + "MEM_OVERHEAD", int(tmem - fmem - imem)),
            (p + "MEM_EFF", _ratio(imem, tmem)), (p + "DSK_FREE", fdsk), (p + "DSK_AVAIL", fdsk),
            (p + "DSK_RESVD", 0), (p + "DSK_INST", int(tdsk - fdsk)), (p + "DSK_EFF", _ratio(tdsk - fdsk, tdsk)),
            (p + "SPN_FREE", fspn), (p + "SPN_INST", _quoted(tspn - fspn)),
            (p + "SPN_EFF", _quoted(_ratio(tspn - fspn, tspn))), (p + "CPU_INST", icpu),
            (p + "CPU_EFF", _ratio(icpu, vcpu)), (p + "MNODE_MEM_AVAIL", max(amem)),
            (p + "MNODE_DSK_AVAIL", max(n.f_dsk for n in online))]


def _used(cluster: Cluster) -> dict[str, int]:
    """The CPU, memory, disk and spindles in use, as the *_INST keys count them."""
    stats = dict(_resource_stats(cluster, "X"))
    return {r: int(str(stats[f"HTS_X_{r}_INST"]).strip("'")) for r in ("CPU", "MEM", "DSK", "SPN")}


def _key_metrics(cluster: Cluster, placed: list[tuple[Instance, str, str]]) -> list[tuple[str, object]]:
    """hspace's HTS_KM_* keys: resources used now, the pool the tiered phase added, and the rest."""
    online = [n for n in cluster.nodes if not n.offline]
    ratio = cluster.policy.vcpu_ratio
    total = {"CPU": int(sum(n.t_cpu * cluster.policy_of(n.group).vcpu_ratio for n in online)),
             "MEM": int(sum(n.t_mem for n in online)), "DSK": int(sum(n.t_dsk for n in online)),
             "SPN": sum(n.spindles for n in online)}
    used, after = _used(cluster), _used(_after(cluster, placed))
    parts = {"USED": used, "POOL": {r: after[r] - used[r] for r in total},
             "UNAV": {r: total[r] - after[r] for r in total}}
    out: list[tuple[str, object]] = []
    for part, figures in parts.items():
        out += [(f"HTS_KM_{part}_CPU", _quoted(figures["CPU"])), (f"HTS_KM_{part}_NPU", _quoted(figures["CPU"] / ratio))]
        out += [(f"HTS_KM_{part}_{r}", _quoted(figures[r])) for r in ("MEM", "DSK", "SPN")]
    return out


def plan(request: CapacityRequest) -> list[tuple[str, object]]:
    """The HTS_* key/value pairs of an hspace --machine-readable report, in hspace's order."""
    cluster = request.cluster
    online = [n for n in cluster.nodes if not n.offline]
    planner = _Planner(request, _extra(cluster))
    initial = planner.engine.score(planner.scope)
    out: list[tuple[str, object]] = [
        ("HTS_CLUSTER_MEM", int(sum(n.t_mem for n in online))), ("HTS_CLUSTER_DSK", int(sum(n.t_dsk for n in online))),
        ("HTS_CLUSTER_CPU", int(sum(n.t_cpu for n in online))),
        ("HTS_CLUSTER_VCPU", int(sum(n.t_cpu * cluster.policy_of(n.group).vcpu_ratio for n in online))),
        ("HTS_CLUSTER_SPN", sum(n.spindles for n in online)), ("HTS_CLUSTER_NODES", len(online)),
        ("HTS_INI_SCORE", f"{initial:.8f}"), ("HTS_INI_INST_CNT", len(cluster.instances))]
    out += _resource_stats(cluster, "INI")
    existing_failure = planner.engine.metrics(planner.scope)[2] > 0
    std = cluster.policy.std
    required = 2 if planner.template in MIRRORED else 1
    stopped = existing_failure and not request.accept_existing_errors
    if request.tiered:
        # An existing N+1 failure stops hspace before any allocation; it still reports both phases.
        tiered = Phase(score=initial, instances=len(cluster.instances)) if stopped else \
            _Planner(request, _extra(cluster)).tiered()
        memory, disk, cpu, spindles = tiered_starts(request)[0]
        tiers = " ".join(f"{m},{d},{c},{s}={k}" for (m, d, c, s), k in tiered.tiers)
        out += [("HTS_TSPEC_INI_MEM", memory), ("HTS_TSPEC_INI_DSK", disk),
                ("HTS_TSPEC_INI_CPU", cpu), ("HTS_TSPEC_INI_SPN", spindles),
                ("HTS_TSPEC_INI_RQN", required), ("HTS_TSPEC_INI_DISK_TEMPLATE", planner.template),
                ("HTS_TRL_SCORE", f"{tiered.score:.8f}"), ("HTS_TRL_INST_CNT", tiered.instances)]
        out += _resource_stats(_after(cluster, tiered.placed), "TRL")
        out.append(("HTS_TSPEC", f"'{tiers}'" if tiers else ""))
        out += _key_metrics(cluster, tiered.placed)
    if stopped:
        standard = Phase(score=initial, instances=len(cluster.instances), failures={"FailN1": 1})
    else:
        standard = planner.standard()
    out += [("HTS_SPEC_MEM", std.memory), ("HTS_SPEC_DSK", std.disk), ("HTS_SPEC_CPU", std.cpu),
            ("HTS_SPEC_SPN", std.spindle_use), ("HTS_SPEC_RQN", required),
            ("HTS_SPEC_DISK_TEMPLATE", planner.template),
            ("HTS_FIN_SCORE", f"{standard.score:.8f}"), ("HTS_FIN_INST_CNT", standard.instances)]
    out += _resource_stats(_after(cluster, standard.placed), "FIN")
    # The share of the final instance count that existed before planning.
    out += [("HTS_ALLOC_USAGE", _ratio(len(cluster.instances), standard.instances)),
            ("HTS_ALLOC_INSTANCES", standard.allocated), ("HTS_ALLOC_FAIL_REASON", standard.reason())]
    # hspace lists the failure modes by count, most first (of equal counts in its order).
    ranked = sorted(FAIL_NAMES[1:], key=lambda name: -standard.failures.get(name, 0))
    if stopped:
        ranked = ["FailN1"]  # hspace's stop on an existing N+1 failure reports only that
    out += [(f"HTS_ALLOC_{name.upper()}_CNT", standard.failures.get(name, 0)) for name in ranked]
    out.append(("HTS_OK", 1))
    return out
