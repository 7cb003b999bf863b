"""The pure-Python twin of the C engine: the same state, checks, score and search, in plain Python.

It mirrors cairn_fastpath.c function for function so the two can be compared; it is exact where the
C is incremental (the C re-checks near-best candidates exactly, so both choose the same move).
"""

import math
from collections.abc import Sequence

from fastpath.spec import (AGGREGATION, ALLOC_EITHER, ALLOC_PRIMARY, ALLOC_SECONDARY, EVAC_MODE, FAIL_CPU, FAIL_DISK,
                           FAIL_INTERNAL, FAIL_MEM, FAIL_MIG, FAIL_SPINDLES, FAIL_TAGS, FAILOVER, FAILOVER_AND_REPLACE, FAILOVER_TO_ANY, FORTH_FIELDS, IGNORE_SOFT, KIND_LOCAL,
                           KIND_MIRRORED, KIND_SHARED, NO_DISK_MOVES, NO_INSTANCE_MOVES, OK, REPLACE_AND_FAILOVER,
                           REPLACE_PRIMARY, REPLACE_SECONDARY, RESTRICTED_MIGRATION, WEIGHTS, Ranked, Spec, hail_order,
                           new_nodes)

# Per-node derived state, one list per node: the indices of its fields.
I_MEM, ALL_MEM, F_DSK, U_CPU, PCNT, SCNT, INST_SP, R_MEM, FAIL, TAGS_V, LOC_V, F_SP = range(12)
L_CPU, L_MEM, L_DSK, L_NET = range(12, 16)  # dynamic loads: primaries', and secondaries' too for disk
FSP_RESET = 16  # an instance without a spindle count was added: forthcoming free spindles -1
_UTIL = (("util_cpu", L_CPU), ("util_mem", L_MEM), ("util_dsk", L_DSK), ("util_net", L_NET))


def stddev(values: Sequence[float]) -> float:
    """Population standard deviation, two-pass, summed left to right as htools does."""
    if not values:
        return 0.0
    total = 0.0
    for v in values:
        total += v
    mean = total / len(values)
    acc = 0.0
    for v in values:
        acc += (v - mean) * (v - mean)
    return math.sqrt(acc / len(values))


def _popcount(x: int) -> int:
    return bin(x).count("1")


def _bits(x: int) -> list[int]:
    out, k = [], 0
    while x:
        if x & 1:
            out.append(k)
        x >>= 1
        k += 1
    return out


class Engine:
    """One cluster's mutable placement state over a `Spec`, with score, checks and search."""

    def __init__(self, spec: Spec, extra_instances: int = 0):
        self.spec = spec
        self.n = spec.n_nodes
        it = {name: list(values) for name, values in spec.instances.items()}
        # The forthcoming figures are the engine's own: moving a forthcoming instance changes them.
        nd = {**spec.nodes, **{name: list(spec.nodes[name]) for name in FORTH_FIELDS}}
        self.nd, self.it = nd, it
        self.pnode = list(it["pnode"])
        self.snode = list(it["snode"])
        self.forth_pnode = {i: self.pnode[i] for i in spec.forthcoming}
        for i in spec.forthcoming:
            self.pnode[i] = self.snode[i] = -1
        self.count = spec.n_instances
        self.touched = [0] * self.n
        self.dsk_delta = [0] * self.n
        self.sp_delta = [0] * self.n
        self.forth_base = [0] * self.n
        # Node loads, summed at load in instance order, then changed move by move in htools' order
        # (removals, then additions), as hbal does: float sums depend on the order.
        self.loads = [[0.0] * 4 for _ in range(self.n)]
        for i in range(self.count):
            if self.pnode[i] >= 0:
                self._load_change(self.loads[self.pnode[i]], i, 1.0, True, 0)
                if self.snode[i] >= 0:
                    self._load_change(self.loads[self.snode[i]], i, 1.0, False, 0)
        self._rebuild()
        # Memory of primaries htools counted as used at load; the forthcoming-aware free memory
        # moves with every primary's memory from then on.
        self.forth_base = [self.nd["f_mem"][k] + self.state[k][I_MEM] for k in range(self.n)]

    # ---- state -------------------------------------------------------------------------------------------------
    def _rebuild(self) -> None:
        # The tag counts' row: whole 64-bit words over every exclusion tag any instance has.
        n = self.n
        widest = max((mask.bit_length() for mask in self.it["excl_mask"][:self.count]), default=0)
        T = self.T = 64 * (widest // 64 + 1)
        self.state = [[0, 0, self.nd["f_dsk"][k] + self.dsk_delta[k], self.nd["node_cpus"][k], 0, 0, 0, 0, 0, 0, 0,
                       self.nd["f_sp"][k] + self.sp_delta[k], *self.loads[k], 0] for k in range(n)]
        self.tagcnt = [0] * (n * T)
        self.peers = [dict() for _ in range(n)]
        self.loccnt = {}
        self.loc_total = {}
        it = self.it
        for i in range(self.count):
            p, s = self.pnode[i], self.snode[i]
            if p < 0 and self.forth_pnode.get(i, -1) >= 0:
                # A forthcoming instance counts only in its primary's exclusion tags (htools' pTags).
                self.state[self.forth_pnode[i]][TAGS_V] += self._tag_add(self.forth_pnode[i], i)
            if p < 0:
                continue
            st = self.state[p]
            st[I_MEM] += it["mem"][i] * it["uses_mem"][i]
            st[ALL_MEM] += it["mem"][i]
            st[U_CPU] += it["vcpus"][i] * it["uses_cpu"][i]
            st[PCNT] += 1
            st[INST_SP] += self._sp_use(p, i)
            st[TAGS_V] += self._tag_add(p, i)
            st[LOC_V] += self._loc_contrib(i, p, s)
            self._loccnt_change(i, p, +1)
            if s >= 0:
                ss = self.state[s]
                ss[SCNT] += 1
                ss[INST_SP] += self._sp_use(s, i)
                self.peers[s][p] = self.peers[s].get(p, 0) + it["sec_mem"][i]
        for k in range(n):
            st = self.state[k]
            st[R_MEM] = max(self.peers[k].values(), default=0)
            if self.touched[k]:
                st[FAIL] = int(self._u_mem(k, st) <= st[R_MEM])
            else:
                st[FAIL] = int(self.nd["f_mem"][k] < st[R_MEM])

    def _load_change(self, load: list, i: int, sign: float, primary: bool, base: int = L_CPU) -> None:
        """Add (sign 1) or take away (-1) instance i's dynamic load at `load[base:base + 4]`: all of
        it as a primary, only the disk load as a secondary (htools' setPri/removePri and twins)."""
        for name, at in _UTIL:
            if primary or at == L_DSK:
                load[at - L_CPU + base] += sign * self.it[name][i]

    def _sp_use(self, k: int, i: int) -> int:
        # Spindle use counts only on nodes without exclusive storage (htools' calcSpindleUse).
        return 0 if self.nd["excl"][k] else self.it["spindle_use"][i]

    def _sp_after(self, k: int, i: int, f_sp: int, sign: int) -> int:
        """Free spindles after adding (sign -1) or removing (+1) instance i on node k: only exclusive
        storage counts them; an addition without a spindle count leaves -1, a removal changes nothing."""
        if not self.nd["excl"][k]:
            return f_sp
        if self.it["disk_sp"][i] < 0:
            return -1 if sign < 0 else f_sp
        return f_sp + sign * self.it["disk_sp"][i]

    def _free_disk_ratio(self, k: int, f_dsk: int, f_sp: int) -> float:
        # Of spindles on exclusive storage, else of disk; 1 without any.
        total = self.nd["t_sp"][k] if self.nd["excl"][k] else self.nd["t_dsk"][k]
        return (f_sp if self.nd["excl"][k] else f_dsk) / total if total > 0 else 1.0

    def _tag_add(self, node: int, i: int) -> int:
        gain = 0
        for t in _bits(self.it["excl_mask"][i]):
            if self.tagcnt[node * self.T + t] >= 1:
                gain += 1
            self.tagcnt[node * self.T + t] += 1
        return gain

    def _tag_remove(self, node: int, i: int) -> int:
        loss = 0
        for t in _bits(self.it["excl_mask"][i]):
            if self.tagcnt[node * self.T + t] >= 2:
                loss += 1
            self.tagcnt[node * self.T + t] -= 1
        return loss

    def _loc_contrib(self, i: int, p: int, s: int) -> int:
        lp = self.nd["loc_mask"][p]
        shared = _popcount(lp & self.nd["loc_mask"][s]) if s >= 0 else 0
        return shared + _popcount(self.it["desired_mask"][i] & ~lp)

    def _counted_locs(self, k: int) -> int:
        # The location-exclusion map is merged over the online nodes of one group.
        return self.nd["loc_mask"][k] if k >= 0 and not self.nd["offline"][k] else 0

    def _loccnt_change(self, i: int, p: int, sign: int) -> None:
        g = self.nd["group"][p]
        for loc in _bits(self._counted_locs(p)):
            for t in _bits(self.it["excl_mask"][i]):
                key = (g, loc, t)
                old = self.loccnt.get(key, 0)
                if sign > 0 and old >= 1:
                    self.loc_total[g] = self.loc_total.get(g, 0) + 1
                if sign < 0 and old >= 2:
                    self.loc_total[g] = self.loc_total.get(g, 0) - 1
                self.loccnt[key] = old + sign

    def _loc_delta(self, i: int, old_p: int, new_p: int) -> int:
        if old_p == new_p:
            return 0
        g = self.nd["group"][new_p]
        excl = _bits(self.it["excl_mask"][i])
        a = {(g, l, t) for l in _bits(self._counted_locs(old_p)) for t in excl}
        b = {(g, l, t) for l in _bits(self._counted_locs(new_p)) for t in excl}
        delta = 0
        for key in a - b:
            delta -= 1 if self.loccnt.get(key, 0) >= 2 else 0
        for key in b - a:
            delta += 1 if self.loccnt.get(key, 0) >= 1 else 0
        return delta

    def _u_mem(self, k: int, st: list) -> int:
        return self.nd["mem_base"][k] - st[I_MEM]

    # ---- node values and score ------------------------------------------------------------------------------
    def node_values(self, k: int, st: list) -> list[float]:
        """The 20 per-node values of the cost function for node k in state st."""
        nd = self.nd
        t_mem, t_dsk = nd["t_mem"][k], nd["t_dsk"][k]
        # Offline nodes loaded with unknown resources have zero totals; their ratios are unused.
        inv_mem = 1.0 / t_mem if t_mem else 0.0
        p_mem = self._u_mem(k, st) / t_mem if t_mem else 0.0
        p_dsk = self._free_disk_ratio(k, st[F_DSK], st[F_SP])
        r = st[R_MEM] / t_mem if t_mem else 0.0
        cpu = st[U_CPU] / nd["t_cpu"][k] / nd["cpu_speed"][k] if nd["t_cpu"][k] and nd["cpu_speed"][k] else 0.0
        sp = st[INST_SP] / nd["hi_spindles"][k] if nd["hi_spindles"][k] else 0.0
        # htools' *_forth metrics also count the forthcoming instances, which the state leaves out.
        forth = (self.forth_base[k] - st[ALL_MEM] - nd["forth_mem"][k]) / t_mem if inv_mem else 0.0
        dsk_forth = self._free_disk_ratio(k, st[F_DSK] - nd["forth_dsk"][k], self._forth_free_sp(k, st))
        cpu_forth = ((st[U_CPU] + nd["forth_cpu"][k]) / nd["t_cpu"][k] / nd["cpu_speed"][k]
                     if nd["t_cpu"][k] and nd["cpu_speed"][k] else 0.0)
        sp_forth = (st[INST_SP] + nd["forth_sp"][k]) / nd["hi_spindles"][k] if nd["hi_spindles"][k] else 0.0
        both = st[PCNT] + st[SCNT]
        n1 = float(both) if st[FAIL] else 0.0
        return [p_mem, p_dsk, n1, r, float(both), float(st[PCNT]), cpu, st[L_CPU], st[L_MEM], st[L_DSK], st[L_NET],
                float(st[TAGS_V]), sp, forth, dsk_forth, cpu_forth, sp_forth, float(st[LOC_V]), 0.0, r]

    def metrics(self, group: int, overrides: dict | None = None, loc_delta: int = 0) -> list[float]:
        """The 20 metric values over the nodes of `group`, with some node states replaced."""
        overrides = overrides or {}
        online, offline = [], []
        for k in range(self.n):
            if group >= 0 and self.nd["group"][k] != group:
                continue
            vals = self.node_values(k, overrides.get(k, self.state[k]))
            (offline if self.nd["offline"][k] else online).append(vals)
        out = []
        for m in range(20):
            agg = AGGREGATION[m]
            if agg == 0:
                out.append(stddev([v[m] for v in online]))
            elif agg == 1:
                out.append(_fsum_in_order(v[m] for v in online))
            elif agg == 2:
                out.append(_fsum_in_order(v[m] for v in offline))
            else:
                total = self._merged_loc_total() if group < 0 else self.loc_total.get(group, 0)
                out.append(float(total + loc_delta))
        return out

    def pair_score(self, scope: int, changes: list[tuple[int, list]], loc_delta: int = 0,
                   before: dict[int, list[float]] | None = None) -> float:
        """hail's score of a two-node allocation (allocateOnPair): the statistics of the scope
        updated node by node (variance by ((n dss - 2 s ds) - ds^2) / n^2, sums by the
        difference), as the C core's hail_pair_score does. `before` gives the changed nodes' values
        before the allocation when the engine holds it already (a forthcoming copy's figures)."""
        online = [k for k in range(self.n) if (scope < 0 or self.nd["group"][k] == scope)
                  and not self.nd["offline"][k]]
        offline = [k for k in range(self.n) if (scope < 0 or self.nd["group"][k] == scope) and self.nd["offline"][k]]
        base = {k: self.node_values(k, self.state[k]) for k in online + offline}
        base.update(before or {})
        count, total, var = [0.0] * 20, [0.0] * 20, [0.0] * 20
        for m in range(20):
            agg = AGGREGATION[m]
            if agg == 3:
                continue
            nodes = offline if agg == 2 else online
            for k in nodes:
                count[m] += 1.0
                total[m] += base[k][m]
            if agg == 0 and count[m]:
                mean, acc = total[m] / count[m], 0.0
                for k in nodes:
                    d = base[k][m] - mean
                    acc += d * d
                var[m] = acc / count[m]
        for k, st in changes:
            new = self.node_values(k, st)
            old = base[k]
            for m in range(20):
                agg = AGGREGATION[m]
                if agg == 3 or bool(self.nd["offline"][k]) != (agg == 2):
                    continue
                ds = new[m] - old[m]
                if agg == 0:
                    n, dss = count[m], new[m] * new[m] - old[m] * old[m]
                    value = var[m] + ((n * dss - 2 * total[m] * ds) - ds * ds) / (n * n)
                    var[m] = value if value > 0.0 else 0.0
                total[m] = total[m] + ds
        loc = (self._merged_loc_total() if scope < 0 else self.loc_total.get(scope, 0)) + loc_delta
        metrics = [float(loc) if AGGREGATION[m] == 3 else (math.sqrt(var[m]) if count[m] else 0.0)
                   if AGGREGATION[m] == 0 else total[m] for m in range(20)]
        result = 0.0
        for w, v in zip(WEIGHTS, metrics):
            result += w * v
        return result

    def score(self, group: int, overrides: dict | None = None, loc_delta: int = 0) -> float:
        """The cluster score over `group`: the weighted sum of the metrics."""
        total = 0.0
        for w, v in zip(WEIGHTS, self.metrics(group, overrides, loc_delta)):
            total += w * v
        return total

    # ---- moves and checks -----------------------------------------------------------------------------------
    def _remove(self, k: int, st: list, i: int, role: int, peer: int) -> list:
        it = self.it
        st = list(st)
        if role == 1:
            st[I_MEM] -= it["mem"][i] * it["uses_mem"][i]
            st[ALL_MEM] -= it["mem"][i]
            st[F_DSK] += it["dsk"][i]
            st[U_CPU] -= it["vcpus"][i] * it["uses_cpu"][i]
            st[PCNT] -= 1
            st[INST_SP] -= self._sp_use(k, i)
            st[TAGS_V] -= self._tag_loss(k, i)
            self._load_change(st, i, -1.0, True)
        else:
            st[F_DSK] += it["dsk"][i]
            st[SCNT] -= 1
            self._load_change(st, i, -1.0, False)
            st[INST_SP] -= self._sp_use(k, i)
            st[R_MEM] = self._rmem_with(k, [(peer, -it["sec_mem"][i])])
        st[F_SP] = self._sp_after(k, i, st[F_SP], 1)
        st[FAIL] = int(self._u_mem(k, st) <= st[R_MEM])
        return st

    def _tag_loss(self, k: int, i: int) -> int:
        return sum(1 for t in _bits(self.it["excl_mask"][i]) if self.tagcnt[k * self.T + t] >= 2)

    def _tag_clash(self, k: int, i: int) -> int:
        return sum(1 for t in _bits(self.it["excl_mask"][i]) if self.tagcnt[k * self.T + t] >= 1)

    def _rmem_with(self, k: int, changes: list[tuple[int, int]]) -> int:
        """Node k's reserved memory (largest per-primary peer sum) after adding `changes` to its peer map."""
        peers = dict(self.peers[k])
        for peer, delta in changes:
            peers[peer] = peers.get(peer, 0) + delta
        return max(peers.values(), default=0)

    def _forth(self, k: int, st: list) -> int:
        # Free memory counting forthcoming instances and every primary, running or not (fMemForth).
        return self.forth_base[k] - st[ALL_MEM] - self.nd["forth_mem"][k]

    def _forth_free_sp(self, k: int, st: list) -> int:
        """Free spindles counting forthcoming instances (htools' fSpindlesForth): -1 once an instance
        without a spindle count was added in this state (calcNewFreeSpindlesForth)."""
        return -1 if st[FSP_RESET] else st[F_SP] - self.nd["forth_fsp"][k]

    def _forth_disk_status(self, k: int, st: list) -> int:
        # htools' disk limits counting forthcoming instances (free disk, its reserve, free spindles
        # on exclusive storage, spindle use), in its order.
        nd = self.nd
        f_dsk = st[F_DSK] - nd["forth_dsk"][k]
        if f_dsk <= 0 or f_dsk < nd["lo_dsk"][k]:
            return FAIL_DISK
        if nd["excl"][k] and self._forth_free_sp(k, st) < 0:
            return FAIL_SPINDLES
        return FAIL_DISK if st[INST_SP] + nd["forth_sp"][k] > nd["hi_spindles"][k] else OK

    def _add_pri(self, k: int, st: list, i: int, force: bool) -> tuple[int, list]:
        """Node k takes instance i as a primary; hbal's hard checks, then its soft ones unless forced."""
        it, nd = self.it, self.nd
        clash = self._tag_clash(k, i)
        st = list(st)
        st[I_MEM] += it["mem"][i] * it["uses_mem"][i]
        st[ALL_MEM] += it["mem"][i]
        st[F_DSK] -= it["dsk"][i]
        st[U_CPU] += it["vcpus"][i] * it["uses_cpu"][i]
        st[PCNT] += 1
        st[INST_SP] += self._sp_use(k, i)
        st[F_SP] = self._sp_after(k, i, st[F_SP], -1)
        st[FSP_RESET] |= int(bool(nd["excl"][k]) and it["disk_sp"][i] < 0)
        self._load_change(st, i, 1.0, True)
        local = it["kind"][i] in (KIND_LOCAL, KIND_MIRRORED)
        u_mem = self._u_mem(k, st)
        new_fail = int(u_mem <= st[R_MEM])
        if u_mem <= 0:
            return FAIL_MEM, st
        if local and st[F_DSK] <= 0:
            return FAIL_DISK, st
        if not force and local and st[F_DSK] < nd["lo_dsk"][k]:
            return FAIL_DISK, st
        if local and nd["excl"][k] and st[F_SP] < 0:
            return FAIL_SPINDLES, st
        if not force:
            if local and st[INST_SP] > nd["hi_spindles"][k]:
                return FAIL_DISK, st
            if new_fail and not st[FAIL]:
                return FAIL_MEM, st
            if st[U_CPU] / nd["t_cpu"][k] > nd["vcpu_ratio"][k]:
                return FAIL_CPU, st
            if clash > 0:
                return FAIL_TAGS, st
            if self._forth(k, st) <= 0:
                return FAIL_MEM, st
            limit = self._forth_disk_status(k, st) if local else OK
            if limit != OK:
                return limit, st
            if (st[U_CPU] + nd["forth_cpu"][k]) / nd["t_cpu"][k] > nd["vcpu_ratio"][k]:
                return FAIL_CPU, st
        st[FAIL] = new_fail
        st[TAGS_V] += clash
        return OK, st

    def _add_sec(self, k: int, st: list, i: int, force: bool, r_mem: int,
                 ignore_disks: bool = False) -> tuple[int, list]:
        """Node k takes instance i as a secondary, its peer map giving reserved memory r_mem."""
        it, nd = self.it, self.nd
        st = list(st)
        if it["kind"][i] != KIND_MIRRORED:
            return FAIL_DISK, st
        st[F_DSK] -= it["dsk"][i]
        st[SCNT] += 1
        st[INST_SP] += self._sp_use(k, i)
        st[F_SP] = self._sp_after(k, i, st[F_SP], -1)
        st[FSP_RESET] |= int(bool(nd["excl"][k]) and it["disk_sp"][i] < 0)
        self._load_change(st, i, 1.0, False)
        u_mem = self._u_mem(k, st)
        new_fail = int(u_mem <= r_mem)
        needed = it["sec_mem"][i]
        if not ignore_disks and st[F_DSK] <= 0:
            return FAIL_DISK, st
        if not force and st[F_DSK] < nd["lo_dsk"][k]:
            return FAIL_DISK, st
        if nd["excl"][k] and st[F_SP] < 0:
            return FAIL_SPINDLES, st
        if not force:
            if st[INST_SP] > nd["hi_spindles"][k]:
                return FAIL_DISK, st
            if needed >= u_mem:
                return FAIL_MEM, st
            if new_fail and not st[FAIL]:
                return FAIL_MEM, st
            limit = self._forth_disk_status(k, st)
            if limit != OK:
                return limit, st
            if needed >= self._forth(k, st):
                return FAIL_MEM, st
        st[R_MEM] = r_mem
        st[FAIL] = new_fail
        return OK, st

    def _primary_readd(self, op: int, i: int, st: list) -> int:
        """The hard limits of adding instance i back to its primary op (state `st`, changed in place)."""
        local = self.it["kind"][i] in (KIND_LOCAL, KIND_MIRRORED)
        f_sp = self._sp_after(op, i, self._sp_after(op, i, st[F_SP], 1), -1)
        if self._u_mem(op, st) <= 0:
            return FAIL_MEM
        if local and st[F_DSK] <= 0:
            return FAIL_DISK
        if local and self.nd["excl"][op] and f_sp < 0:
            return FAIL_SPINDLES
        st[F_SP] = f_sp
        return OK

    def move_states(self, i: int, kind: int, target: int, flags: int) -> tuple[int, dict, int]:
        """Apply move `kind` to copies of the involved nodes: (status, new node states, location delta).

        Each kind follows hbal's own sequence of removals and checked additions, with its force flags.
        """
        it, off = self.it, self.nd["offline"]
        op, os_ = self.pnode[i], self.snode[i]
        soft = bool(flags & IGNORE_SOFT)
        force_p = soft or bool(off[op])
        force_s = soft or (os_ >= 0 and bool(off[os_]))
        sec = it["sec_mem"][i]
        np_, ns = new_nodes(kind, op, os_, target)
        new = {}
        status = OK
        if not self._migrations_ok(kind, op, os_, target):
            return FAIL_MIG, new, 0
        if kind == FAILOVER:
            int_p = self._remove(op, self.state[op], i, 1, -1)
            int_s = self._remove(os_, self.state[os_], i, 2, op)
            status, new[os_] = self._add_pri(os_, int_s, i, force_p)
            if status == OK:
                status, new[op] = self._add_sec(op, int_p, i, force_p, self._rmem_with(op, [(os_, sec)]),
                                                ignore_disks=bool(off[op]))
        elif kind == FAILOVER_TO_ANY:
            status, new[target] = self._add_pri(target, self.state[target], i, force_p)
            new[op] = self._remove(op, self.state[op], i, 1, -1)
        elif kind == REPLACE_SECONDARY:
            status, new[target] = self._add_sec(target, self.state[target], i, force_s,
                                                self._rmem_with(target, [(op, sec)]))
            new[os_] = self._remove(os_, self.state[os_], i, 2, op)
            # hbal takes the primary off and adds it back, forced: its N+1 flag takes the after-move
            # test, and only the hard limits hold (3.0's applyMoveEx).
            primary = list(self.state[op])
            primary[FAIL] = int(self._u_mem(op, primary) <= primary[R_MEM])
            new[op] = primary
            if status == OK:
                status = self._primary_readd(op, i, primary)
        elif kind == REPLACE_PRIMARY:
            new[op] = self._remove(op, self.state[op], i, 1, -1)
            int_s = self._remove(os_, self.state[os_], i, 2, op)
            # hbal first checks that the secondary could host the instance during the migration.
            status, _ = self._add_pri(os_, int_s, i, force_p)
            if status == OK:
                status, new[target] = self._add_pri(target, self.state[target], i, force_p)
            if status == OK:
                status, new[os_] = self._add_sec(os_, int_s, i, force_p,
                                                 self._rmem_with(os_, [(op, -sec), (target, sec)]))
        elif kind == REPLACE_AND_FAILOVER:
            int_p = self._remove(op, self.state[op], i, 1, -1)
            new[os_] = self._remove(os_, self.state[os_], i, 2, op)
            status, new[target] = self._add_pri(target, self.state[target], i, soft)
            if status == OK:
                status, new[op] = self._add_sec(op, int_p, i, force_s, self._rmem_with(op, [(target, sec)]))
        else:
            new[op] = self._remove(op, self.state[op], i, 1, -1)
            int_s = self._remove(os_, self.state[os_], i, 2, op)
            status, new[os_] = self._add_pri(os_, int_s, i, force_p)
            if status == OK:
                status, new[target] = self._add_sec(target, self.state[target], i, force_p,
                                                    self._rmem_with(target, [(os_, sec)]))
        if status != OK:
            return status, new, 0
        self._move_location(i, op, os_, np_, ns, new)
        return OK, new, self._loc_delta(i, op, np_)

    def _migration_ok(self, a: int, b: int) -> bool:
        return self.nd["mig_mask"][a] & ~self.nd["rmig_mask"][b] == 0

    def _migrations_ok(self, kind: int, op: int, os_: int, target: int) -> bool:
        """hbal's migration-tag checks per move kind (replacing only the secondary migrates nothing)."""
        if kind in (FAILOVER, FAILOVER_AND_REPLACE):
            return self._migration_ok(op, os_)
        if kind in (FAILOVER_TO_ANY, REPLACE_AND_FAILOVER):
            return self._migration_ok(op, target)
        if kind == REPLACE_PRIMARY:
            return self._migration_ok(op, os_) and self._migration_ok(os_, target)
        return True

    def _move_location(self, i: int, op: int, os_: int, np_: int, ns: int, new: dict) -> None:
        # The instance's location contribution belongs to its primary node.
        old_c, new_c = self._loc_contrib(i, op, os_), self._loc_contrib(i, np_, ns)
        if old_c or new_c:
            st = list(new.get(op, self.state[op]))
            st[LOC_V] -= old_c
            new[op] = st
            st = list(new.get(np_, self.state[np_]))
            st[LOC_V] += new_c
            new[np_] = st

    def eval_move(self, group: int, i: int, kind: int, target: int, flags: int) -> tuple[int, float]:
        """(status, exact score after the move) for one candidate move."""
        status, new, loc_delta = self.move_states(i, kind, target, flags)
        return status, self.score(group, new, loc_delta) if status == OK else 0.0

    def apply_move(self, i: int, kind: int, target: int) -> None:
        """Commit a move: the instance's nodes change and the node state is rebuilt."""
        self.place(i, *new_nodes(kind, self.pnode[i], self.snode[i], target))

    def place(self, i: int, np_: int, ns: int) -> None:
        """Put an instance on (np_, ns), or take it off the cluster with np_ = -1. htools adds the
        instance afresh to its new nodes (a secondary replacement re-adds the primary too): on
        exclusive storage one without a spindle count leaves them -1 free spindles."""
        op, os_ = self.pnode[i], self.snode[i]
        dsk = self.it["dsk"][i]
        for k in {op, os_, np_, ns} - {-1}:
            self.touched[k] = 1
            self.dsk_delta[k] += dsk * ((k in (op, os_)) - (k in (np_, ns)))
            if self.nd["excl"][k] and self.it["disk_sp"][i] >= 0:
                self.sp_delta[k] += self.it["disk_sp"][i] * ((k in (op, os_)) - (k in (np_, ns)))
        for k in (np_, ns):
            if k >= 0 and self.nd["excl"][k] and self.it["disk_sp"][i] < 0:
                self.sp_delta[k] = -1 - self.nd["f_sp"][k]
                self.nd["forth_fsp"][k] = 0  # the forthcoming figure is -1 too
        # The loads change as hbal changes them: the old nodes lose the instance, then the new ones take it.
        for k, sign, primary in ((op, -1.0, True), (os_, -1.0, False), (np_, 1.0, True), (ns, 1.0, False)):
            if k >= 0:
                self._load_change(self.loads[k], i, sign, primary, 0)
        self.pnode[i], self.snode[i] = np_, ns
        self._rebuild()

    def instance_value(self, i: int, name: str):
        """One field (of `spec.INSTANCE_FIELDS`) of an instance as the engine holds it."""
        if name in ("pnode", "snode"):
            return (self.pnode if name == "pnode" else self.snode)[i]
        return self.it[name][i]

    def node_state(self, k: int) -> dict:
        """Node k's figures as the engine holds them: free memory for moves, reserved memory, N+1
        flag, free disk, used CPUs, all primaries' memory, the forthcoming-aware memory base and
        the exclusion tags present (bit mask)."""
        st = self.state[k]
        tags = sum(1 << t for t in range(self.T) if self.tagcnt[k * self.T + t] >= 1)
        return {"u_mem": self._u_mem(k, st), "r_mem": st[R_MEM], "fail": st[FAIL], "f_dsk": st[F_DSK],
                "u_cpu": st[U_CPU], "all_mem": st[ALL_MEM], "forth_base": self.forth_base[k], "tags": tags,
                "inst_sp": st[INST_SP], "f_sp": st[F_SP]}

    def forth_use(self, k: int) -> dict:
        """What forthcoming instances take of node k (`spec.FORTH_FIELDS`)."""
        return {name: self.nd[name][k] for name in FORTH_FIELDS}

    native_forth_moves = False  # balance moves forthcoming instances through forthmove.Moves

    def set_forth(self, use: dict, inst: int, pnode: int, snode: int = -1) -> None:
        """Give nodes new forthcoming figures (node: `spec.FORTH_FIELDS` values) and the forthcoming
        instance `inst` the primary `pnode` (its exclusion tags count there); the state is rebuilt.
        (The secondary lives in forthmove.Moves.)"""
        for k, values in use.items():
            for name in FORTH_FIELDS:
                self.nd[name][k] = values[name]
        self.forth_pnode[inst] = pnode
        self._rebuild()

    def free_spindles(self) -> list[int]:
        """Every node's free spindles as the engine holds them (counted on exclusive storage only)."""
        return [st[F_SP] for st in self.state]

    def instance_column(self, name: str) -> list:
        """One field (of `spec.INSTANCE_FIELDS`) of every defined instance, in index order."""
        column = {"pnode": self.pnode, "snode": self.snode}.get(name) or self.it[name]
        return list(column[:self.count])

    def define_instance(self, values: dict, reuse: int = -1) -> int:
        """Add an unplaced instance with the fields of `spec.INSTANCE_FIELDS` (or overwrite the unplaced
        instance `reuse`); returns its index."""
        if reuse >= 0:
            for name, column in self.it.items():
                column[reuse] = values[name]
            if values["excl_mask"].bit_length() > self.T:
                self._rebuild()
            return reuse
        for name, column in self.it.items():
            column.append(values[name])
        self.pnode.append(-1)
        self.snode.append(-1)
        self.count += 1
        if values["excl_mask"].bit_length() > self.T:  # a tag past the counts' row: widen it
            self._rebuild()
        return self.count - 1

    def best_alloc(self, group: int, i: int, required: int, mask, flags: int, scope: int = -1, after=None):
        """The best (primary, secondary, score over `scope`, -1 all nodes) for an unplaced instance in
        `group`, and failure counts by reason; of equal scores the last candidate wins, as in hail.
        With `after` (a candidate found before), the best one ranking below it."""
        best = None
        candidates, counts = self.all_allocs(group, i, required, mask, flags, scope)
        for p, q, value in candidates:
            if (best is None or value <= best[2]) and self._ranks_after(after, p, q, value):
                best = (p, q, value)
        return best, counts

    def all_allocs(self, group: int, i: int, required: int, mask, flags: int, scope: int = -1, cap: int = 0):
        """Every valid (primary, secondary, exact score over `scope`) for an unplaced instance in
        `group`, in scan order (primary, then secondary), and failure counts by reason."""
        force = bool(flags & IGNORE_SOFT)
        counts = [0] * 10
        found = []
        primaries, secondaries = (self._alloc_nodes(group, mask, role) for role in (ALLOC_PRIMARY, ALLOC_SECONDARY))
        for p in primaries:
            status, st_p = self._add_pri(p, self.state[p], i, force)
            loc_delta = self._loc_delta_new(i, p, scope)
            if required == 1:
                if status != OK:
                    counts[status] += 1
                    continue
                st_p[LOC_V] += self._loc_contrib(i, p, -1)
                found.append((p, -1, self.score(scope, {p: st_p}, loc_delta)))
                continue
            for q in secondaries:
                if q == p:
                    continue
                if status != OK:
                    counts[status] += 1
                    continue
                r_mem = max(self.state[q][R_MEM], self.peers[q].get(p, 0) + self.it["sec_mem"][i])
                st2, st_q = self._add_sec(q, self.state[q], i, force, r_mem)
                if st2 != OK:
                    counts[st2] += 1
                    continue
                pair = list(st_p)
                pair[LOC_V] = self.state[p][LOC_V] + self._loc_contrib(i, p, q)
                found.append((p, q, self.pair_score(scope, [(p, pair), (q, st_q)], loc_delta)))
        return found, counts

    def _alloc_nodes(self, group: int, mask, role: int) -> list[int]:
        # mask[k]: 0 never, 1 either role if online, or the one role the node may take, offline or not.
        def allowed(k: int) -> bool:
            value = 1 if mask is None else int(mask[k])
            return not self.nd["offline"][k] if value == ALLOC_EITHER else value == role
        return [k for k in range(self.n) if self.nd["group"][k] == group and allowed(k)]

    def ranked_allocs(self, group: int, i: int, required: int, mask, flags: int, scope: int = -1,
                      cap: int = 0) -> tuple[Ranked, list[int]]:
        """all_allocs' candidates in hail's order within each primary's run (one run for a one-node
        allocation)."""
        candidates, counts = self.all_allocs(group, i, required, mask, flags, scope)
        bounds = [k for k in range(len(candidates))
                  if k == 0 or (required == 2 and candidates[k][0] != candidates[k - 1][0])] + [len(candidates)]
        runs = list(zip(bounds, bounds[1:]))
        ordered = [found for start, end in runs for found in hail_order(self.n, candidates[start:end])]
        return Ranked(runs, ordered.__getitem__), counts

    def _ranks_after(self, after, p: int, q: int, value: float) -> bool:
        # hail's order: lower score first; of equal scores the later candidate first.
        if after is None:
            return True
        order, after_order = p * (self.n + 1) + q + 1, after[0] * (self.n + 1) + after[1] + 1
        return value > after[2] or (value == after[2] and order < after_order)

    def _loc_delta_new(self, i: int, p: int, scope: int) -> int:
        g = self.nd["group"][p]
        if scope >= 0:
            return sum(1 for l in _bits(self._counted_locs(p)) for t in _bits(self.it["excl_mask"][i])
                       if self.loccnt.get((g, l, t), 0) >= 1)
        merged = self._merged_counts()
        return sum(1 for l in _bits(self._counted_locs(p)) for t in _bits(self.it["excl_mask"][i])
                   if merged.get((l, t), 0) >= 1)

    def _merged_counts(self) -> dict:
        merged: dict = {}
        for (_, l, t), count in self.loccnt.items():
            merged[(l, t)] = merged.get((l, t), 0) + count
        return merged

    def _merged_loc_total(self) -> int:
        """The location-exclusion value of the map merged over the whole cluster."""
        return sum(count - 1 for count in self._merged_counts().values() if count > 1)

    def nodes_of(self, i: int) -> tuple[int, int]:
        """The (primary, secondary) of instance i; -1 for none."""
        return self.pnode[i], self.snode[i]

    # ---- search ---------------------------------------------------------------------------------------------
    def candidates(self, i: int, group: int, flags: int, targets: list[int]):
        """The moves hbal tries for instance i, in its order."""
        it, nd = self.it, self.nd
        op, os_ = self.pnode[i], self.snode[i]
        if it["kind"][i] == KIND_MIRRORED:
            sec_offline = bool(nd["offline"][os_])
            if not flags & NO_INSTANCE_MOVES and not sec_offline:
                yield FAILOVER, -1
            if flags & NO_DISK_MOVES:
                return
            # Restricted migration keeps only secondary replacements unless the primary is offline.
            restricted = bool(flags & RESTRICTED_MIGRATION) and not nd["offline"][op]
            for t in targets:
                if t in (op, os_):
                    continue
                yield REPLACE_SECONDARY, t
                if flags & NO_INSTANCE_MOVES or restricted:
                    continue
                yield REPLACE_AND_FAILOVER, t
                if sec_offline:
                    continue
                if not flags & RESTRICTED_MIGRATION:
                    yield REPLACE_PRIMARY, t
                yield FAILOVER_AND_REPLACE, t
        elif it["kind"][i] == KIND_SHARED and not flags & NO_INSTANCE_MOVES:
            for t in targets:
                if t != op:
                    yield FAILOVER_TO_ANY, t

    def movable(self, i: int, group: int, flags: int) -> bool:
        """Whether hbal would consider instance i at all."""
        op, os_ = self.pnode[i], self.snode[i]
        if op < 0 or not self.it["movable"][i] or self.nd["group"][op] != group:
            return False
        if os_ >= 0 and self.nd["group"][os_] != group:
            return False
        if flags & EVAC_MODE:
            return bool(self.nd["offline"][op]) or (os_ >= 0 and bool(self.nd["offline"][os_]))
        return True

    def best_move(self, group: int, flags: int, only: int = -1) -> tuple[int, int, int, float] | None:
        """The best single move (instance, kind, target, new score), or None if nothing beats the current score."""
        targets = [k for k in range(self.n) if self.nd["group"][k] == group and not self.nd["offline"][k]]
        best_score = self.score(group)
        best = None
        for i in range(self.count) if only < 0 else [only]:
            if not self.movable(i, group, flags):
                continue
            for kind, target in self.candidates(i, group, flags, targets):
                status, new, loc_delta = self.move_states(i, kind, target, flags)
                if status != OK:
                    continue
                value = self.score(group, new, loc_delta)
                if value < best_score:
                    best_score, best = value, (i, kind, target, value)
        return best

    def touched_flags(self) -> tuple[list[int], list[int], list[int]]:
        """What `restore` puts back after trial moves: which nodes moves have touched (their N+1 test
        switches from reported to computed memory) and their free spindles."""
        return list(self.touched), list(self.sp_delta), list(self.nd["forth_fsp"])

    def restore(self, i: int, np_: int, ns: int, saved: tuple[list[int], list[int], list[int]]) -> None:
        """Put an instance back where it was and restore what `touched_flags` saved, undoing trial moves."""
        self.place(i, np_, ns)
        self.touched, self.sp_delta, self.nd["forth_fsp"] = list(saved[0]), list(saved[1]), list(saved[2])
        self._rebuild()


def _fsum_in_order(values) -> float:
    total = 0.0
    for v in values:
        total += v
    return total

