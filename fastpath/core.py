"""The thin wrapper over the compiled core: owns every call into `lib`, turns status codes into exceptions.

`Engine` has the same methods and semantics as `fastpath.pure.Engine`; callers pick one with
`fastpath.engine()`.
"""

from __future__ import annotations

from fastpath._cairn_fastpath import ffi, lib
from fastpath.spec import FORTH_FIELDS, Ranked, Spec

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:  # collections.abc pulls in collections: about 1.3 ms of every balance process
    from collections.abc import Sequence

_STATUS = {lib.CAIRN_EINVAL: "invalid argument"}
_NODE_ARRAYS = (("double", ("t_mem", "t_dsk", "t_cpu", "cpu_speed", "hi_spindles", "vcpu_ratio", "lo_dsk", "t_sp")),
                ("long", ("mem_base", "f_mem", "node_cpus", "forth_mem", "forth_dsk", "forth_cpu", "forth_sp",
                          "forth_fsp")),
                ("int", ("offline", "group", "excl")),
                ("uint64_t", ("mig_mask", "rmig_mask")))
_INSTANCE_ARRAYS = (("long", ("mem", "dsk", "vcpus", "spindle_use", "sec_mem", "disk_sp")),
                    ("double", ("util_cpu", "util_mem", "util_dsk", "util_net")),
                    ("int", ("kind", "uses_mem", "uses_cpu", "movable", "pnode", "snode")),
                    ("uint64_t", ("excl_mask", "desired_mask")))
_INSTANCE_FIELDS = [name for _, names in _INSTANCE_ARRAYS for name in names]
# Tag masks of any width, kept as whole 64-bit words per instance: exclusion tags in `tag_words`,
# desired locations in `loc_words` (nodes' location masks take as many).
_MASKS = {"excl_mask": "tag_words", "desired_mask": "loc_words"}
_WORD = 0xFFFFFFFFFFFFFFFF


def _split(mask: int, words: int) -> list[int]:
    return [(mask >> (64 * w)) & _WORD for w in range(words)]


class FastpathError(RuntimeError):
    """The C core refused its input."""


def _check(code: int, what: str) -> int:
    if code not in (lib.CAIRN_OK, lib.CAIRN_NONE):
        raise FastpathError(f"{what}: {_STATUS.get(code, f'status {code}')}; this is a bug in the caller")
    return code


def stddev(values: Sequence[float]) -> float:
    """Population standard deviation, computed in C."""
    array = ffi.new("double[]", list(values))
    out = ffi.new("double *")
    _check(lib.cairn_stddev(array, len(values), out), "stddev")
    return out[0]


class Engine:
    """A cluster held in C arrays: score, move search, moves and allocation."""

    def __init__(self, spec: Spec, extra_instances: int = 0):
        self.spec = spec
        n, count = spec.n_nodes, spec.n_instances
        self.n, self.count = n, count
        self.capacity = count + extra_instances + 1
        c = ffi.new("cairn_cluster *")
        self._c, self._keep = c, []
        c.n_nodes, c.n_inst, c.cap_inst = n, count, self.capacity
        # Exclusion and location tags take whole 64-bit words, with room for one more tag of each.
        self._set_widths(spec.n_tags // 64 + 1, spec.n_locations // 64 + 1)
        for ctype, names in _NODE_ARRAYS:
            for name in names:
                setattr(c, name, self._array(ctype, n, spec.nodes[name]))
        c.loc_mask = self._words_array(n, self.loc_words, spec.nodes["loc_mask"])
        c.f_dsk0 = self._array("long", n, spec.nodes["f_dsk"])
        c.f_sp0 = self._array("long", n, spec.nodes["f_sp"])
        for ctype, names in _INSTANCE_ARRAYS:
            for name in names:
                if name not in _MASKS:
                    setattr(c, name, self._array(ctype, self.capacity, spec.instances[name]))
        for name, width in _MASKS.items():
            setattr(c, name, self._words_array(self.capacity, getattr(self, width), spec.instances[name]))
        c.forth_pnode = self._array("int", self.capacity, [-1] * self.capacity)
        c.forth_snode = self._array("int", self.capacity, [-1] * self.capacity)
        for i in spec.forthcoming:
            c.forth_pnode[i], c.forth_snode[i] = c.pnode[i], c.snode[i]
            c.pnode[i] = c.snode[i] = -1
        c.state = self._array("cairn_nstate", n)
        self._forth_arrays = [(name, getattr(c, name)) for name in FORTH_FIELDS]  # node arrays: never regrown
        c.loads = self._array("double", 4 * n)
        for name in ("dsk_delta", "sp_delta", "forth_base", "acc_a", "acc_b", "acc_c", "acc_d"):
            setattr(c, name, self._array("long", n))
        c.touched, c.sec_head, c.pri_head = (self._array("int", n) for _ in range(3))
        c.sec_next, c.pri_next = self._array("int", self.capacity), self._array("int", self.capacity)
        groups = max(spec.nodes["group"], default=0) + 1
        c.n_groups = groups
        self._tag_counts()
        c.loc_totals = self._array("long", groups)
        c.vals = self._array("double", n * 20)
        c.top_val, c.top_peer = self._array("long", 2 * n), self._array("int", 2 * n)
        _check(lib.cairn_rebuild(c), "rebuild")

    def _set_widths(self, tag_words: int, loc_words: int) -> None:
        c = self._c
        self.tag_words, self.loc_words = tag_words, loc_words
        c.tag_words, c.n_tags = tag_words, 64 * tag_words
        c.loc_words, c.n_locs = loc_words, 64 * loc_words

    def _tag_counts(self) -> None:
        # Per node and per (group, location) key, one count for each exclusion tag.
        c = self._c
        c.tagcnt = self._array("int", self.n * c.n_tags)
        c.loccnt = self._array("int", c.n_groups * c.n_locs * c.n_tags)

    def _words_array(self, rows: int, words: int, masks: Sequence[int]):
        """Bit masks as `words` 64-bit words per row (bit b in word b // 64)."""
        if words == 1:
            return self._array("uint64_t", rows, masks)
        return self._array("uint64_t", rows * words, [word for mask in masks for word in _split(mask, words)])

    def _mask(self, i: int, name: str) -> int:
        words, array = getattr(self, _MASKS[name]), getattr(self._c, name)
        return sum(array[i * words + w] << (64 * w) for w in range(words))

    def _set_masks(self, i: int, values: dict) -> None:
        """Write instance i's tag masks; a tag past the words widens them first (every row copied,
        the counts rebuilt afresh in the wider rows)."""
        tag_words, loc_words = (max(self.tag_words, values["excl_mask"].bit_length() // 64 + 1),
                                max(self.loc_words, values["desired_mask"].bit_length() // 64 + 1))
        widen = (tag_words, loc_words) != (self.tag_words, self.loc_words)
        if widen:
            masks = {name: [self._mask(j, name) for j in range(self.count)] for name in _MASKS}
            self._set_widths(tag_words, loc_words)
            for name, width in _MASKS.items():
                setattr(self._c, name, self._words_array(self.capacity, getattr(self, width), masks[name]))
            self._c.loc_mask = self._words_array(self.n, loc_words, self.spec.nodes["loc_mask"])
            self._tag_counts()
        for name, width in _MASKS.items():
            words = getattr(self, width)
            getattr(self._c, name)[i * words:(i + 1) * words] = _split(values[name], words)
        if widen:
            _check(lib.cairn_rebuild(self._c), "rebuild")

    def _array(self, ctype: str, size: int, values: Sequence = ()):
        array = ffi.new(f"{ctype}[]", max(1, size))
        if values:
            array[0:len(values)] = list(values)
        self._keep.append(array)
        return array

    def metrics(self, group: int) -> list[float]:
        """The 20 metric values over the nodes of `group`."""
        out, score = ffi.new("double[20]"), ffi.new("double *")
        _check(lib.cairn_metrics(self._c, group, out, score), "metrics")
        return list(out)

    def score(self, group: int) -> float:
        """The cluster score over `group`."""
        out, score = ffi.new("double[20]"), ffi.new("double *")
        _check(lib.cairn_metrics(self._c, group, out, score), "score")
        return score[0]

    def best_move(self, group: int, flags: int, only: int = -1) -> tuple[int, int, int, float] | None:
        """The best single move (instance, kind, target, new score), or None if nothing beats the current score."""
        if self._c.fo_tag == ffi.NULL:
            self._failover_cache()
        inst, kind, target, score = (ffi.new("int *"), ffi.new("int *"), ffi.new("int *"), ffi.new("double *"))
        code = _check(lib.cairn_best_move(self._c, group, flags, only, inst, kind, target, score), "best move")
        return None if code == lib.CAIRN_NONE else (inst[0], kind[0], target[0], score[0])

    def _failover_cache(self) -> None:
        # Allocated on the first move search (allocation and planning never read it).
        self._c.epoch = self._array("int", self.n)
        self._c.fo_tag = self._array("int", self.capacity * lib.CAIRN_FO_TAG)
        self._c.fo_nv = self._array("double", self.capacity * 40)

    def eval_move(self, group: int, inst: int, kind: int, target: int, flags: int) -> tuple[int, float]:
        """(status, exact score after the move) for one candidate move."""
        status, score = ffi.new("int *"), ffi.new("double *")
        _check(lib.cairn_eval_move(self._c, group, inst, kind, target, flags, status, score), "eval move")
        return status[0], score[0]

    def apply_move(self, inst: int, kind: int, target: int) -> None:
        """Commit a move."""
        _check(lib.cairn_apply_move(self._c, inst, kind, target), "apply move")

    def place(self, inst: int, pnode: int, snode: int) -> None:
        """Put an instance on (pnode, snode), or take it off the cluster with pnode = -1."""
        _check(lib.cairn_place(self._c, inst, pnode, snode), "place")

    def nodes_of(self, inst: int) -> tuple[int, int]:
        """The (primary, secondary) of an instance; -1 for none."""
        return self._c.pnode[inst], self._c.snode[inst]

    def instance_value(self, inst: int, name: str):
        """One field (of `spec.INSTANCE_FIELDS`) of an instance as the engine holds it."""
        return self._mask(inst, name) if name in _MASKS else getattr(self._c, name)[inst]

    def node_state(self, k: int) -> dict:
        """Node k's figures as the engine holds them: free memory for moves, reserved memory, N+1
        flag, free disk, used CPUs, all primaries' memory, the forthcoming-aware memory base and
        the exclusion tags present (bit mask)."""
        st = self._c.state[k]
        row = ffi.unpack(self._c.tagcnt + k * self._c.n_tags, self._c.n_tags)
        tags = sum(1 << t for t, count in enumerate(row) if count >= 1)
        return {"u_mem": self._c.mem_base[k] - st.i_mem, "r_mem": st.r_mem, "fail": st.fail, "f_dsk": st.f_dsk,
                "u_cpu": st.u_cpu, "all_mem": st.all_mem, "forth_base": self._c.forth_base[k], "tags": tags,
                "inst_sp": st.inst_sp, "f_sp": st.f_sp}

    def forth_use(self, k: int) -> dict:
        """What forthcoming instances take of node k (`spec.FORTH_FIELDS`)."""
        return {name: array[k] for name, array in self._forth_arrays}

    native_forth_moves = True  # best_move takes FORTH_MOVES

    def set_forth(self, use: dict, inst: int, pnode: int, snode: int = -1) -> None:
        """Give nodes new forthcoming figures (node: `spec.FORTH_FIELDS` values) and the forthcoming
        instance `inst` the nodes (pnode, snode) (its exclusion tags count on pnode); the state is rebuilt."""
        for k, values in use.items():
            for name, array in self._forth_arrays:
                array[k] = values[name]
        self._c.forth_pnode[inst], self._c.forth_snode[inst] = pnode, snode
        _check(lib.cairn_rebuild(self._c), "rebuild")

    def free_spindles(self) -> list[int]:
        """Every node's free spindles as the engine holds them (counted on exclusive storage only)."""
        return [self._c.state[k].f_sp for k in range(self.n)]

    def instance_column(self, name: str) -> list:
        """One field (of `spec.INSTANCE_FIELDS`) of every defined instance, in index order."""
        if name in _MASKS:
            return [self._mask(i, name) for i in range(self.count)]
        return ffi.unpack(getattr(self._c, name), self.count)

    def define_instance(self, values: dict, reuse: int = -1) -> int:
        """Add an unplaced instance with the fields of `spec.INSTANCE_FIELDS` (or overwrite the unplaced
        instance `reuse`); returns its index."""
        if reuse >= 0:
            if self._c.pnode[reuse] >= 0 or self._c.forth_pnode[reuse] >= 0:
                raise FastpathError(f"instance {reuse} is placed; only an unplaced instance can be redefined")
            self._set_fields(reuse, values)
            self._c.pnode[reuse] = self._c.snode[reuse] = -1
            return reuse
        if self.count + 1 >= self.capacity:
            self._grow(2 * self.capacity)
        i = self.count
        self._set_fields(i, values)
        self._c.pnode[i] = self._c.snode[i] = self._c.forth_pnode[i] = self._c.forth_snode[i] = -1
        self.count += 1
        self._c.n_inst = self.count
        return i

    def _set_fields(self, i: int, values: dict) -> None:
        for name in _INSTANCE_FIELDS:
            if name not in _MASKS:
                getattr(self._c, name)[i] = values[name]
        self._set_masks(i, values)

    def _grow(self, capacity: int) -> None:
        """Room for `capacity` instances: every per-instance array is copied into a larger one."""
        c = self._c
        masks = {name: [self._mask(i, name) for i in range(self.count)] for name in _MASKS}
        for ctype, names in _INSTANCE_ARRAYS + (("int", ("forth_pnode", "forth_snode", "sec_next", "pri_next")),):
            for name in names:
                if name not in _MASKS:
                    old = ffi.unpack(getattr(c, name), self.capacity)
                    if name.startswith("forth_"):  # the new slots hold no forthcoming instance
                        old += [-1] * (capacity - self.capacity)
                    setattr(c, name, self._array(ctype, capacity, old))
        for name, width in _MASKS.items():
            setattr(c, name, self._words_array(capacity, getattr(self, width), masks[name]))
        self.capacity = c.cap_inst = capacity
        if c.fo_tag != ffi.NULL:
            self._failover_cache()
        _check(lib.cairn_rebuild(c), "rebuild")

    def best_alloc(self, group: int, inst: int, required: int, mask: Sequence[bool] | None,
                   flags: int, scope: int = -1,
                   after: tuple[int, int, float] | None = None) -> tuple[tuple[int, int, float] | None, list[int]]:
        """The best (primary, secondary, score over `scope`, -1 all nodes) for an unplaced instance in
        `group`, and failure counts by reason; of equal scores the last candidate wins, as in hail.
        With `after` (a candidate found before), the best one ranking below it."""
        p, s, score = ffi.new("int *"), ffi.new("int *"), ffi.new("double *")
        counts = ffi.new("long[10]")
        cmask = ffi.new("unsigned char[]", [int(m) for m in mask]) if mask is not None else ffi.NULL
        cafter = ffi.new("double[3]", list(after)) if after is not None else ffi.NULL
        code = _check(lib.cairn_best_alloc(self._c, group, scope, inst, required, cmask, flags, cafter, p, s, score,
                                           counts), "best alloc")
        found = None if code == lib.CAIRN_NONE else (p[0], s[0], score[0])
        return found, list(counts)

    def best_forth_alloc(self, group: int, inst: int, required: int, mask: Sequence[bool] | None,
                         scope: int = -1) -> tuple[tuple[int, int, float] | None, int, list[int]]:
        """The best (primary, secondary, score over `scope`) for a forthcoming copy of the unplaced
        instance `inst` in `group` (forthcoming checks and figures only: `forthmove.ForthcomingSearch`),
        how many candidates passed the checks, and failure counts by reason."""
        p, s, score, passed = ffi.new("int *"), ffi.new("int *"), ffi.new("double *"), ffi.new("long *")
        counts = ffi.new("long[10]")
        cmask = ffi.new("unsigned char[]", [int(m) for m in mask]) if mask is not None else ffi.NULL
        code = _check(lib.cairn_best_forth_alloc(self._c, group, scope, inst, required, cmask, p, s, score, passed,
                                                 counts), "best forthcoming alloc")
        return (None if code == lib.CAIRN_NONE else (p[0], s[0], score[0])), passed[0], list(counts)

    def all_allocs(self, group: int, inst: int, required: int, mask: Sequence[bool] | None, flags: int,
                   scope: int = -1, cap: int = 0) -> tuple[list[tuple[int, int, float]], list[int]]:
        """Every valid (primary, secondary, exact score over `scope`) for an unplaced instance in
        `group`, in scan order (primary, then secondary), and failure counts by reason; `cap` bounds
        the candidates (at least as many as best_alloc tries)."""
        pnodes, snodes, scores, count, counts = self._scan_all(group, inst, required, mask, flags, scope, cap)
        return [(pnodes[k], snodes[k], scores[k]) for k in range(count)], counts

    def ranked_allocs(self, group: int, inst: int, required: int, mask: Sequence[bool] | None, flags: int,
                      scope: int = -1, cap: int = 0) -> tuple[Ranked, list[int]]:
        """all_allocs' candidates in hail's order within each primary's run (one run for a one-node
        allocation), sorted in C and read one at a time (a filter usually needs each run's first)."""
        pnodes, snodes, scores, count, counts = self._scan_all(group, inst, required, mask, flags, scope, cap)
        ends, runs = ffi.new("long[]", self.n + 1), ffi.new("long *")
        _check(lib.cairn_rank_allocs(self.n, int(required == 2), count, pnodes, snodes, scores, self.n + 1, ends,
                                     runs), "rank allocs")
        bounds = [0] + [ends[k] for k in range(runs[0])]
        return Ranked(list(zip(bounds, bounds[1:])), lambda k: (pnodes[k], snodes[k], scores[k])), counts

    def _scan_all(self, group, inst, required, mask, flags, scope, cap):
        cap = max(cap, 1)
        pnodes, snodes, scores = ffi.new("int[]", cap), ffi.new("int[]", cap), ffi.new("double[]", cap)
        count, counts = ffi.new("long *"), ffi.new("long[10]")
        cmask = ffi.new("unsigned char[]", [int(m) for m in mask]) if mask is not None else ffi.NULL
        _check(lib.cairn_alloc_all(self._c, group, scope, inst, required, cmask, flags, cap, pnodes, snodes, scores,
                                   count, counts), "all allocs")
        return pnodes, snodes, scores, count[0], list(counts)

    def touched_flags(self) -> tuple[list[int], list[int], list[int]]:
        """What `restore` puts back after trial moves: which nodes moves have touched (their N+1 test
        switches from reported to computed memory) and their free spindles."""
        return ([self._c.touched[k] for k in range(self.n)], ffi.unpack(self._c.sp_delta, self.n),
                ffi.unpack(self._c.forth_fsp, self.n))

    def restore(self, inst: int, pnode: int, snode: int, saved: tuple[list[int], list[int], list[int]]) -> None:
        """Put an instance back where it was and restore what `touched_flags` saved, undoing trial moves."""
        _check(lib.cairn_place(self._c, inst, pnode, snode), "restore")
        touched, sp_delta, forth_fsp = saved
        for k, flag in enumerate(touched):
            self._c.touched[k] = flag
        self._c.sp_delta[0:self.n] = sp_delta
        self._c.forth_fsp[0:self.n] = forth_fsp
        _check(lib.cairn_rebuild(self._c), "rebuild")
