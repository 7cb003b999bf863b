"""Killing nodes of a real cluster during a stream of jobs: no acknowledged job lost, none run twice, same digests."""

import signal
import threading
import time

import pytest

from tests.integration.cluster_support import JobStream, history_records, started

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path):
    with started(tmp_path) as cluster:
        yield cluster


def same_digest_everywhere(cluster):
    seen = {}
    for node in cluster.names():
        info = cluster.json("cluster", "info", "--api", cluster.address(node))
        seen[node] = (info["seq"], info["digest"])
    return len(set(seen.values())) == 1 and seen


def run_stream_through(cluster, stream, faults):
    """Run the stream in a thread while `faults()` runs here; then let it finish its current job."""
    thread = threading.Thread(target=stream.run, daemon=True)
    thread.start()
    try:
        faults()
    finally:
        stream.stop = True
        thread.join(timeout=120)
    assert not thread.is_alive(), "the job stream did not finish"


def check_nothing_lost_or_doubled(cluster, stream):
    assert not stream.refused, stream.refused
    assert stream.results, "no job was acknowledged"
    assert [r for r in stream.results if r[2] != "success"] == []
    # A record repeated under one event id (a retried request or step) is applied once by replay; two event
    # ids for one request id or one instance would be a job or an add run twice.
    history = history_records(cluster, cluster.names()[0])
    ours = {rid: ids for rid, ids in history["submitted"].items() if rid.startswith(stream.prefix)}
    assert set(ours) >= {r[0] for r in stream.results}
    assert [rid for rid, ids in ours.items() if len(set(ids)) != 1] == []
    doubled = {name: ids for name, ids in history["added"].items() if len(set(ids)) != 1}
    assert doubled == {}
    names = {row["name"] for row in cluster.json("instance", "list")}
    assert {f"{stream.prefix}{rid.rsplit('-', 1)[1]}" for rid, *_ in stream.results} <= names


def test_leader_killed_twice_during_a_stream_of_jobs(cluster):
    """kill -9 of the leader, twice, while jobs stream in: every acknowledged job succeeds exactly once."""
    stream = JobStream(cluster, "kl", cluster.names())

    def faults():
        for _round in range(2):
            time.sleep(2.0)
            leader = cluster.master()
            cluster.kill(leader)
            cluster.wait(lambda: cluster.master(via=next(n for n in cluster.names() if n != leader)) != leader,
                         30, "a new leader")
            time.sleep(2.0)
            cluster.up()   # starts the killed node again
        time.sleep(1.0)

    run_stream_through(cluster, stream, faults)
    check_nothing_lost_or_doubled(cluster, stream)
    cluster.wait(lambda: same_digest_everywhere(cluster), 60, "every node to reach the same digest")


def test_follower_killed_and_leader_stopped(cluster):
    """A follower killed and brought back, then the leader frozen with SIGSTOP and thawed: nothing lost."""
    stream = JobStream(cluster, "fs", cluster.names())

    def faults():
        time.sleep(1.5)
        leader = cluster.master()
        follower = next(n for n in cluster.names() if n != leader)
        cluster.kill(follower)
        time.sleep(2.0)
        cluster.up()
        time.sleep(1.5)
        leader = cluster.master()
        cluster.kill(leader, signal.SIGSTOP)
        try:
            cluster.wait(lambda: cluster.master(via=next(n for n in cluster.names() if n != leader)) != leader,
                         30, "a new leader")
            time.sleep(2.0)
        finally:
            cluster.kill(leader, signal.SIGCONT)
        time.sleep(1.5)

    run_stream_through(cluster, stream, faults)
    check_nothing_lost_or_doubled(cluster, stream)
    cluster.wait(lambda: same_digest_everywhere(cluster), 60, "every node to reach the same digest")


def test_a_dead_nodes_instances_fail_over_once_it_is_declared_offline(cluster):
    """kill -9 of a node; `node modify --offline yes` (the operator's fence assertion), then `node failover`:
    its replicated instance runs on its secondary (Ganeti's failover --ignore-consistency path)."""
    cluster.run("instance", "add", "-t", "replicated", "-n", "node3:node2", "-s", "1G", "--no-install", "dead1")
    cluster.kill("node3")
    survivor = cluster.address("node1")
    cluster.wait(lambda: cluster.master(via="node1") in ("node1", "node2"), 30, "a leader among the survivors")
    cluster.run("node", "modify", "--offline", "yes", "node3", "--api", survivor)
    cluster.run("node", "failover", "node3", "--api", survivor)
    row = cluster.json("instance", "list", "dead1", "--api", survivor)[0]
    assert (row["pnode"], row["status"]) == ("node2", "running")
    fenced = [n for n in cluster.json("node", "list", "--api", survivor) if n["name"] == "node3"][0]
    assert fenced["offline"] and fenced["fenced"]
