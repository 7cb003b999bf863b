"""Seeded generator of skewed test clusters (uneven placement, drbd and plain instances) for tests and bench.

The properties follow shared/reference/htools.md section 10.2; the code and numbers are our own.
"""

import random

from fastpath.model import Cluster, Group, Instance, Node, Policy, Spec

_MEMORIES = (512, 1024, 2048, 4096, 8192, 16384)
_MEMORY_WEIGHTS = (10, 20, 30, 22, 12, 6)
_SERVICES = ("web", "db", "dns", "cache")


def _node_sizes(rng: random.Random, count: int, inst_mem: int, inst_dsk: int, inst_cpu: int) -> list[tuple]:
    classes = [rng.choice((0.7, 1.0, 1.5)) for _ in range(count)]
    scale = sum(classes)
    sizes = []
    for factor in classes:
        # Sized so the instances fill about 55 % of memory on average, counting drbd secondaries' disk.
        mem = int(inst_mem / 0.55 * factor / scale) // 1024 * 1024 + 4096
        dsk = int(inst_dsk / 0.55 * factor / scale) // 1024 * 1024 + 102400
        cpu = max(4, int(inst_cpu / 2.2 * factor / scale))
        sizes.append((mem, dsk, cpu))
    return sizes


def _instances(rng: random.Random, count: int) -> list[Instance]:
    instances = []
    for index in range(count):
        template = "drbd" if rng.random() < 0.75 else "plain"
        status = "ADMIN_down" if rng.random() < 0.07 else "running"
        tags = [f"service:{rng.choice(_SERVICES)}"] if rng.random() < 0.30 else []
        instances.append(Instance(
            name=f"inst-{index:05d}", mem=rng.choices(_MEMORIES, _MEMORY_WEIGHTS)[0],
            dsk=rng.randint(10, 320) * 1024, vcpus=rng.randint(1, 8), status=status,
            auto_balance=rng.random() >= 0.02, pnode="", snode="", template=template, tags=tags,
            spindle_use=1))
    return instances


class _Filler:
    """Tracks what each node has left while placing instances."""

    def __init__(self, nodes: list[Node]):
        self.nodes = nodes
        self.mem = [int(n.t_mem) - n.n_mem for n in nodes]
        self.dsk = [int(n.t_dsk) for n in nodes]
        self.cpu = [n.node_cpus for n in nodes]
        self.spindles = [0 for _ in nodes]

    def fits(self, k: int, inst: Instance, primary: bool) -> bool:
        node = self.nodes[k]
        if self.dsk[k] - inst.dsk <= 0 or self.spindles[k] + 1 > 32 * node.spindles:
            return False
        if primary:
            return self.mem[k] - inst.mem > 0 and (self.cpu[k] + inst.vcpus) / node.t_cpu <= 4.0
        return True

    def take(self, k: int, inst: Instance, primary: bool) -> None:
        self.dsk[k] -= inst.dsk
        self.spindles[k] += 1
        if primary:
            self.mem[k] -= inst.mem if inst.status == "running" else 0
            self.cpu[k] += inst.vcpus


def _place(rng: random.Random, nodes: list[Node], instances: list[Instance]) -> list[Instance]:
    weights = []
    for _ in nodes:
        roll = rng.random()
        weights.append(6.0 if roll < 0.15 else 0.15 if roll < 0.30 else 1.0)
    filler = _Filler(nodes)
    placed = []
    for inst in instances:
        order = rng.choices(range(len(nodes)), weights, k=8)
        primary = next((k for k in order if filler.fits(k, inst, True)), None)
        if primary is None:
            continue
        secondary = None
        if inst.template == "drbd":
            secondary = next((k for k in rng.choices(range(len(nodes)), weights, k=8)
                              if k != primary and filler.fits(k, inst, False)), None)
            if secondary is None:
                continue
            filler.take(secondary, inst, False)
            inst.snode = nodes[secondary].name
        filler.take(primary, inst, True)
        inst.pnode = nodes[primary].name
        placed.append(inst)
    return placed


def _fill_free(rng: random.Random, nodes: list[Node], instances: list[Instance]) -> None:
    index = {n.name: k for k, n in enumerate(nodes)}
    used_mem = [0] * len(nodes)
    used_dsk = [0] * len(nodes)
    for inst in instances:
        if inst.status == "running":
            used_mem[index[inst.pnode]] += inst.mem
        used_dsk[index[inst.pnode]] += inst.dsk
        if inst.snode:
            used_dsk[index[inst.snode]] += inst.dsk
    for k, node in enumerate(nodes):
        # A third of the nodes report some memory the instances do not explain (htools' xMem > 0).
        missing = rng.randint(1, 200) if rng.random() < 1 / 3 else 0
        node.f_mem = max(0, int(node.t_mem) - node.n_mem - used_mem[k] - missing)
        node.f_dsk = max(0, int(node.t_dsk) - used_dsk[k])


def generate(nodes: int, instances: int, seed: int) -> Cluster:
    """A one-group cluster of `nodes` nodes and up to `instances` instances, skewed on purpose."""
    rng = random.Random(seed)
    wanted = _instances(rng, instances)
    sizes = _node_sizes(rng, nodes, sum(i.mem for i in wanted), sum(i.dsk * 1.75 for i in wanted),
                        sum(i.vcpus for i in wanted))
    node_list = []
    for k, (mem, dsk, cpu) in enumerate(sizes):
        node_list.append(Node(name=f"node-{k:04d}", t_mem=float(mem), n_mem=rng.randint(1, 4) * 1024, f_mem=0,
                              t_dsk=float(dsk), f_dsk=0, t_cpu=float(cpu), offline=False, group="uuid-default",
                              master=k == 0, spindles=rng.choice((2, 4, 6))))
    placed = _place(rng, node_list, wanted)
    _fill_free(rng, node_list, placed)
    policy = Policy(std=Spec(1024, 1, 10240, 1, 1, 1),
                    minmax=[(Spec(128, 1, 1024, 1, 1, 1), Spec(65536, 16, 1048576, 16, 8, 12))],
                    templates=["drbd", "plain", "diskless", "file"], vcpu_ratio=4.0, spindle_ratio=32.0)
    cluster = Cluster(groups=[Group("default", "uuid-default")], nodes=node_list, instances=placed,
                      tags=["htools:iextags:service"], policy=policy,
                      group_policies={"default": policy}, policy_given=True)
    return cluster
