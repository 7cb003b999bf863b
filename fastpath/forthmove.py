"""Moves of forthcoming instances as hail 3.0.2 makes them: only the nodes' forthcoming figures change.

htools counts a forthcoming instance in its `*Forth` node figures only (and in its primary's exclusion
tags). A move removes it from its old nodes and adds it to the new ones with the forthcoming-only
checks of htools' Node.addPriEx / addSecExEx (none when the move is forced), in applyMoveEx's order.
The engines hold the figures (`forth_use`, `set_forth`); `Moves` works out, checks and scores the new
ones, and passes every move of a real instance on to the engine unchanged.
"""

from fastpath.spec import (FAIL_CPU, FAIL_DISK, FAIL_MEM, FAIL_MIG, FAIL_SPINDLES, FAILOVER, FAILOVER_AND_REPLACE,
                           FAILOVER_TO_ANY, IGNORE_SOFT, KIND_LOCAL, KIND_MIRRORED, OK, REPLACE_AND_FAILOVER,
                           REPLACE_PRIMARY, REPLACE_SECONDARY, Spec, hail_order, new_nodes)


def contribution(spec: Spec, i: int, k: int, primary: bool) -> dict:
    """What forthcoming instance i takes of node k as its primary or secondary (`spec.FORTH_FIELDS`):
    memory and (online ones) CPUs on the primary, local disk and spindle use on both, and on
    exclusive storage its disks' spindles whatever its template, as calcNewFreeSpindlesForth counts
    them (one without a spindle count takes none here; `Moves.place` sets the figure)."""
    it, excl = spec.instances, spec.nodes["excl"][k]
    local = it["kind"][i] in (KIND_LOCAL, KIND_MIRRORED)
    return {"forth_mem": it["mem"][i] if primary else 0,
            "forth_cpu": it["vcpus"][i] * it["uses_cpu"][i] if primary else 0,
            "forth_dsk": it["dsk"][i] if local else 0,
            "forth_sp": it["spindle_use"][i] if local and not excl else 0,
            "forth_fsp": max(it["disk_sp"][i], 0) if excl else 0}


class Moves:
    """The engine's move interface (nodes_of, eval_move, apply_move, touched_flags, restore) for real
    and forthcoming instances alike; the engine leaves forthcoming ones unplaced, so their nodes live here."""

    def __init__(self, engine, spec: Spec):
        self.engine, self.spec = engine, spec
        self.forth = {i: (spec.instances["pnode"][i], spec.instances["snode"][i]) for i in spec.forthcoming}

    def nodes_of(self, i: int) -> tuple[int, int]:
        """The (primary, secondary) of an instance, forthcoming or not; -1 for none."""
        return self.forth[i] if i in self.forth else self.engine.nodes_of(i)

    def eval_move(self, group: int, i: int, kind: int, target: int, flags: int) -> tuple[int, float]:
        """(status, exact score over `group` after the move) for one candidate move. The C core
        checks and scores a forthcoming instance's move itself (`native_forth_moves`: a trial on
        the touched nodes); the pure twin places it, rebuilds and places it back."""
        if i not in self.forth or self.engine.native_forth_moves:
            return self.engine.eval_move(group, i, kind, target, flags)
        return self.eval_forth_move(group, i, kind, target, flags)

    def eval_forth_move(self, group: int, i: int, kind: int, target: int, flags: int) -> tuple[int, float]:
        """eval_move of forthcoming instance i in Python, on either engine."""
        status, new = self._check(i, kind, target, bool(flags & IGNORE_SOFT))
        if status != OK:
            return status, 0.0
        old = self.forth[i]
        before = self.place(i, *new)
        score = self.engine.score(group)
        self.place(i, *old, before)
        return OK, score

    def apply_move(self, i: int, kind: int, target: int) -> None:
        """Commit a move."""
        if i not in self.forth:
            self.engine.apply_move(i, kind, target)
            return
        self.place(i, *new_nodes(kind, *self.forth[i], target))

    def touched_flags(self) -> tuple[list[int], list[int], list[int]]:
        """The engine's touched flags (moves of forthcoming instances touch no node's real figures),
        free-spindle changes and, last, every node's forthcoming free-spindle figure (forth_fsp)."""
        return self.engine.touched_flags()

    def restore(self, i: int, p: int, s: int, touched: tuple[list[int], list[int], list[int]]) -> None:
        """Put an instance back where it was, undoing trial moves."""
        if i in self.forth:
            forth_fsp = touched[-1]
            self.place(i, p, s, {k: forth_fsp[k] for k in {p, s, *self.forth[i]} if k >= 0})
        else:
            self.engine.restore(i, p, s, touched)

    def place(self, i: int, p: int, s: int, before: dict[int, int] | None = None) -> dict[int, int]:
        """Put forthcoming instance i on (p, s): its use leaves its old nodes and comes to the new ones.
        Returns the nodes' forthcoming free-spindle figures (forth_fsp) it replaced: passed back as
        `before` they undo this move exactly (an instance without a spindle count sets the figure of
        its new nodes, so moving it back would not)."""
        old_p, old_s = self.forth[i]
        use: dict[int, dict] = {}
        for k, sign, primary in ((old_p, -1, True), (old_s, -1, False), (p, 1, True), (s, 1, False)):
            if k >= 0:
                figures = use.setdefault(k, self.engine.forth_use(k))
                for name, value in contribution(self.spec, i, k, primary).items():
                    figures[name] += sign * value
        replaced = {k: self.engine.forth_use(k)["forth_fsp"] for k in use}
        if before is not None:
            for k, value in before.items():
                use[k]["forth_fsp"] = value
        elif self.spec.instances["disk_sp"][i] < 0:
            for k in (p, s):  # added without a spindle count: -1 forthcoming free spindles there
                if k >= 0 and self.spec.nodes["excl"][k]:
                    use[k]["forth_fsp"] = self.engine.node_state(k)["f_sp"] + 1
        self.engine.set_forth(use, i, p, s)
        self.forth[i] = (p, s)
        return replaced

    def _check(self, i: int, kind: int, target: int, force: bool) -> tuple[int, tuple[int, int]]:
        """hail's checks of one move of forthcoming instance i (applyMoveEx's order) and its new nodes."""
        p, s = self.forth[i]
        offline = self.spec.nodes["offline"]
        if kind == REPLACE_SECONDARY:
            return self._add_sec(i, target, force or (s >= 0 and bool(offline[s]))), (p, target)
        if kind == FAILOVER_TO_ANY:
            if not self._migration_ok(p, target):
                return FAIL_MIG, (target, -1)
            return self._add_pri(i, target, force or bool(offline[p])), (target, -1)
        if kind in (REPLACE_AND_FAILOVER, REPLACE_PRIMARY, FAILOVER_AND_REPLACE) and s >= 0:
            return self._check_two_step(i, kind, target, force), new_nodes(kind, p, s, target)
        if kind != FAILOVER or s < 0:
            return FAIL_DISK, (p, s)
        if not self._migration_ok(p, s):
            return FAIL_MIG, (s, p)
        status = self._add_pri(i, s, force or bool(offline[p]))
        if status == OK:
            status = self._add_sec(i, p, force or bool(offline[p]))
        return status, (s, p)

    def _check_two_step(self, i: int, kind: int, target: int, force: bool) -> int:
        """applyMoveEx's checks of hbal's other drbd moves for a forthcoming instance (the
        forthcoming checks of each addPriEx / addSecEx, in order; none where forced)."""
        p, s = self.forth[i]
        offline = self.spec.nodes["offline"]
        if kind == REPLACE_AND_FAILOVER:  # r:np, f
            if not self._migration_ok(p, target):
                return FAIL_MIG
            status = self._add_pri(i, target, force)
            return status if status != OK else self._add_sec(i, p, force or bool(offline[s]))
        force_p = force or bool(offline[p])
        if not self._migration_ok(p, s):
            return FAIL_MIG
        if kind == REPLACE_PRIMARY:  # f, r:np, f: the secondary must hold it during the migration
            if not self._migration_ok(s, target):
                return FAIL_MIG
            for status in (lambda: self._add_pri(i, s, force_p), lambda: self._add_pri(i, target, force_p),
                           lambda: self._add_sec(i, s, force_p)):
                if (code := status()) != OK:
                    return code
            return OK
        status = self._add_pri(i, s, force_p)  # FAILOVER_AND_REPLACE: f, r:ns
        return status if status != OK else self._add_sec(i, target, force_p)

    def _migration_ok(self, a: int, b: int) -> bool:
        nodes = self.spec.nodes
        return nodes["mig_mask"][a] & ~nodes["rmig_mask"][b] == 0

    def _figures(self, i: int, k: int) -> dict:
        """Node k's forthcoming-aware figures (htools' *Forth) without instance i."""
        state, use = self.engine.node_state(k), self.engine.forth_use(k)
        p, s = self.forth[i]
        for node, primary in ((p, True), (s, False)):
            if node == k:
                for name, value in contribution(self.spec, i, k, primary).items():
                    use[name] -= value
        return {"mem": state["forth_base"] - state["all_mem"] - use["forth_mem"],
                "dsk": state["f_dsk"] - use["forth_dsk"], "fsp": state["f_sp"] - use["forth_fsp"],
                "sp": state["inst_sp"] + use["forth_sp"], "cpu": state["u_cpu"] + use["forth_cpu"]}

    def _disk_status(self, i: int, k: int, figures: dict) -> int:
        """htools' forthcoming disk limits for instance i added to node k: free disk and its reserve,
        free spindles on exclusive storage, spindle use."""
        nodes, it = self.spec.nodes, self.spec.instances
        use = contribution(self.spec, i, k, False)
        dsk = figures["dsk"] - use["forth_dsk"]
        if dsk <= 0 or dsk < nodes["lo_dsk"][k]:
            return FAIL_DISK
        if nodes["excl"][k] and (it["disk_sp"][i] < 0 or figures["fsp"] - use["forth_fsp"] < 0):
            return FAIL_SPINDLES
        return FAIL_DISK if figures["sp"] + use["forth_sp"] > nodes["hi_spindles"][k] else OK

    def _add_pri(self, i: int, k: int, force: bool) -> int:
        """htools' checkForthcomingViolation of addPriEx (nothing when forced)."""
        if force:
            return OK
        nodes, it = self.spec.nodes, self.spec.instances
        figures = self._figures(i, k)
        if figures["mem"] - it["mem"][i] <= 0:
            return FAIL_MEM
        if it["kind"][i] in (KIND_LOCAL, KIND_MIRRORED):
            status = self._disk_status(i, k, figures)
            if status != OK:
                return status
        cpu = figures["cpu"] + it["vcpus"][i] * it["uses_cpu"][i]
        return FAIL_CPU if nodes["vcpu_ratio"][k] >= 0 and cpu / nodes["t_cpu"][k] > nodes["vcpu_ratio"][k] else OK

    def _add_sec(self, i: int, k: int, force: bool) -> int:
        """htools' checkForthcomingViolation of addSecExEx (nothing when forced)."""
        if force:
            return OK
        if self.spec.instances["kind"][i] != KIND_MIRRORED:
            return FAIL_DISK
        figures = self._figures(i, k)
        status = self._disk_status(i, k, figures)
        if status != OK:
            return status
        return FAIL_MEM if self.spec.instances["sec_mem"][i] >= figures["mem"] else OK


class ForthcomingSearch:
    """hail's search in one group for a forthcoming copy of an instance (change-group's choice of
    group): each candidate takes only the forthcoming checks of Node.addPriEx / addSecExEx, in that
    order, and is scored with the copy in the nodes' `*Forth` figures. Like `allocate.try_group`,
    it is called as `search(engine, spec, outcome, search_args, capacity_check)`.

    The copy lives in the engine slot `inst` (unplaced); `values` are its instance fields, which
    the checks read from `spec.instances` while the search runs (None: the slot is an instance of
    `spec` already, such as allocate-secondary's drbd copy)."""

    def __init__(self, moves: Moves, values: dict | None = None):
        self.moves, self.values = moves, values

    def __call__(self, engine, spec: Spec, outcome, search_args: tuple, capacity_check: bool) -> None:
        from fastpath.globaln1 import CandidateCheck
        from fastpath.spec import FAIL_N1, FAIL_NAMES

        group, i, required, mask, _flags, scope = search_args
        columns = spec.instances
        lengths = {name: len(column) for name, column in columns.items()}
        if self.values is not None:
            if any(i < n for n in lengths.values()):
                raise ValueError(f"slot {i} holds a known instance; the forthcoming copy needs a spare slot")
            for name, column in columns.items():
                column.extend([0] * (i + 1 - len(column)))
                column[i] = self.values[name]
        self.moves.forth[i] = (-1, -1)
        try:
            if hasattr(engine, "best_forth_alloc"):  # the C core: the same search in C
                best, passed, counts = engine.best_forth_alloc(group, i, required, mask, scope)
            else:
                best, passed, counts = self._search(engine, spec, search_args)
            if best is not None and capacity_check and CandidateCheck(engine, spec, i).failing:
                # The copy changes no real figure, so the cluster stays as redundant as it is.
                counts[FAIL_N1] += passed
                best, passed = None, 0
        finally:
            del self.moves.forth[i]
            for name, column in columns.items():
                del column[lengths[name]:]
        outcome.failures = {FAIL_NAMES[k]: counts[k] for k in range(1, len(FAIL_NAMES)) if counts[k]}
        outcome.successes = passed
        if best is not None:
            p, s, score = best
            outcome.nodes, outcome.score = (p, s), score

    def _search(self, engine, spec: Spec, search_args: tuple) -> tuple[tuple[int, int, float] | None, int, list[int]]:
        """The search in Python on the pure twin: the best candidate in hail's order, how many
        candidates passed the checks, failure counts by reason."""
        from fastpath.allocate import role_allowed
        from fastpath.spec import ALLOC_PRIMARY, ALLOC_SECONDARY, FAIL_NAMES

        group, i, required, mask, _flags, scope = search_args
        primaries = [k for k in range(spec.n_nodes) if role_allowed(spec, mask, group, k, ALLOC_PRIMARY)]
        secondaries = ([-1] if required == 1 else
                       [k for k in range(spec.n_nodes) if role_allowed(spec, mask, group, k, ALLOC_SECONDARY)])
        counts, found = [0] * len(FAIL_NAMES), []
        for p in primaries:
            for s in secondaries:
                if s == p:
                    continue
                status = self.moves._add_pri(i, p, False)
                if status == OK and s >= 0:
                    status = self.moves._add_sec(i, s, False)
                if status != OK:
                    counts[status] += 1
                    continue
                old = {k: engine.node_values(k, engine.state[k]) for k in (p, s) if k >= 0}
                before = self.moves.place(i, p, s)
                # scored as hail scores an allocation: a pair by its updated statistics
                found.append((p, s, engine.score(scope) if s < 0 else
                              engine.pair_score(scope, [(k, engine.state[k]) for k in (p, s)], before=old)))
                self.moves.place(i, -1, -1, before)
        return (hail_order(spec.n_nodes, found)[0] if found else None), len(found), counts
