"""Fencing and recovery on a real local cluster: a node dies, hangs or is stopped; its watchdog kills its
instances, the leader fences it after the recovery interval, and its instances come back elsewhere.

A monitor samples every instance process every 10 ms and fails a test on any moment with two running copies
of one instance. Bounds are generous (the defaults recover in about 8-10 s).
"""

import os
import signal
import time

import pytest

from tests.integration.cluster_support import InstanceMonitor, started

pytestmark = pytest.mark.slow

RECOVERY_BOUND_S = 60


@pytest.fixture
def cluster(tmp_path):
    with started(tmp_path) as cluster:
        yield cluster


def rows(cluster) -> dict:
    return {row["name"]: row for row in cluster.json("instance", "list", "-o", "name,id,pnode,snodes,status")}


def add_replicated(cluster, primary: str, secondary: str, count: int, prefix: str = "db") -> list[str]:
    names = [f"{prefix}{k}" for k in range(count)]
    for name in names:
        cluster.run("instance", "add", "-t", "replicated", "-n", f"{primary}:{secondary}", "-s", "1G",
                    "-B", "memory=128M", "--no-install", name)
    cluster.wait(lambda: all(r["status"] == "running" for r in rows(cluster).values()), 60, "the instances to run")
    return names


def wait_uptodate(cluster, names: list[str]) -> None:
    """Until every disk of these instances is reported UPTODATE on its secondary (recovery needs that)."""
    def ready():
        for name in names:
            info = cluster.json("instance", "info", name)
            info = info[0] if isinstance(info, list) else info
            states = {(s["node"], s["state"]) for s in info.get("disk_states") or []}
            if (info["snodes"][0], "UPTODATE") not in states:
                return False
        return True
    cluster.wait(ready, 60, "the secondaries' copies to be reported UPTODATE")


def follower_of(cluster) -> str:
    leader = cluster.master()
    return next(n for n in cluster.names() if n != leader)


def recovered(cluster, names: list[str], dead: str):
    current = rows(cluster)
    return all(current[n]["pnode"] != dead and current[n]["status"] == "running" for n in names) and current


def died_before_restarted(monitor, ids: dict, dead: str, new: dict) -> None:
    """Every instance's process on the dead node was last seen before its new copy was first seen."""
    for name, instance_id in ids.items():
        old = monitor.seen.get((instance_id, dead))
        fresh = monitor.seen.get((instance_id, new[name]))
        assert fresh is not None, f"{name}: never seen running on {new[name]}"
        assert old is None or old[1] < fresh[0], f"{name}: still running on {dead} after it started elsewhere"


def jobs(cluster, opcode: str) -> list[dict]:
    return [j for j in cluster.json("job", "list", "-o", "id,status,summary,actor")
            if opcode in " ".join(j.get("summary") or [])]


def test_a_whole_node_killed_comes_back_on_its_secondaries(cluster):
    """kill -9 of a node's daemon, watchdog and instances: its replicated instances restart on their
    secondaries, with the fence and each recovery as jobs of the healer; never two copies."""
    node = follower_of(cluster)
    other = next(n for n in cluster.names() if n != node)
    names = add_replicated(cluster, node, other, 3)
    wait_uptodate(cluster, names)
    with InstanceMonitor(cluster.directory) as monitor:
        killed_at = time.monotonic()
        cluster.kill_whole_node(node)
        current = cluster.wait(lambda: recovered(cluster, names, node), RECOVERY_BOUND_S, "the recovery")
        took = time.monotonic() - killed_at
    assert monitor.double_runs == 0, monitor.doubles[:5]
    assert {current[n]["pnode"] for n in names} == {other}
    assert took >= 7.5, f"recovered after {took:.1f} s, before the recovery interval (8 s) could have passed"
    fence = jobs(cluster, "NODE_FENCE")
    assert [j["actor"] for j in fence] == ["cairn-healer"]
    assert len([j for j in jobs(cluster, "INSTANCE_RECOVER") if j["status"] == "success"]) == 3
    node_row = next(r for r in cluster.json("node", "list", "-o", "name,offline,liveness") if r["name"] == node)
    assert node_row["offline"] is True and node_row["liveness"] == "fenced"


def test_a_killed_daemon_is_fenced_by_its_watchdog_before_the_restart_elsewhere(cluster):
    """kill -9 of the daemon alone: its watchdog kills the instances once the lease lapses; only then are they
    started on the secondary. Started again, the node comes back online by itself and runs nothing."""
    node = follower_of(cluster)
    other = next(n for n in cluster.names() if n != node)
    names = add_replicated(cluster, node, other, 2)
    wait_uptodate(cluster, names)
    ids = {n: r["id"] for n, r in rows(cluster).items()}
    with InstanceMonitor(cluster.directory) as monitor:
        cluster.kill(node)
        current = cluster.wait(lambda: recovered(cluster, names, node), RECOVERY_BOUND_S, "the recovery")
    assert monitor.double_runs == 0, monitor.doubles[:5]
    died_before_restarted(monitor, ids, node, {n: current[n]["pnode"] for n in names})
    assert monitor.on(node) == set()
    cluster.up()
    cluster.wait(lambda: next(r for r in cluster.json("node", "list", "-o", "name,offline,liveness")
                              if r["name"] == node)["liveness"] == "alive", 60, f"{node} to come back online")


def test_a_stopped_daemon_is_fenced_and_recovers_cleanly_when_continued(cluster):
    """SIGSTOP of a daemon: the same outcome as a kill; continued, it acts on nothing stale (no second copy),
    rejoins and is online again."""
    node = follower_of(cluster)
    other = next(n for n in cluster.names() if n != node)
    names = add_replicated(cluster, node, other, 2)
    wait_uptodate(cluster, names)
    ids = {n: r["id"] for n, r in rows(cluster).items()}
    pid = cluster.pid(node)
    with InstanceMonitor(cluster.directory) as monitor:
        os.kill(pid, signal.SIGSTOP)
        try:
            current = cluster.wait(lambda: recovered(cluster, names, node), RECOVERY_BOUND_S, "the recovery")
        finally:
            os.kill(pid, signal.SIGCONT)
        cluster.wait(lambda: next(r for r in cluster.json("node", "list", "-o", "name,liveness")
                                  if r["name"] == node)["liveness"] == "alive", 60, f"{node} to come back online")
        time.sleep(3)       # the continued daemon has had time to act on anything stale
    assert monitor.double_runs == 0, monitor.doubles[:5]
    died_before_restarted(monitor, ids, node, {n: current[n]["pnode"] for n in names})
    assert monitor.on(node) == set()
    assert {r["pnode"] for n, r in rows(cluster).items() if n in names} == {other}


def test_the_leader_killed_during_a_recovery(cluster):
    """A follower node dies; while its recovery runs the leader's daemon is killed and started again: the next
    leader finishes the recovery, and nothing runs twice."""
    node = follower_of(cluster)
    leader = cluster.master()
    other = next(n for n in cluster.names() if n not in (node, leader))
    names = add_replicated(cluster, node, other, 3)
    wait_uptodate(cluster, names)
    with InstanceMonitor(cluster.directory) as monitor:
        cluster.kill_whole_node(node)
        cluster.wait(lambda: jobs(cluster, "NODE_FENCE"), RECOVERY_BOUND_S, "the fence job")
        cluster.kill(leader)
        cluster.up()
        current = cluster.wait(lambda: recovered(cluster, names, node), RECOVERY_BOUND_S, "the recovery")
    assert monitor.double_runs == 0, monitor.doubles[:5]
    assert {current[n]["pnode"] for n in names} == {other}


def test_disarmed_recovery_and_a_node_in_maintenance_fence_nothing(cluster):
    """Recovery disarmed: a node's daemon killed leaves its instances running (the watchdog stood down) and
    nothing is fenced. Armed again, a node in maintenance whose daemon is stopped is not fenced either."""
    node = follower_of(cluster)
    other = next(n for n in cluster.names() if n != node)
    add_replicated(cluster, node, other, 1)
    ids = {n: r["id"] for n, r in rows(cluster).items()}
    cluster.run("cluster", "recovery", "disarm")
    time.sleep(2)           # every node has had a renewal that stands its watchdog down
    cluster.kill(node)
    time.sleep(15)          # past the fencing and recovery intervals
    assert jobs(cluster, "NODE_FENCE") == []
    with InstanceMonitor(cluster.directory) as monitor:
        assert monitor.on(node) == set(ids.values())
    cluster.up()
    cluster.run("cluster", "recovery", "arm")
    cluster.run("node", "maintenance", node, "on")
    time.sleep(2)
    os.kill(cluster.pid(node), signal.SIGTERM)
    time.sleep(15)
    assert jobs(cluster, "NODE_FENCE") == []
    with InstanceMonitor(cluster.directory) as monitor:
        assert monitor.on(node) == set(ids.values())
    cluster.up()
