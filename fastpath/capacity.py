"""Capacity planning like Ganeti's hspace: how many more instances fit, tiered and at the standard spec.

Pure stdlib; allocations go through `fastpath.allocate` on an engine. Written from the description
in shared/reference/htools.md section 7.2.
"""

from fastpath import engine_class
from fastpath.allocate import allocate
from fastpath.model import Cluster, Instance
from fastpath.record import field, record
from fastpath.spec import FAIL_NAMES, MIRRORED, flatten, instance_values

# Shrink steps of the tiered phase per failing dimension.
SHRINK = {"FailMem": ("memory", 64), "FailDisk": ("disk", 256), "FailCPU": ("cpu", 1)}


@record
class CapacityRequest:
    """What to plan for."""

    cluster: Cluster
    accept_existing_errors: bool = False
    disk_template: str | None = None
    max_allocations: int = -1
    tiered: bool = True
    implementation: str = "c"
    tiered_spec: tuple[int, int, int] | None = None  # (memory, disk, cpu); default: the policy's max spec


@record
class Phase:
    """The outcome of one allocation phase."""

    allocated: int = 0
    score: float = 0.0
    instances: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    tiers: list[tuple[tuple[int, int, int, int], int]] = field(default_factory=list)

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

    def try_one(self, memory: int, disk: int, cpu: int, spindle_use: int, number: int):
        # hspace gives the instance's disk as many spindles as the spec's spindle figure.
        inst = Instance(f"new-{number}", memory, disk, cpu, "running", True, "", "", self.template,
                        spindle_use=spindle_use, spindles=str(spindle_use))
        # A failed attempt leaves its slot unplaced; the next attempt reuses it.
        index = self.engine.define_instance(instance_values(inst, {}), self.spare)
        self.spare = index
        required = 2 if self.template in MIRRORED else 1
        chosen, outcomes = allocate(self.engine, self.spec, self.cluster, index, required, self.groups,
                                    capacity_check=False)
        if chosen is None:
            failures: dict[str, int] = {}
            for outcome in outcomes:
                for name, count in outcome.failures.items():
                    failures[name] = failures.get(name, 0) + count
            return failures
        self.engine.place(index, chosen.nodes[0], chosen.nodes[1])
        self.spare = -1
        return None

    def limit_reached(self, phase: Phase) -> bool:
        return 0 <= self.request.max_allocations <= phase.allocated

    def standard(self) -> Phase:
        std = self.cluster.policy.std
        phase = Phase()
        while not self.limit_reached(phase):
            failures = self.try_one(std.memory, std.disk, std.cpu, std.spindle_use, phase.allocated)
            if failures is not None:
                phase.failures = failures
                break
            phase.allocated += 1
        return self._finish(phase)

    def tiered(self) -> Phase:
        low, high = self.cluster.policy.minmax[-1]
        size = {"memory": high.memory, "disk": high.disk, "cpu": high.cpu}
        spindles = high.spindle_use
        if self.request.tiered_spec:
            # Like hspace's --tiered-alloc, a given start spec uses the standard spindle use.
            size = dict(zip(("memory", "disk", "cpu"), self.request.tiered_spec))
            spindles = self.cluster.policy.std.spindle_use
        minimum = {"memory": low.memory, "disk": low.disk, "cpu": low.cpu}
        phase = Phase()
        count = 0
        while not self.limit_reached(phase):
            failures = self.try_one(size["memory"], size["disk"], size["cpu"], spindles, phase.allocated)
            if failures is None:
                phase.allocated += 1
                count += 1
                continue
            if count:
                phase.tiers.append(((size["memory"], size["disk"], size["cpu"], spindles), count))
                count = 0
            phase.failures = failures
            name = max(FAIL_NAMES[1:], key=lambda n: failures.get(n, 0))
            if name not in SHRINK:
                break
            dimension, step = SHRINK[name]
            if size[dimension] - step < minimum[dimension]:
                break
            size[dimension] -= step
        if count:
            phase.tiers.append(((size["memory"], size["disk"], size["cpu"], spindles), count))
        return self._finish(phase)

    def _finish(self, phase: Phase) -> Phase:
        phase.score = self.engine.score(self.scope)
        phase.instances = len(self.cluster.instances) + phase.allocated
        return phase


def _extra(cluster: Cluster) -> int:
    memory = sum(n.t_mem for n in cluster.nodes if not n.offline)
    return int(memory // max(64, min(cluster.policy.std.memory, 1024))) + 64


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
    existing_failure = planner.engine.metrics(planner.scope)[2] > 0
    std = cluster.policy.std
    required = 2 if planner.template in MIRRORED else 1
    if existing_failure and not request.accept_existing_errors:
        # An existing N+1 failure stops hspace before any allocation.
        standard = Phase(score=initial, instances=len(cluster.instances), failures={"FailN1": 1})
    else:
        if request.tiered:
            tiered = _Planner(request, _extra(cluster)).tiered()
            high = cluster.policy.minmax[-1][1]
            memory, disk, cpu = request.tiered_spec or (high.memory, high.disk, high.cpu)
            out += [("HTS_TSPEC_INI_MEM", memory), ("HTS_TSPEC_INI_DSK", disk),
                    ("HTS_TSPEC_INI_CPU", cpu), ("HTS_TSPEC_INI_SPN", high.spindle_use),
                    ("HTS_TSPEC_INI_RQN", required), ("HTS_TSPEC_INI_DISK_TEMPLATE", planner.template),
                    ("HTS_TRL_SCORE", f"{tiered.score:.8f}"), ("HTS_TRL_INST_CNT", tiered.instances),
                    ("HTS_TSPEC", "'" + " ".join(f"{m},{d},{c},{s}={k}" for (m, d, c, s), k in tiered.tiers) + "'")]
        standard = planner.standard()
    out += [("HTS_SPEC_MEM", std.memory), ("HTS_SPEC_DSK", std.disk), ("HTS_SPEC_CPU", std.cpu),
            ("HTS_SPEC_SPN", std.spindle_use), ("HTS_SPEC_RQN", required),
            ("HTS_SPEC_DISK_TEMPLATE", planner.template),
            ("HTS_FIN_SCORE", f"{standard.score:.8f}"), ("HTS_FIN_INST_CNT", standard.instances),
            ("HTS_ALLOC_INSTANCES", standard.allocated), ("HTS_ALLOC_FAIL_REASON", standard.reason())]
    out += [(f"HTS_ALLOC_{name.upper()}_CNT", standard.failures.get(name, 0)) for name in FAIL_NAMES[1:]]
    out.append(("HTS_OK", 1))
    return out
