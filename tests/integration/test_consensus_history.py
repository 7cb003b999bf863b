"""Durable history with real member processes: a long history restarts quietly, a lagging member copies what it missed."""

import pytest
import trio

from consensus.record import check_link
from tests.integration.consensus_cluster import ProcessCluster, propose_with_retry

pytestmark = pytest.mark.slow


@pytest.fixture
def make_cluster(tmp_path):
    clusters = []

    def make(**options):
        cluster = ProcessCluster(tmp_path / f"cluster{len(clusters)}", **options)
        clusters.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in clusters:
            cluster.close()


async def propose_many(client, count, concurrency=128, size=100):
    async def worker(number):
        for n in range(number, count, concurrency):
            await client.propose(f"{n:08d}".encode().ljust(size, b"."), timeout_s=30)

    async with trio.open_nursery() as nursery:
        for number in range(concurrency):
            nursery.start_soon(worker, number)


async def assert_full_chain(cluster, node, seq, digest):
    async with cluster.client(node) as client:
        status = await client.status()
        records = [r async for r in client.read_all(1, seq)]
    assert status["history_gap"] is None and status["history_seq"] == seq
    previous = None
    for record in records:
        check_link(previous, record)
        previous = record
    assert len(records) == seq and (previous.seq, previous.hash) == (seq, digest)


async def test_a_member_with_a_long_history_restarts_without_deposing_the_leader(make_cluster):
    """A follower holding 100k records restarts, catches up, and the leader keeps its term."""
    cluster = make_cluster(extra_args=("--compaction-entries", "200"))
    cluster.start_all()
    leader, term = await cluster.wait_leader()
    async with cluster.client(leader) as client:
        await propose_many(client, 100_000)
    await cluster.wait_same_head(cluster.voters)
    leader, term = await cluster.wait_leader()
    follower = next(n for n in cluster.voters if n != leader)
    cluster.kill(follower)
    cluster.start(follower)
    seq, digest = await cluster.wait_same_head(cluster.voters, timeout_s=90)
    await trio.sleep(2.0)
    status = await cluster.status(leader)
    assert status["is_leader"] and status["term"] == term
    assert seq >= 100_000
    await assert_full_chain(cluster, follower, seq, digest)


async def test_a_member_behind_a_snapshot_copies_the_missing_history_from_a_peer(make_cluster):
    """A member restarted after the leader compacted past it installs the snapshot and copies the gap from a peer."""
    cluster = make_cluster(extra_args=("--compaction-entries", "50"))
    cluster.start_all()
    leader, _term = await cluster.wait_leader()
    lagging = next(n for n in cluster.voters if n != leader)
    cluster.stop(lagging)
    async with cluster.client(leader) as client:
        for i in range(300):
            await propose_with_retry(client, f"while away {i}".encode())
        with trio.fail_after(30):
            while (await client.status())["log_len"] > 200:
                await trio.sleep(0.1)
    cluster.start(lagging)
    seq, digest = await cluster.wait_same_head(cluster.voters)
    with trio.fail_after(30):
        while (await cluster.status(lagging))["history_gap"] is not None:
            await trio.sleep(0.1)
    await assert_full_chain(cluster, lagging, seq, digest)
    assert (await cluster.status(lagging))["history_copies"] >= 1


async def test_a_restarted_member_serves_its_history_after_a_graceful_stop(make_cluster):
    """After SIGTERM and restart a member reads back every record from its segments."""
    cluster = make_cluster(fsync="always")
    cluster.start_all()
    leader, _term = await cluster.wait_leader()
    async with cluster.client(leader) as client:
        await propose_many(client, 2000, concurrency=16)
    seq, digest = await cluster.wait_same_head(cluster.voters)
    cluster.stop(leader)
    cluster.start(leader)
    await cluster.wait_same_head(cluster.voters)
    await assert_full_chain(cluster, leader, seq, digest)
