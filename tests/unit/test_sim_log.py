"""The simulated log: determinism per seed, Raft safety under injected faults, convergence after healing."""

import pytest

from consensus.log import NotLeader
from consensus.sim_log import SimCluster

NAMES = ["a", "b", "c", "d", "e"]


def propose_on_leader(cluster, payload):
    """Propose through whoever leads now; None when nobody does."""
    leader = cluster.leader()
    if leader is None:
        return None
    try:
        return cluster.propose_nowait(leader, payload)
    except NotLeader:
        return None


def chaotic_run(seed, ticks=2000, names=NAMES, check=None):
    """Faults every 40 ticks and a proposal every 3 ticks; returns the cluster and the acknowledged payloads."""
    cluster = SimCluster(names, seed=seed)
    waiters = {}
    for step in range(ticks):
        if step % 40 == 39:
            cluster.inject_random_fault()
        if step % 3 == 0:
            payload = f"seed {seed} step {step}".encode()
            waiter = propose_on_leader(cluster, payload)
            if waiter is not None:
                waiters[payload] = waiter
        cluster.tick()
        if check is not None and step % 10 == 0:
            check(cluster)
    return cluster, waiters


def heal_everything(cluster, ticks=600):
    cluster.heal()
    for name, node in cluster.nodes.items():
        if not node.up:
            cluster.restart(name)
    cluster.tick(ticks)


def assert_prefixes(cluster):
    """Every two members' committed records agree on their common length."""
    histories = [node.records for node in cluster.nodes.values()]
    for one in histories:
        for other in histories:
            common = min(len(one), len(other))
            if common:
                assert one[common - 1].hash == other[common - 1].hash


def test_the_same_seed_gives_the_same_run():
    """Two runs with the same seed make the same decisions and end with the same histories."""
    first, _ = chaotic_run(11, ticks=1500)
    second, _ = chaotic_run(11, ticks=1500)
    assert first.trace.digest() == second.trace.digest()
    assert [n.records for n in first.nodes.values()] == [n.records for n in second.nodes.values()]


def test_a_different_seed_gives_a_different_run():
    """Another seed draws other delays and faults."""
    first, _ = chaotic_run(11, ticks=800)
    second, _ = chaotic_run(12, ticks=800)
    assert first.trace.digest() != second.trace.digest()


def test_a_leader_is_elected_within_a_few_election_timeouts():
    """A healthy cluster elects a leader within 100 ticks."""
    cluster = SimCluster(["a", "b", "c"], seed=1)
    cluster.tick(100)
    assert cluster.leader() is not None


@pytest.mark.parametrize("seed", range(12))
def test_committed_histories_never_diverge_and_converge_after_healing(seed):
    """Under crashes, partitions and drops histories stay prefixes of each other; healed, they agree and keep every acknowledged payload."""
    cluster, waiters = chaotic_run(seed, ticks=2500, check=assert_prefixes)
    heal_everything(cluster)
    heads = {(n.records[-1].seq, n.records[-1].hash) if n.records else None for n in cluster.nodes.values()}
    assert len(heads) == 1
    by_seq = {r.seq: r.payload for r in cluster.nodes["a"].records}
    acknowledged = {p: w.seq for p, w in waiters.items() if w.done.is_set() and w.error is None}
    assert acknowledged
    assert all(by_seq[seq] == payload for payload, seq in acknowledged.items())


def test_a_leader_cut_off_in_a_minority_commits_nothing():
    """A leader partitioned alone cannot commit; the majority elects another leader that can."""
    cluster = SimCluster(["a", "b", "c"], seed=3)
    cluster.tick(100)
    old = cluster.leader()
    others = [n for n in ["a", "b", "c"] if n != old]
    cluster.partition([old], others)
    stranded = cluster.propose_nowait(old, b"stranded")
    cluster.tick(200)
    new = cluster.leader()
    assert new in others
    committed = cluster.propose_nowait(new, b"committed")
    cluster.tick(50)
    assert committed.seq is not None and stranded.seq is None
    cluster.heal()
    cluster.tick(100)
    assert stranded.seq is None and stranded.error is not None
    assert [r.payload for r in cluster.nodes[old].records] == [r.payload for r in cluster.nodes[new].records]


def test_a_crashed_member_catches_up_after_restart():
    """A member that was down while others committed receives everything after it restarts."""
    cluster = SimCluster(["a", "b", "c"], seed=5)
    cluster.tick(100)
    down = next(n for n in ["a", "b", "c"] if n != cluster.leader())
    cluster.crash(down)
    for i in range(30):
        propose_on_leader(cluster, f"while down {i}".encode())
        cluster.tick(2)
    cluster.restart(down)
    cluster.tick(300)
    leader_records = cluster.nodes[cluster.leader()].records
    assert len(leader_records) == 30
    assert cluster.nodes[down].records == leader_records
