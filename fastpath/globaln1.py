"""hail's global N+1 check for every allocation candidate of a group, exact and incremental.

hail (3.0.2, without `--no-capacity-checks`) asks of each candidate whether the cluster with the
new instance placed stays globally N+1 redundant: every node can be emptied, its drbd primaries
failed over, its shared-storage primaries moved and its other instances re-created elsewhere in
its group (GlobalN1.hs canEvacuateNode). The failovers are htools' `move` of a Failover with soft
errors ignored: the migration tags must allow it, the secondary must keep free memory and free
disk above 0, the old primary (unless offline) free disk above 0. Moved and re-created instances
go to the best-scoring node of the group that takes them (hard limits, and for a re-created one
the instance policy, whose spindle part depends on the node's exclusive storage). A group that
already fails N+1 usually fails this simulation too, but not always (a down drbd instance is
reserved for on its secondary yet takes no memory there when failed over), so only the
simulation decides.

Most evacuations are settled without choosing: a failed failover, or an instance no node takes,
fails it whatever hail chooses; a node that takes all the moved instances at once makes it pass
whatever hail chooses, and so do enough slots (`Evacuation._slots`). Only the rest is simulated
on the engine with hail's choices (`Evacuation.simulate`). A candidate only lowers resources on
its primary (memory and disk) and secondary (disk), so per candidate only the evacuations whose
failovers used those nodes, those two nodes' own, those whose only all-taking nodes they are,
those passing by slots with fewer to spare than those two nodes hold, and the simulated ones are
looked at again. An evacuation that fails for sure stays failed whatever a candidate does, so then every
candidate fails. The answer is the one a full simulation per candidate gives.
"""

from bisect import insort
from weakref import WeakKeyDictionary

from fastpath.spec import (ALLOC_NEVER, ALLOC_PRIMARY, FAILOVER_TO_ANY, IGNORE_SOFT, INSTANCE_FIELDS, KIND_LOCAL,
                           KIND_MIRRORED, KIND_SHARED, OK, Spec)


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


PASS, FAIL, UNSURE = "pass", "fail", "unsure"  # what `Evacuation.classify` settles
MOVE, RECREATE, STUCK = "move", "recreate", "stuck"  # how an evacuation takes a non-drbd instance away
_SLOTS: "WeakKeyDictionary[object, list[int]]" = WeakKeyDictionary()  # per engine, shared by its checks
_POLICY: "WeakKeyDictionary[object, object]" = WeakKeyDictionary()


def use_policy(engine, admits, how) -> None:
    """Give the checks on `engine` what they need of the instances beyond the engine's arrays:
    `admits(instance, group, exclusive_storage)`, hail's instance policy test of a re-created
    instance, and `how(instance)`, how hail empties a node of a non-drbd instance by its disk
    template: MOVE (diskTemplateMovable and mirrored externally: a failover to any node),
    RECREATE (not movable: a copy elsewhere) or STUCK (diskless: movable but not mirrored, so
    hail's evacuation fails). Without them every instance is admitted, and shared storage moves
    while everything else is re-created."""
    _POLICY[engine] = (admits, how)


def _admit_all(inst: int, group: int, exclusive: bool) -> bool:
    return True


def _by_kind(engine, inst: int) -> str:
    return MOVE if engine.instance_value(inst, "kind") == KIND_SHARED else RECREATE


def _fits(room: int, need: int) -> int:
    """How many needs of up to `need` fit in `room` one after another (each while room >= need)."""
    if room < 0:
        return 0
    return room // need if need > 0 else 1 << 30


class Evacuation:
    """Node evacuations (hard limits only) over free resources that differ from `memory`, the base,
    only on a few nodes named per run.

    hail empties a node in three steps: its drbd primaries fail over to their secondaries, its
    shared-storage primaries move to the best-scoring node of its group (a failover to any node),
    and its other instances, largest memory first, are re-created on the best-scoring node of its
    group that holds them (the node keeps them: only their new copies count). Which node scores
    best depends on the whole cluster, so `classify` first settles what does not depend on it: a
    failover that fails, or an instance no node holds, fails the evacuation whatever the choices;
    a node that holds all the moved instances at once makes it pass whatever the choices (hail
    always finds a node, that one at least), and so do enough slots (`_slots`). Only what is left
    is simulated on the engine (`simulate`), with hail's choices."""

    def __init__(self, engine, spec: Spec, memory: list[int]):
        self.engine = engine
        group = spec.nodes["group"]
        self.members = {g: [k for k in range(spec.n_nodes) if group[k] == g] for g in set(group)}
        self.order = {g: sorted(members, key=lambda k: (-memory[k], k)) for g, members in self.members.items()}
        self.group = group
        self.admits, self.how = _POLICY.get(engine, (_admit_all, lambda i: _by_kind(engine, i)))
        self.facts: list[tuple | None] = []
        self.excl = spec.nodes["excl"]
        self.secondaries = engine.instance_column("snode")
        nodes = spec.nodes
        self.offline = nodes["offline"]
        self.mig, self.rmig = nodes["mig_mask"], nodes["rmig_mask"]  # htools' checkMigration
        self.slots = _SLOTS.setdefault(engine, [])  # engine slots for the copies of re-created instances
        self.admitted: dict[tuple[int, int, bool], bool] = {}

    def facts_of(self, i: int) -> tuple:
        """drbd?, memory it takes, memory (the re-creation order), disk, disk spindles (-1 unknown),
        local storage?, moved (not re-created)?, stuck (hail cannot move it)? of instance i."""
        if i >= len(self.facts):
            self.facts += [None] * (i + 1 - len(self.facts))
        if self.facts[i] is None:
            value = self.engine.instance_value
            kind, mem = value(i, "kind"), value(i, "mem")
            how = RECREATE if kind == KIND_MIRRORED else self.how(i)
            self.facts[i] = (kind == KIND_MIRRORED, mem * value(i, "uses_mem"), mem, value(i, "dsk"),
                             value(i, "disk_sp"), kind in (KIND_LOCAL, KIND_MIRRORED), how == MOVE, how == STUCK)
        return self.facts[i]

    def classify(self, n: int, memory: list[int], disk: list[int], spindles: list[int], primaries: list[int],
                 placed: tuple[int, int, int] = (-1, -1, -1),
                 want: int = 1) -> tuple[str, dict[int, int], list[int], tuple[dict[int, int], int] | None]:
        """(PASS, FAIL or UNSURE, each failover target's free memory after the failovers, up to
        `want` nodes that take every moved instance at once, and for a pass by slots (`_slots`)
        each counted node's slots with the slots to spare, else None).

        `placed` is a candidate (instance, primary, secondary) already counted in the figures."""
        mem: dict[int, int] = {}  # free memory where the failovers changed it
        moving = []
        for i in primaries:
            drbd, need_mem, _, _, need_sp, *_ = self.facts_of(i)
            s = placed[2] if i == placed[0] else self.secondaries[i]
            if drbd and s >= 0:
                mem[s] = mem.get(s, memory[s]) - need_mem
                # htools' forced failover: hard limits on the new primary, free disk on the old one.
                if (mem[s] <= 0 or disk[s] <= 0 or (disk[n] <= 0 and not self.offline[n])
                        or self.mig[n] & ~self.rmig[s] or self._spindles_fail(s, spindles[s], need_sp)
                        or self._spindles_fail(n, spindles[n], need_sp)):
                    return FAIL, mem, [], None
            else:
                moving.append(i)
        if not moving:
            return PASS, mem, [], None
        g = self.group[n]
        order = self.order[g]  # the group's nodes, n among them (skipped below)
        facts = [self.facts_of(i) for i in moving]
        if any(f[7] for f in facts):
            return FAIL, mem, [], None
        # hail re-creates an instance only where the instance policy admits it (the spindle part
        # depends on the node's exclusive storage); a shared one moves without that test.
        admitted = [{excl: f[6] or self._admits(i, g, excl) for excl in (False, True)} for i, f in zip(moving, facts)]
        # On exclusive storage every instance added takes its disks' spindles (one without a count
        # leaves -1), local storage or not; only a local one fails when none are left.
        total = (sum(f[1] for f in facts), sum(f[3] for f in facts if f[5]),
                 sum(max(f[4], 0) for f in facts), any(f[4] < 0 for f in facts),
                 any(f[5] for f in facts), any(f[6] for f in facts))
        holders = []
        for k in order:  # most free memory first: the likeliest to take them all
            if k != n and all(a[bool(self.excl[k])] for a in admitted) and self._holds(
                    n, k, mem.get(k, memory[k]), disk[k], spindles[k], total):
                holders.append(k)
                if len(holders) == want:
                    break
        if holders:
            return PASS, mem, holders, None
        slots = self._slots(n, order, mem, memory, disk, spindles, facts, admitted, total)
        if sum(slots.values()) >= len(moving):
            return PASS, mem, [], (slots, sum(slots.values()) - len(moving))
        for f, a in zip(facts, admitted):
            one = (f[1], f[3] if f[5] else 0, f[4] if f[5] else 0, f[5] and f[4] < 0, f[5], f[6])
            if not any(k != n and a[bool(self.excl[k])] and self._holds(n, k, mem.get(k, memory[k]), disk[k],
                                                                        spindles[k], one) for k in order):
                return FAIL, mem, [], None
        return UNSURE, mem, [], None

    def _slots(self, n: int, order: list[int], mem: dict[int, int], memory: list[int], disk: list[int],
               spindles: list[int], facts: list[tuple], admitted: list[dict[bool, bool]],
               total: tuple) -> dict[int, int]:
        """How many of the moved instances each online node of the group takes for sure, whichever
        of them come and in whatever order: its free memory (disk, spindles) over the largest need,
        less one unit for hail's strict 'more than needed'. Each instance placed anywhere takes at
        most one slot of its node, so while slots are left some node holds the next instance:
        with at least as many slots as instances the evacuation passes whatever hail chooses."""
        need_mem = max(f[1] for f in facts)
        local = [f for f in facts if f[5]]
        need_dsk = max((f[3] for f in local), default=0)
        need_sp = max(max(f[4], 0) for f in facts)
        _, _, _, unknown_sp, any_local, shared = total
        slots = {}
        for k in order:
            if k == n or self.offline[k] or not all(a[bool(self.excl[k])] for a in admitted):
                continue
            if shared and self.mig[n] & ~self.rmig[k]:
                continue
            free = mem.get(k, memory[k])
            count = _fits(free - 1, need_mem)
            if any_local:
                count = min(count, _fits(disk[k] - 1, need_dsk))
                if self.excl[k]:
                    # A spindle-less copy leaves -1 free there, however many were free.
                    count = 0 if unknown_sp else min(count, _fits(spindles[k], need_sp))
            if count > 0:
                slots[k] = count
        return slots

    def _admits(self, i: int, g: int, excl: bool) -> bool:
        key = (i, g, excl)
        if key not in self.admitted:
            self.admitted[key] = self.admits(i, g, excl)
        return self.admitted[key]

    def _holds(self, n: int, k: int, free_mem: int, free_dsk: int, free_sp: int, need: tuple) -> bool:
        """Whether node k takes instances needing (memory, local disk, spindles, some instance
        without a spindle count, any local, any shared) under hail's forced checks, whatever the
        order they come in."""
        need_mem, need_dsk, need_sp, unknown_sp, local, shared = need
        if free_mem - need_mem <= 0:
            return False
        if local and free_dsk - need_dsk <= 0:
            return False
        if local and self.excl[k] and (unknown_sp or free_sp - need_sp < 0):
            return False
        return not (shared and self.mig[n] & ~self.rmig[k])

    def _spindles_fail(self, k: int, free: int, need: int) -> bool:
        # A drbd failover leaves a node's free spindles as they were, or -1 without a spindle count.
        return bool(self.excl[k]) and (need < 0 or free < 0)

    def simulate(self, n: int, primaries: list[int], placed: tuple[int, int, int] = (-1, -1, -1)) -> bool:
        """hail's evacuation of node n on the engine, with its choices; the engine is left as it was.

        `placed` (instance, primary, secondary) is put on the engine first (an unplaced candidate)."""
        e = self.engine
        touched = e.touched_flags()
        undo: list[tuple[int, int, int]] = []  # (instance, primary, secondary) to put back, last first

        def move(i: int, p: int, s: int) -> None:
            undo.append((i, *e.nodes_of(i)))
            e.place(i, p, s)
        try:
            if placed[0] >= 0:
                move(*placed)
            shared, others = [], []
            for i in reversed(primaries):  # htools' primary list: the last instance added first
                drbd, *_, is_shared, stuck = self.facts_of(i)
                if stuck:
                    return False
                if drbd and e.nodes_of(i)[1] >= 0:
                    move(i, e.nodes_of(i)[1], n)
                elif is_shared:
                    shared.append(i)
                else:
                    others.append(i)
            targets = [k for k in self.members[self.group[n]] if k != n]
            for i in shared:
                best = None
                for t in targets:
                    # hail's evacOneNodeOnly scores the group's nodes only
                    status, score = e.eval_move(self.group[n], i, FAILOVER_TO_ANY, t, IGNORE_SOFT)
                    if status == OK and (best is None or score <= best[1]):
                        best = (t, score)  # of equal scores the last node wins
                if best is None:
                    return False
                move(i, best[0], -1)
            g = self.group[n]
            for j, i in enumerate(sorted(others, key=lambda i: -self.facts_of(i)[2])):
                mask = [ALLOC_NEVER] * e.n
                for t in targets:
                    if self._admits(i, g, bool(self.excl[t])):
                        mask[t] = ALLOC_PRIMARY
                values = {name: e.instance_value(i, name) for name in INSTANCE_FIELDS}
                values["pnode"] = values["snode"] = -1
                if j == len(self.slots):
                    self.slots.append(e.define_instance(values))
                else:
                    e.define_instance(values, self.slots[j])
                found, _ = e.best_alloc(self.group[n], self.slots[j], 1, mask, IGNORE_SOFT, -1)
                if found is None:
                    return False
                move(self.slots[j], found[0], -1)
            return True
        finally:
            for i, p, s in reversed(undo[1:]):
                e.place(i, p, s)
            if undo:  # the first move last, with the touched flags and one rebuild
                e.restore(*undo[0], touched)


def globally_redundant(engine, spec: Spec) -> bool:
    """hail's global N+1 test on the placement as it is."""
    memory, disk, spindles, primaries = free_resources(engine, spec)
    evacuation = Evacuation(engine, spec, memory)
    for n in range(spec.n_nodes):
        status = evacuation.classify(n, memory, disk, spindles, primaries[n])[0]
        if status == FAIL or (status == UNSURE and not evacuation.simulate(n, primaries[n])):
            return False
    return True


class CandidateCheck:
    """hail's global N+1 test for the candidates (primary, secondary) of one unplaced instance."""

    def __init__(self, engine, spec: Spec, inst: int):
        self.inst = inst
        self.memory, self.disk, self.spindles, self.primaries = free_resources(engine, spec)
        self.evacuation = Evacuation(engine, spec, self.memory)
        self.need_mem = engine.instance_value(inst, "mem") * engine.instance_value(inst, "uses_mem")
        self.need_dsk = engine.instance_value(inst, "dsk")
        self.need_sp = engine.instance_value(inst, "disk_sp")
        self.users: list[set[int]] = [set() for _ in range(spec.n_nodes)]  # k: nodes whose failovers used k
        # n: each failover target of n's evacuation, with its free memory after the failovers
        self.after: list[dict[int, int]] = []
        # Evacuations that fail whatever hail chooses. A candidate only takes resources (memory and
        # disk on its primary, disk and spindles on its secondary, one more instance to move off
        # the primary), and each such failure (a failover over a limit, an instance no node
        # holds) only gets worse with less, so with any of them every candidate fails.
        self.failing = set()
        self.unsure = set()  # evacuations to simulate with every candidate
        self.fragile: list[tuple[int, set[int]]] = []  # (n, its only holders) when they are one or two nodes
        self.slotted: list[tuple[int, dict[int, int], int]] = []  # (n, its slots, spare) when it passes by slots
        for n in range(spec.n_nodes):
            status, after, holders, slots = self.evacuation.classify(n, self.memory, self.disk, self.spindles,
                                                                     self.primaries[n], want=3)
            if status == FAIL:
                self.failing.add(n)
                break  # every candidate fails: nothing else is needed
            if status == UNSURE:
                self.unsure.add(n)
            elif 0 < len(holders) <= 2:
                self.fragile.append((n, set(holders)))
            elif slots is not None:
                self.slotted.append((n, *slots))
            self.after.append(after)
            for k in after:
                self.users[k].add(n)

    def redundant(self, pnode: int, snode: int) -> bool:
        """Whether the cluster stays globally N+1 redundant with the instance on (pnode, snode)."""
        if self.failing:
            return False
        changed = {pnode} if snode < 0 else {pnode, snode}
        users = set().union(*(self.users[k] for k in changed))
        memory, disk, spindles = list(self.memory), list(self.disk), list(self.spindles)
        memory[pnode] -= self.need_mem
        excl = self.evacuation.excl
        for k in changed:
            disk[k] -= self.need_dsk
            if excl[k]:
                spindles[k] = -1 if self.need_sp < 0 else spindles[k] - self.need_sp
        full = changed | self.unsure
        full.update(n for n, holders in self.fragile if holders <= changed)
        # A pass by slots holds while the unchanged nodes' slots suffice (the changed ones may lose all theirs).
        full.update(n for n, slots, spare in self.slotted if sum(slots.get(k, 0) for k in changed) > spare)
        for n in users - full:
            # n's evacuation passed and some node not changed takes its moved instances: only its
            # failovers onto the changed nodes can fail now.
            for k in changed & self.after[n].keys():
                if (self.after[n][k] - (self.need_mem if k == pnode else 0) <= 0 or disk[k] <= 0
                        or (excl[k] and spindles[k] < 0)):
                    return False
        placed = (self.inst, pnode, snode)
        unsure = []
        for n in sorted(full):
            primaries = self.primaries[n]
            if n == pnode:
                primaries = list(primaries)
                insort(primaries, self.inst)
            status = self.evacuation.classify(n, memory, disk, spindles, primaries, placed)[0]
            if status == FAIL:
                return False
            if status == UNSURE:
                unsure.append((n, primaries))
        return all(self.evacuation.simulate(n, primaries, placed) for n, primaries in unsure)
