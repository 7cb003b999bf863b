"""hail's allocation on dedicated clusters: when every node of the groups an allocation may use has
exclusive storage, hail 3.0.2 does not score candidates with the cluster score but with its "lost
allocations" metric, and runs no global N+1 check.

For each candidate, the instance policy is checked (with spindles: under exclusive storage the
disks' total spindles stand where the spindle use stands), then the instance is added to its
primary (and secondary) with htools' checks, free spindles included (an instance that leaves a
node with fewer than 0 fails `FailSpindles`, even forced). The metric of a node is how many copies
of each test instance (the minimal spec of each min/max pair of the policy, largest disk first,
as plain instances without spindles) it could take before minus after, and its free disk after;
for a pair the two are added. Metrics compare as (list, int) tuples, lower first; of equal ones
the last candidate wins; groups are chosen by policy, then metric. hail prints the metric as
Haskell shows it, e.g. `([2,0],1320960)`.

The node figures come from the engine (`Engine.node_state`), so both engines give one answer.
Free spindles are what the node reported, less what this request's earlier instances took: hail
leaves them as reported for the instances it loads.
"""

from fastpath.allocate import POLICY_ORDER, GroupOutcome, role_allowed
from fastpath.model import Policy
from fastpath.record import field, record
from fastpath.spec import (ALLOC_PRIMARY, ALLOC_SECONDARY, FAIL_CPU, FAIL_DISK, FAIL_DISKCOUNT, FAIL_MEM,
                           FAIL_NAMES, FAIL_SPINDLES, FAIL_TAGS, KIND_LOCAL, KIND_MIRRORED, OK, Spec)


@record
class NewInstance:
    """The instance being allocated, as the dedicated checks need it."""

    mem: int
    dsk: int
    vcpus: int
    kind: int
    uses_mem: int
    uses_cpu: int
    sec_mem: int
    excl_mask: int
    disks: list[int] = field(default_factory=list)
    spindles: int | None = None  # the disks' total spindles; None when some disk gives none
    template: str = "plain"
    spindle_use: int = 1


def is_dedicated(spec: Spec, groups: list[int]) -> bool:
    """Whether every node of `groups` has exclusive storage (hail's isDedicated)."""
    nodes = spec.nodes
    return all(nodes["excl"][k] for k in range(spec.n_nodes) if nodes["group"][k] in groups)


def policy_failure(policy: Policy, inst: NewInstance) -> int:
    """hail's instMatchesPolicy under exclusive storage: OK, or the failure of the first min/max
    pair when none admits the instance (then the disk template)."""
    first = None
    for low, high in policy.minmax:
        reason = _below(low, inst, -1) or _below(high, inst, 1)
        if not reason:
            first = OK
            break
        first = reason if first is None else first
    if first not in (None, OK):
        return first
    return OK if not policy.templates or inst.template in policy.templates else FAIL_DISK


def placement_policy_failure(policy: Policy, mem: int, vcpus: int, disks: list[int], template: str,
                             spindle_use: int, disk_spindles: int | None, exclusive: bool) -> int:
    """hail's instMatchesPolicy for an instance on one node: `policy_failure` with the spindle part
    counting the disks' spindles on exclusive storage, the instance's spindle use elsewhere."""
    figures = NewInstance(mem, 0, vcpus, 0, 0, 0, 0, 0, disks=list(disks), template=template, spindle_use=spindle_use,
                          spindles=disk_spindles if exclusive else spindle_use)
    return policy_failure(policy, figures)


def _below(spec, inst: NewInstance, sign: int) -> int:
    """The failure if the instance is on the wrong side of `spec` (sign -1: below a minimum,
    +1: above a maximum), else OK; the order is htools' instCompareISpec's."""
    def beyond(value, bound) -> bool:
        return (value - bound) * sign > 0
    if beyond(inst.mem, spec.memory):
        return FAIL_MEM
    if any(beyond(d, spec.disk) for d in inst.disks):
        return FAIL_DISK
    if beyond(inst.vcpus, spec.cpu):
        return FAIL_CPU
    if inst.spindles is None or beyond(inst.spindles, spec.spindle_use):
        return FAIL_SPINDLES
    if inst.template != "diskless" and beyond(len(inst.disks), spec.disk_count):
        return FAIL_DISKCOUNT
    return OK


class Figures:
    """One node's figures for the dedicated checks, and what adding an instance makes of them."""

    def __init__(self, spec: Spec, k: int, state: dict, free_spindles: int):
        nodes = spec.nodes
        self.t_cpu, self.ratio, self.lo_dsk = nodes["t_cpu"][k], nodes["vcpu_ratio"][k], nodes["lo_dsk"][k]
        self.forth_mem, self.forth_dsk, self.forth_cpu, self.forth_fsp = (
            nodes[name][k] for name in ("forth_mem", "forth_dsk", "forth_cpu", "forth_fsp"))
        self.u_mem, self.r_mem, self.fail = state["u_mem"], state["r_mem"], state["fail"]
        self.f_dsk, self.u_cpu, self.all_mem = state["f_dsk"], state["u_cpu"], state["all_mem"]
        self.forth_base, self.tags, self.f_sp = state["forth_base"], state["tags"], free_spindles

    def copy(self) -> "Figures":
        """An independent copy."""
        other = Figures.__new__(Figures)
        other.__dict__.update(self.__dict__)
        return other

    def mem_forth(self) -> int:
        """Free memory counting forthcoming instances and every primary (htools' fMemForth)."""
        return self.forth_base - self.all_mem - self.forth_mem

    def cpu_fails(self, u_cpu: int) -> bool:
        """Whether u_cpu used CPUs break the policy's vCPU ratio."""
        return u_cpu / self.t_cpu > self.ratio

    def disk_fails(self, f_dsk: int) -> bool:
        """Whether free disk f_dsk is gone or below the reserve."""
        return f_dsk <= 0 or f_dsk < self.lo_dsk


def forth_spindles(new: Figures, inst: NewInstance) -> int:
    """A node's free spindles counting forthcoming instances once `inst` is added (htools'
    calcNewFreeSpindlesForth): -1 for an instance without a spindle count."""
    return -1 if inst.spindles is None else new.f_sp - new.forth_fsp


def add_primary(node: Figures, inst: NewInstance, force: bool) -> tuple[int, Figures]:
    """htools' addPriEx of a new instance on an exclusive-storage node: the status and the figures."""
    new = node.copy()
    local = inst.kind in (KIND_LOCAL, KIND_MIRRORED)
    new.u_mem -= inst.mem * inst.uses_mem
    new.all_mem += inst.mem
    new.f_dsk -= inst.dsk if local else 0
    new.u_cpu += inst.vcpus * inst.uses_cpu
    new.f_sp = -1 if inst.spindles is None else node.f_sp - inst.spindles
    new.fail = int(new.u_mem <= node.r_mem)
    new.tags = node.tags | inst.excl_mask
    checks = [(new.u_mem <= 0, FAIL_MEM), (local and new.f_dsk <= 0, FAIL_DISK),
              (not force and local and new.f_dsk < node.lo_dsk, FAIL_DISK), (local and new.f_sp < 0, FAIL_SPINDLES)]
    if not force:
        checks += [(new.fail and not node.fail, FAIL_MEM), (node.cpu_fails(new.u_cpu), FAIL_CPU),
                   (bool(node.tags & inst.excl_mask), FAIL_TAGS), (new.mem_forth() <= 0, FAIL_MEM),
                   (local and node.disk_fails(new.f_dsk - node.forth_dsk), FAIL_DISK),
                   (local and forth_spindles(new, inst) < 0, FAIL_SPINDLES),
                   (node.cpu_fails(new.u_cpu + node.forth_cpu), FAIL_CPU)]
    return next((reason for failed, reason in checks if failed), OK), new


def add_secondary(node: Figures, inst: NewInstance, force: bool, peer_mem: int) -> tuple[int, Figures]:
    """htools' addSecEx of a new instance on an exclusive-storage node, `peer_mem` being what the
    node already reserves for the primary: the status and the figures."""
    new = node.copy()
    new.f_dsk -= inst.dsk
    new.f_sp = -1 if inst.spindles is None else node.f_sp - inst.spindles
    new.r_mem = max(node.r_mem, peer_mem + inst.sec_mem)
    new.fail = int(node.u_mem <= new.r_mem)
    checks = [(inst.kind != KIND_MIRRORED, FAIL_DISK), (new.f_dsk <= 0, FAIL_DISK),
              (not force and new.f_dsk < node.lo_dsk, FAIL_DISK), (new.f_sp < 0, FAIL_SPINDLES)]
    if not force:
        checks += [(inst.sec_mem >= node.u_mem, FAIL_MEM), (new.fail and not node.fail, FAIL_MEM),
                   (node.disk_fails(new.f_dsk - node.forth_dsk), FAIL_DISK),
                   (forth_spindles(new, inst) < 0, FAIL_SPINDLES),
                   (inst.sec_mem >= node.mem_forth(), FAIL_MEM)]
    return next((reason for failed, reason in checks if failed), OK), new


def copies(node: Figures, test: NewInstance) -> int:
    """How many copies of a test instance the node takes one after another (htools' strict addPri,
    iterated until it fails). Every limit but N+1 only tightens with each copy, so those are found
    by bisection; the N+1 test fails the first copy that leaves free memory at or below the
    reserve while the node did not fail N+1 before it."""
    if not (test.mem or test.dsk or test.vcpus):
        raise ValueError("an instance policy minimum of 0 memory, 0 disk and 0 CPUs would fit without end; "
                         "give every min spec some memory, disk or CPUs")

    def fits(count: int) -> bool:
        # The count-th copy passes the other checks if the node, holding count - 1, takes one more.
        held = node.copy()
        held.u_mem -= (count - 1) * test.mem
        held.all_mem += (count - 1) * test.mem
        held.f_dsk -= (count - 1) * test.dsk
        held.u_cpu += (count - 1) * test.vcpus
        held.fail = 1
        return add_primary(held, test, False)[0] == OK
    low, high = 0, 1
    while fits(high):
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return min(low, _n1_copies(node, test.mem))


def _n1_copies(node: Figures, mem: int) -> int | float:
    """How many copies the N+1 test lets through: all when the node fails N+1 already and still
    does after one copy, else those that leave free memory above the reserve."""
    if node.fail and node.u_mem - mem <= node.r_mem:
        return float("inf")
    if mem == 0:
        return float("inf") if node.u_mem > node.r_mem else 0
    return max(0, -(-(node.u_mem - node.r_mem) // mem) - 1)


class Dedicated:
    """hail's dedicated allocation over one engine's placement; `used_spindles` are the free
    spindles this request's earlier instances took, per node."""

    def __init__(self, engine, spec: Spec, cluster, used_spindles: dict[int, int]):
        self.engine, self.spec, self.cluster = engine, spec, cluster
        self.figures = [Figures(spec, k, engine.node_state(k), spec.nodes["f_sp"][k] - used_spindles.get(k, 0))
                        for k in range(spec.n_nodes)]
        column = engine.instance_column
        self.peers: dict[tuple[int, int], int] = {}  # (secondary, primary): memory reserved for it
        for p, s, mem in zip(column("pnode"), column("snode"), column("sec_mem")):
            if p >= 0 and s >= 0:
                self.peers[(s, p)] = self.peers.get((s, p), 0) + mem
        self.vectors: dict[int, list[int]] = {}  # node: its test-instance counts as it is
        self.tests: dict[int, list[NewInstance]] = {}  # group: its test instances
        self.lost: dict[tuple, object] = {}  # one instance's lost allocations per primary / secondary state

    def group_tests(self, group: int) -> list[NewInstance]:
        """hail's test instances of a group: each min/max pair's minimum, largest disk first."""
        if group not in self.tests:
            policy = self.cluster.policy_of(self.cluster.groups[group].uuid)
            lows = sorted((low for low, _ in policy.minmax), key=lambda low: -low.disk)
            self.tests[group] = [NewInstance(low.memory, low.disk, low.cpu, KIND_LOCAL, 1, 1, 0, 0, spindles=0)
                                 for low in lows]
        return self.tests[group]

    def vector(self, node: Figures, tests: list[NewInstance]) -> list[int]:
        """How many copies of each test instance the node takes."""
        return [copies(node, test) for test in tests]

    def _base_vector(self, k: int, tests: list[NewInstance]) -> list[int]:
        if k not in self.vectors:
            self.vectors[k] = self.vector(self.figures[k], tests)
        return self.vectors[k]

    def try_group(self, outcome, group: int, inst: NewInstance, required: int, mask, force: bool) -> None:
        """hail's dedicated search in one group: fills the outcome's failures, successes and, if
        any, nodes and metric (of equal metrics the last candidate)."""
        tests, spec = self.group_tests(group), self.spec
        policy = self.cluster.policy_of(self.cluster.groups[group].uuid)
        refused = policy_failure(policy, inst)
        primaries = [k for k in range(spec.n_nodes) if role_allowed(spec, mask, group, k, ALLOC_PRIMARY)]
        secondaries = [k for k in range(spec.n_nodes) if role_allowed(spec, mask, group, k, ALLOC_SECONDARY)]
        counts, best = [0] * len(FAIL_NAMES), None
        for p in primaries:
            for s in secondaries if required == 2 else [-1]:
                if s == p:
                    continue
                status, metric = (refused, None) if refused != OK else self.metric(p, s, inst, tests, force)
                if status != OK:
                    counts[status] += 1
                    continue
                outcome.successes += 1
                if best is None or metric <= best[2]:
                    best = (p, s, metric)
        outcome.failures = {FAIL_NAMES[k]: counts[k] for k in range(1, len(FAIL_NAMES)) if counts[k]}
        if best is not None:
            outcome.nodes, outcome.score = (best[0], best[1]), best[2]

    def metric(self, p: int, s: int, inst: NewInstance, tests: list[NewInstance], force: bool):
        """(status, metric) of the candidate (p, s); s = -1 for one node."""
        status, lost, disk = self._on_primary(p, inst, tests, force)
        if status != OK or s < 0:
            return status, None if status != OK else (lost, disk)
        # hail adds the secondary with every check, whatever the soft-error option says.
        status, secondary = add_secondary(self.figures[s], inst, False, self.peers.get((s, p), 0))
        if status != OK:
            return status, None
        # Only the reserve (and so the N+1 flag) depends on the primary: one count per value.
        key = ("s", s, secondary.r_mem, secondary.fail)
        if key not in self.lost:
            self.lost[key] = [a - b for a, b in zip(self._base_vector(s, tests), self.vector(secondary, tests))]
        return OK, ([a + b for a, b in zip(lost, self.lost[key])], disk + secondary.f_dsk)

    def _on_primary(self, p: int, inst: NewInstance, tests: list[NewInstance], force: bool):
        """(status, lost allocations, free disk after) of the instance on primary p, once per node."""
        key = ("p", p)
        if key not in self.lost:
            status, primary = add_primary(self.figures[p], inst, force)
            self.lost[key] = (status, [a - b for a, b in zip(self._base_vector(p, tests), self.vector(primary, tests))]
                              if status == OK else None, primary.f_dsk)
        return self.lost[key]


def metric_text(metric: tuple[list[int], int]) -> str:
    """The metric as Haskell shows a ([Int], Int) pair: ([2,0],1320960)."""
    return f"([{','.join(str(v) for v in metric[0])}],{metric[1]})"


def allocate(dedicated: Dedicated, inst: NewInstance, required: int, groups: list[int], mask=None,
             force: bool = False, unconnected=None) -> tuple[GroupOutcome | None, list[GroupOutcome]]:
    """hail's dedicated allocation over `groups`: the chosen outcome (policy order, then metric)
    and all outcomes, in group order, in the shape of `fastpath.allocate.allocate`'s. Unlike its
    usual search, hail tries unallocable groups too (it only never chooses them) and reports a
    group without the instance's networks in its place, as an error; `unconnected(g)` gives that
    text ("The group ... is not connected ...") or None."""
    outcomes = []
    for g in groups:
        group = dedicated.cluster.groups[g]
        outcome = GroupOutcome(group.name, group.alloc_policy, g)
        outcomes.append(outcome)
        outcome.error = (unconnected(g) if unconnected else None) or ""
        if outcome.error:
            continue
        online = sum(1 for k in range(dedicated.spec.n_nodes)
                     if role_allowed(dedicated.spec, mask, g, k, ALLOC_PRIMARY))
        if online < required:
            outcome.error = "Not enough online nodes"
            continue
        dedicated.try_group(outcome, g, inst, required, mask, force)
    good = sorted((o for o in outcomes if o.nodes is not None and o.policy != "unallocable"),
                  key=lambda o: (POLICY_ORDER.get(o.policy, 2), o.score))
    return (good[0] if good else None), outcomes
