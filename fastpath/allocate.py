"""Allocation across node groups (hail's choice of group and nodes), shared by the iallocator and capacity planner.

Pure stdlib; the engine does the per-group search.
"""

from fastpath.globaln1 import CandidateCheck
from fastpath.model import Cluster
from fastpath.record import field, record
from fastpath.spec import (ALLOC_EITHER, ALLOC_NEVER, ALLOC_PRIMARY, ALLOC_SECONDARY, FAIL_N1, FAIL_NAMES, IGNORE_SOFT,
                           Ranked, Spec, hail_order)

POLICY_ORDER = {"preferred": 0, "last_resort": 1}


@record
class GroupOutcome:
    """How one group fared for one allocation."""

    name: str
    policy: str
    index: int
    nodes: tuple[int, int] | None = None
    score: float = 0.0
    successes: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    error: str = ""
    message: str = ""  # the whole text for a group hail did not try (not connected to the networks)

    def reasons(self) -> str:
        """hail's failure list, e.g. 'FailMem: 6, FailDisk: 2'."""
        return ", ".join(f"{name}: {count}" for name, count in self.failures.items() if count)


def allocate(engine, spec: Spec, cluster: Cluster, inst: int, required: int, group_indices: list[int],
             mask=None, ignore_soft: bool = False, capacity_check: bool = True,
             whole_cluster: bool = True, unconnected=None,
             refused_primaries=None, search=None) -> tuple[GroupOutcome | None, list[GroupOutcome]]:
    """Try every group; return the chosen outcome (policy order, then score) and all outcomes.

    Like hail, candidates are scored over the whole cluster, or over their own group when the
    request names the group (`whole_cluster` False). `unconnected(g)` says why group g lacks a
    network the instance needs (None: it has them all); hail lists those groups first, untried.
    `refused_primaries(g)` maps the nodes of g the instance policy refuses as primaries (hail
    checks the policy per candidate with the primary's exclusive-storage flag) to the reason.
    `search` replaces `try_group`, the search in one group (`forthmove.ForthcomingSearch`)."""
    search = search or try_group
    outcomes, skipped = [], []
    flags = IGNORE_SOFT if ignore_soft else 0
    for g in group_indices:
        group = cluster.groups[g]
        outcome = GroupOutcome(group.name, group.alloc_policy, g)
        outcome.message = (unconnected(g) if unconnected else None) or ""
        (skipped if outcome.message else outcomes).append(outcome)
        if outcome.message:
            continue
        if group.alloc_policy == "unallocable":
            continue
        online = _candidate_count(engine, spec, g, 1, mask)
        if online < required:
            outcome.error = "Not enough online nodes"
            continue
        refused = refused_primaries(g) if refused_primaries else {}
        group_mask = _without_primaries(spec, mask, g, refused)
        search(engine, spec, outcome, (g, inst, required, group_mask, flags, -1 if whole_cluster else g),
               capacity_check)
        _count_refused(spec, outcome, mask, g, required, refused)
    good = [o for o in outcomes if o.nodes is not None]
    good.sort(key=lambda o: (POLICY_ORDER.get(o.policy, 2), o.score))
    return (good[0] if good else None), skipped + outcomes


def _without_primaries(spec: Spec, mask, group: int, refused: dict[int, int]):
    """The allocation mask with the refused nodes allowed as secondaries only."""
    if not refused:
        return mask
    roles = [ALLOC_EITHER if mask is None else int(mask[k]) for k in range(spec.n_nodes)]
    for k in refused:
        if role_allowed(spec, mask, group, k, ALLOC_PRIMARY):
            roles[k] = ALLOC_SECONDARY if role_allowed(spec, mask, group, k, ALLOC_SECONDARY) else ALLOC_NEVER
    return roles


def _count_refused(spec: Spec, outcome: GroupOutcome, mask, group: int, required: int, refused: dict[int, int]) -> None:
    """Count the candidates of refused primaries as failures, with the policy's reason."""
    secondaries = [k for k in range(spec.n_nodes) if role_allowed(spec, mask, group, k, ALLOC_SECONDARY)]
    for k, reason in refused.items():
        if role_allowed(spec, mask, group, k, ALLOC_PRIMARY):
            name = FAIL_NAMES[reason]
            count = 1 if required == 1 else sum(1 for s in secondaries if s != k)
            outcome.failures[name] = outcome.failures.get(name, 0) + count
    outcome.failures = {n: outcome.failures[n] for n in FAIL_NAMES if n in outcome.failures}


def _reject_n1(outcome: GroupOutcome, count: int) -> None:
    """Count `count` more candidates as failing the global N+1 check (hail's FailN1)."""
    outcome.failures[FAIL_NAMES[FAIL_N1]] = outcome.failures.get(FAIL_NAMES[FAIL_N1], 0) + count
    outcome.failures = {n: outcome.failures[n] for n in FAIL_NAMES if n in outcome.failures}
    outcome.successes -= count


def _first_redundant(engine, spec: Spec, inst: int, outcome: GroupOutcome, search_args):
    """hail's choice under its global N+1 check: the best candidate, in hail's score order, that
    keeps the cluster globally N+1 redundant, and hail's FailN1 count.

    hail 3.0.2 filters per primary for a drbd instance (per node for a one-node one): sorted by
    score, the candidates up to the first that passes count as FailN1, those after it are not
    checked (they stay successes), and a primary with no passing candidate counts them all
    (`collectionToSolution`, which `break`s at the first good element). fastpath.globaln1 makes
    the check incremental. When some node's evacuation fails whatever hail chooses, every
    candidate fails (a candidate only takes resources, see `CandidateCheck.failing`), and none is
    listed."""
    check = CandidateCheck(engine, spec, inst)
    if check.failing:
        _reject_n1(outcome, outcome.successes)
        return None
    group, _, required, mask = search_args[:4]
    ranked = engine.ranked_allocs(*search_args, cap=_candidate_count(engine, spec, group, required, mask))[0]
    chosen, failures = _hail_filter(spec.n_nodes, check, ranked)
    _reject_n1(outcome, failures)
    return chosen


def _hail_filter(n_nodes: int, check: CandidateCheck, ranked: Ranked) -> tuple[tuple[int, int, float] | None, int]:
    """(the chosen candidate or None, how many count as FailN1) under hail's per-primary filter."""
    goods, failures = [], 0
    for start, end in ranked.runs:
        for k in range(start, end):
            found = ranked.at(k)
            if check.redundant(found[0], found[1]):
                goods.append(found)
                failures += k - start
                break
        else:
            failures += end - start
    return (hail_order(n_nodes, goods)[0] if goods else None), failures


def try_group(engine, spec: Spec, outcome: GroupOutcome, search_args: tuple, capacity_check: bool) -> None:
    """hail's search in one group, `search_args` being best_alloc's (group, instance, required nodes,
    mask, flags, score scope): fills the outcome's failures, successes and, if any, nodes and score."""
    group, inst, required, mask = search_args[:4]
    found, counts = engine.best_alloc(*search_args)
    outcome.failures = {FAIL_NAMES[k]: counts[k] for k in range(1, len(FAIL_NAMES)) if counts[k]}
    outcome.successes = _candidate_count(engine, spec, group, required, mask) - sum(counts)
    if found is not None and capacity_check:
        found = _first_redundant(engine, spec, inst, outcome, search_args)
    if found is not None:
        outcome.nodes, outcome.score = (found[0], found[1]), found[2]


def role_allowed(spec: Spec, mask, group: int, k: int, role: int) -> bool:
    """Whether node k may take the new instance in `role`, as the engines' allocation masks say."""
    value = ALLOC_EITHER if mask is None else int(mask[k])
    return spec.nodes["group"][k] == group and (not spec.nodes["offline"][k] if value == ALLOC_EITHER
                                                else value == role)


def _candidate_count(engine, spec: Spec, group: int, required: int, mask) -> int:
    """How many candidates best_alloc tries: nodes (or ordered pairs) allowed by the mask's roles."""
    primaries = {k for k in range(spec.n_nodes) if role_allowed(spec, mask, group, k, ALLOC_PRIMARY)}
    if required == 1:
        return len(primaries)
    secondaries = {k for k in range(spec.n_nodes) if role_allowed(spec, mask, group, k, ALLOC_SECONDARY)}
    return len(primaries) * len(secondaries) - len(primaries & secondaries)
