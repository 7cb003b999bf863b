"""hail's global N+1 check for every allocation candidate of a group, exact and incremental.

hail (3.0.2, without `--no-capacity-checks`) asks of each candidate whether the cluster with the
new instance placed stays globally N+1 redundant: every node can be emptied, its drbd primaries
failed over and its other instances re-created elsewhere in its group. The failovers are htools'
`move` of a Failover with soft errors ignored: the migration tags must allow it, the secondary
must keep free memory and free disk above 0, the old primary (unless offline) free disk above 0.
A group that already fails N+1 usually fails this simulation too, but not always (a down drbd
instance is reserved for on its secondary yet takes no memory there when failed over), so only
the simulation decides.

A candidate only lowers resources on its primary (memory and disk) and secondary (disk), so a
node's evacuation comes out as without the candidate unless the evacuation used one of those
nodes (a failover target or a node an instance was re-created on) or the node is one of them:
re-created instances go to the node with most free memory that holds them, and lowering a node
that was never chosen changes no choice, nor makes a failed step succeed. Each node's evacuation
is simulated once without the candidate; per candidate only the nodes whose evacuation touched
its primary or secondary, and those two, are simulated again. The answer is the one a full
simulation per candidate gives. For the same reason a candidate fails outright when some node's
evacuation failed without touching its primary or secondary; `CandidateCheck.secondaries` lists,
per primary, the only secondaries that can pass, so a group with many failing nodes costs a few
set operations per primary instead of one scored candidate per pair.
"""

from bisect import insort

from fastpath.spec import KIND_LOCAL, KIND_MIRRORED, Spec


def free_resources(engine, spec: Spec) -> tuple[list[int], list[int], list[int], list[list[int]]]:
    """Each node's unallocated memory, free disk and free spindles now, and its primaries, from the placement."""
    nodes, it = spec.nodes, spec.instances
    memory = list(nodes["mem_base"])
    disk = list(nodes["f_dsk"])
    primaries: list[list[int]] = [[] for _ in range(spec.n_nodes)]
    forthcoming = set(spec.forthcoming)  # left out by the engines (htools' real figures omit them)
    column = engine.instance_column
    pnodes, snodes, dsks, mems, uses = (column(name) for name in ("pnode", "snode", "dsk", "mem", "uses_mem"))
    for i in range(engine.count):
        p, s, dsk = pnodes[i], snodes[i], dsks[i]
        # Free disk was reported at load: undo where the instance was, apply where it is.
        if i < spec.n_instances and i not in forthcoming:
            for k in (it["pnode"][i], it["snode"][i]):
                if k >= 0:
                    disk[k] += dsk
        for k in (p, s):
            if k >= 0:
                disk[k] -= dsk
        if p >= 0:
            memory[p] -= mems[i] * uses[i]
            primaries[p].append(i)
    return memory, disk, engine.free_spindles(), primaries


class Evacuation:
    """Node evacuations (hard limits only) over free resources that differ from `memory`, the base,
    only on a few nodes named per run.

    Re-creation takes the node with most free memory that holds the instance (of equals the first
    in node order): the nodes whose memory is as in the base are walked in the base's order and the
    first that fits is their best; the few others are compared directly."""

    def __init__(self, engine, spec: Spec, memory: list[int]):
        self.engine = engine
        group = spec.nodes["group"]
        self.order = {g: [k for k in sorted(range(spec.n_nodes), key=lambda k: (-memory[k], k)) if group[k] == g]
                      for g in set(group)}
        self.group = group
        kinds, mems, uses, dsks, sps = (engine.instance_column(name)
                                        for name in ("kind", "mem", "uses_mem", "dsk", "disk_sp"))
        # Per instance: drbd?, memory it takes, memory (the re-creation order), disk, disk spindles
        # (-1 unknown), local storage?
        self.facts = [(kind == KIND_MIRRORED, mem * use, mem, dsk, sp, kind in (KIND_LOCAL, KIND_MIRRORED))
                      for kind, mem, use, dsk, sp in zip(kinds, mems, uses, dsks, sps)]
        self.excl = spec.nodes["excl"]
        self.secondaries = engine.instance_column("snode")
        nodes = spec.nodes
        self.offline = nodes["offline"]
        self.mig, self.rmig = nodes["mig_mask"], nodes["rmig_mask"]  # htools' checkMigration

    def run(self, n: int, memory: list[int], disk: list[int], spindles: list[int], primaries: list[int],
            placed: tuple[int, int, int] = (-1, -1, -1)) -> tuple[bool, set[int]]:
        """Whether node n can be emptied, and the nodes the evacuation used: drbd primaries fail
        over to their secondaries, other instances are re-created (largest memory first) on the
        node of n's group with most free memory that holds them, where hail picks the best-scoring
        node; the question asked is the same. `memory` may differ from the base on placed[1] only.
        On exclusive storage free spindles must stay at 0 or above (an instance without a spindle
        count fails there)."""
        mem: dict[int, int] = {}  # free memory where this evacuation changed it
        dsk: dict[int, int] = {}
        used: set[int] = set()
        others = []
        for i in primaries:
            drbd, need_mem, _, _, need_sp, _ = self.facts[i]
            s = placed[2] if i == placed[0] else self.secondaries[i]
            if drbd and s >= 0:
                used.add(s)
                mem[s] = mem.get(s, memory[s]) - need_mem
                # htools' forced failover: hard limits on the new primary, free disk on the old one.
                if (mem[s] <= 0 or disk[s] <= 0 or (disk[n] <= 0 and not self.offline[n])
                        or self.mig[n] & ~self.rmig[s] or self._spindles_fail(s, spindles[s], need_sp)
                        or self._spindles_fail(n, spindles[n], need_sp)):
                    return False, used
            else:
                others.append(i)
        dirty = used | {placed[1]}
        sp: dict[int, int] = {}
        for i in sorted(others, key=lambda i: -self.facts[i][2]):
            _, need_mem, _, need_dsk, need_sp, local = self.facts[i]
            k = self._target(n, (memory, disk, spindles), (mem, dsk, sp), dirty, self.facts[i])
            if k < 0:
                return False, used
            used.add(k)
            dirty.add(k)
            mem[k] = mem.get(k, memory[k]) - need_mem
            dsk[k] = dsk.get(k, disk[k]) - need_dsk
            if local and self.excl[k]:
                sp[k] = sp.get(k, spindles[k]) - need_sp
        return True, used

    def _spindles_fail(self, k: int, free: int, need: int) -> bool:
        # A drbd failover leaves a node's free spindles as they were, or -1 without a spindle count.
        return bool(self.excl[k]) and (need < 0 or free < 0)

    def _target(self, n: int, base: tuple, changed: tuple, dirty: set[int], facts: tuple) -> int:
        """The node of n's group (not n) with most free memory that holds the instance, -1 if none;
        `base` is (memory, disk, spindles) per node, `changed` what this evacuation changed of them."""
        (memory, disk, spindles), (mem, dsk, sp) = base, changed
        _, need_mem, _, need_dsk, need_sp, local = facts

        def fits(k: int) -> bool:
            if local and self.excl[k] and (need_sp < 0 or sp.get(k, spindles[k]) - need_sp < 0):
                return False
            return mem.get(k, memory[k]) - need_mem > 0 and (need_dsk == 0 or dsk.get(k, disk[k]) - need_dsk > 0)
        best = -1
        for k in self.order[self.group[n]]:
            if k != n and k not in dirty and fits(k):
                best = k
                break
        for k in dirty:
            if k >= 0 and k != n and self.group[k] == self.group[n] and fits(k) and (
                    best < 0 or (mem.get(k, memory[k]), -k) > (mem.get(best, memory[best]), -best)):
                best = k
        return best


def globally_redundant(engine, spec: Spec) -> bool:
    """hail's global N+1 test on the placement as it is."""
    memory, disk, spindles, primaries = free_resources(engine, spec)
    evacuation = Evacuation(engine, spec, memory)
    return all(evacuation.run(n, memory, disk, spindles, primaries[n])[0] for n in range(spec.n_nodes))


class CandidateCheck:
    """hail's global N+1 test for the candidates (primary, secondary) of one unplaced instance."""

    def __init__(self, engine, spec: Spec, inst: int):
        self.inst = inst
        self.memory, self.disk, self.spindles, self.primaries = free_resources(engine, spec)
        self.evacuation = Evacuation(engine, spec, self.memory)
        self.need_mem = engine.instance_value(inst, "mem") * engine.instance_value(inst, "uses_mem")
        self.need_dsk = engine.instance_value(inst, "dsk")
        self.need_sp = engine.instance_value(inst, "disk_sp")
        self.users: list[set[int]] = [set() for _ in range(spec.n_nodes)]  # k: nodes whose evacuation used k
        self.used: list[set[int]] = []  # n: the nodes n's evacuation used
        self.failing = set()
        for n in range(spec.n_nodes):
            ok, used = self.evacuation.run(n, self.memory, self.disk, self.spindles, self.primaries[n])
            if not ok:
                self.failing.add(n)
            self.used.append(used)
            for k in used:
                self.users[k].add(n)
        # k: the failing evacuations a candidate on k simulates again (k is their node or they used k).
        self.hits = [self.failing & (self.users[k] | {k}) for k in range(spec.n_nodes)]
        self.most_hits = max(map(len, self.hits), default=0)

    def primary_may_pass(self, pnode: int) -> bool:
        """Whether a one-node candidate on pnode can pass (else it fails the check for sure)."""
        return len(self.hits[pnode]) == len(self.failing)

    def secondaries(self, pnode: int) -> set[int] | None:
        """The only nodes s with which candidate (pnode, s) can pass; None: any node may.

        Every failing evacuation the primary leaves as it is must be one the secondary simulates
        again: the secondary is its node or one it used."""
        left = len(self.failing) - len(self.hits[pnode])
        if left == 0:
            return None
        if left > self.most_hits:
            return set()
        rest = self.failing - self.hits[pnode]
        first = min(rest)
        return {s for s in self.used[first] | {first} if s != pnode and rest <= self.hits[s]}

    def redundant(self, pnode: int, snode: int) -> bool:
        """Whether the cluster stays globally N+1 redundant with the instance on (pnode, snode)."""
        changed = {pnode} if snode < 0 else {pnode, snode}
        again = set(changed).union(*(self.users[k] for k in changed))
        if self.failing - again:
            return False
        memory, disk, spindles = list(self.memory), list(self.disk), list(self.spindles)
        memory[pnode] -= self.need_mem
        for k in changed:
            disk[k] -= self.need_dsk
            if self.evacuation.excl[k]:
                spindles[k] = -1 if self.need_sp < 0 else spindles[k] - self.need_sp
        placed = (self.inst, pnode, snode)
        for n in sorted(again):
            primaries = self.primaries[n]
            if n == pnode:
                primaries = list(primaries)
                insort(primaries, self.inst)
            if not self.evacuation.run(n, memory, disk, spindles, primaries, placed)[0]:
                return False
        return True
