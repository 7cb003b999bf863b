"""Leader loss with real member processes: failover, catch-up, quorum loss, repeated leader kills."""

import itertools

import pytest
import trio

from consensus.log import LogError, NoQuorum
from consensus.record import check_link
from tests.integration.consensus_cluster import ProcessCluster, propose_with_retry

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path):
    cluster = ProcessCluster(tmp_path / "cluster")
    try:
        yield cluster
    finally:
        cluster.close()


async def read_everything(cluster, node):
    async with cluster.client(node) as client:
        return [record async for record in client.read_all()]


async def test_a_new_leader_accepts_proposals_and_the_killed_one_catches_up(cluster):
    """After kill -9 of the leader a new one commits, and the restarted old leader reaches the same head."""
    cluster.start_all()
    leader, _term = await cluster.wait_leader()
    async with cluster.client(leader) as client:
        for i in range(50):
            await client.propose(f"before {i}".encode())
    cluster.kill(leader)
    new_leader, _new_term = await cluster.wait_leader(not_in=(leader,))
    async with cluster.client(new_leader) as client:
        for i in range(50):
            await propose_with_retry(client, f"after {i}".encode())
    cluster.start(leader)
    seq, digest = await cluster.wait_same_head(cluster.voters)
    assert seq >= 100
    records = await read_everything(cluster, leader)
    assert records[-1].seq == seq and records[-1].hash == digest


async def test_without_a_majority_nothing_commits_and_acknowledged_records_survive(cluster):
    """With 2 of 3 killed the survivor reports no quorum; when one returns every acknowledged record is there."""
    cluster.start_all()
    leader, _term = await cluster.wait_leader()
    acknowledged = {}
    async with cluster.client(leader) as client:
        for i in range(30):
            payload = f"acked {i}".encode()
            acknowledged[await client.propose(payload)] = payload
    survivor = next(n for n in cluster.voters if n != leader)
    for node in cluster.voters:
        if node != survivor:
            cluster.kill(node)
    refusals = 0
    async with cluster.client(survivor) as client:
        head_before = (await client.head()).seq
        with trio.fail_after(20):
            while refusals < 5:
                try:
                    await client.propose(b"must not commit", timeout_s=0.5)
                except NoQuorum:
                    refusals += 1
                except LogError:
                    pass
        assert (await client.head()).seq == head_before
    cluster.start(leader)
    await cluster.wait_leader()
    await cluster.wait_same_head(cluster.alive())
    for node in cluster.alive():
        by_seq = {r.seq: r.payload for r in await read_everything(cluster, node)}
        assert all(by_seq[seq] == payload for seq, payload in acknowledged.items())


async def keep_proposing(cluster, client_number, acknowledged, stop):
    """One client: propose unique payloads through any live member, retrying the same payload on failure."""
    for n in itertools.count():
        if stop.is_set():
            return
        payload = f"client {client_number} payload {n}".encode()
        while not stop.is_set():
            node = cluster.alive()[(client_number + n) % max(1, len(cluster.alive()))]
            try:
                with trio.fail_after(5):
                    async with cluster.client(node) as client:
                        acknowledged[payload] = await client.propose(payload, timeout_s=1.0)
                        break
            except (LogError, OSError, ConnectionError, TimeoutError, trio.TooSlowError):
                await trio.sleep(0.02)


async def test_twenty_leader_kills_lose_no_acknowledged_payload(cluster):
    """Under continuous proposals from several clients, 20 leader kills lose nothing acknowledged and all heads agree."""
    cluster.start_all()
    await cluster.wait_leader()
    acknowledged: dict[bytes, int] = {}
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        for number in range(4):
            nursery.start_soon(keep_proposing, cluster, number, acknowledged, stop)
        with trio.fail_after(150):
            for _kill in range(20):
                leader, _term = await cluster.wait_leader()
                await trio.sleep(0.3)
                cluster.kill(leader)
                await cluster.wait_leader(not_in=(leader,))
                cluster.start(leader)
                await cluster.wait_all_know_leader()
        await trio.sleep(0.5)
        stop.set()
    seq, digest = await cluster.wait_same_head(cluster.voters)
    records = await read_everything(cluster, cluster.voters[0])
    previous = None
    for record in records:
        check_link(previous, record)
        previous = record
    assert (records[-1].seq, records[-1].hash) == (seq, digest)
    by_seq = {r.seq: r.payload for r in records}
    assert len(acknowledged) > 100
    lost = [p for p, s in acknowledged.items() if by_seq.get(s) != p]
    assert not lost, f"{len(lost)} acknowledged payloads are not at their seq, e.g. {lost[:3]}"
