"""Non-voting members and voter changes with real member processes."""

import pytest
import trio

from tests.integration.consensus_cluster import ProcessCluster, propose_with_retry

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path):
    cluster = ProcessCluster(tmp_path / "cluster", voters=3, non_voters=1,
                             extra_args=("--compaction-entries", "50"))
    try:
        yield cluster
    finally:
        cluster.close()


async def test_a_late_non_voter_receives_everything_and_its_proposals_commit(cluster):
    """A non-voter started after compaction gets the whole history, and what it proposes commits everywhere."""
    for node in cluster.voters:
        cluster.start(node)
    leader, _term = await cluster.wait_leader(among=cluster.voters)
    async with cluster.client(leader) as client:
        for i in range(150):
            await client.propose(f"before the non-voter {i}".encode())
    observer = cluster.non_voters[0]
    cluster.start(observer)
    with trio.fail_after(30):
        while not (await cluster.status(observer) or {}).get("leader"):
            await trio.sleep(0.1)
    async with cluster.client(observer) as client:
        seqs = [await propose_with_retry(client, f"from the non-voter {i}".encode()) for i in range(20)]
    seq, digest = await cluster.wait_same_head(cluster.nodes)
    assert seq >= max(seqs) == 170 or seq >= max(seqs)
    with trio.fail_after(30):
        while (await cluster.status(observer))["history_gap"] is not None:
            await trio.sleep(0.1)
    async with cluster.client(observer) as client:
        records = [r async for r in client.read_all()]
        status = await client.status()
    assert [r.seq for r in records] == list(range(1, seq + 1))
    assert records[-1].hash == digest
    assert status["history_copies"] >= 1
    assert status["non_voters"] == [observer] and observer not in status["voters"]
    leader_status = await cluster.status(leader)
    assert sorted(leader_status["voters"]) == sorted(cluster.voters)
