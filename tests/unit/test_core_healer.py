"""Tests of appliance/core/healer.py: the leader fences a lapsed node with a job, recovers its instances, and
brings a fenced node that came back online; never while disarmed or for a node in maintenance."""

from appliance.core.io import LeaderCommit, LeaseLost, NodeLapsed, NodeReturned, Tick
from appliance.model import events as ev
from tests.unit.core_support import add_instance, cluster, op


def jobs_of(harness, opcode: str) -> list:
    return [j for j in harness.state.jobs.values() if j.operations[0]["op"] == opcode]


def test_a_lapsed_node_is_fenced_and_its_instances_recovered_with_reasons():
    """NodeLapsed on the leader: a node_fence job by cairn-healer with the detail as its reason; the replicated
    instance restarts on its UPTODATE secondary, and the follow-up job's reason names the fence."""
    harness = cluster(("node1", "node2", "node3"))
    found = add_instance(harness, primary="node2", secondary="node3")
    harness.commit_event(ev.DiskStateObserved(found.id, 0, found.secondary, "UPTODATE", 100.0))
    harness.world.hosts["node2"].power_off()
    harness.send("node1", NodeLapsed("node2", "no lease for 8.1 s"))
    harness.advance(10)
    (fence,) = jobs_of(harness, "node_fence")
    assert (fence.status, fence.actor, fence.reason) == ("success", "cairn-healer", "node node2: no lease for 8.1 s")
    node = harness.state.node_by_name("node2")
    assert node.fenced and node.offline and node.fence_proof == "lease"
    (recover,) = jobs_of(harness, "instance_recover")
    assert recover.status == "success" and "node node2: no lease" in recover.reason, recover.error_message
    moved = harness.instance(found.name)
    assert harness.state.nodes[moved.primary].name == "node3"
    assert found.id in harness.world.hosts["node3"].running()


def test_a_follower_reports_nothing_and_a_repeat_fences_once():
    """Only the leader's healer acts; the same lapse told twice makes one fence job."""
    harness = cluster(("node1", "node2", "node3"))
    harness.send("node2", NodeLapsed("node3", "told to a follower"))
    harness.advance(2)
    assert jobs_of(harness, "node_fence") == []
    harness.send("node1", NodeLapsed("node3", "lapsed"))
    harness.send("node1", NodeLapsed("node3", "lapsed again"))
    harness.advance(10)
    assert len(jobs_of(harness, "node_fence")) == 1


def test_disarmed_recovery_and_maintenance_fence_nothing():
    """While recovery is disarmed, or for a node in maintenance, a lapse is dropped."""
    harness = cluster(("node1", "node2", "node3"))
    harness.run(op("cluster_mode", mode="recovery_disarmed", on=True))
    harness.send("node1", NodeLapsed("node2", "lapsed while disarmed"))
    harness.advance(5)
    harness.run(op("cluster_mode", mode="recovery_disarmed", on=False))
    harness.run(op("cluster_mode", mode="maintenance", on=True, target="node3"))
    harness.send("node1", NodeLapsed("node3", "lapsed in maintenance"))
    harness.advance(5)
    assert jobs_of(harness, "node_fence") == []


def test_a_fenced_node_that_returns_comes_online_and_an_operator_offlined_one_does_not():
    """NodeReturned brings a lease-fenced node online by a job; a node the operator marked offline stays."""
    harness = cluster(("node1", "node2", "node3"))
    assert harness.run(op("node_modify", node="node3", offline=True)).status == "success"
    harness.send("node1", NodeLapsed("node2", "lapsed"))
    harness.advance(5)
    assert harness.state.node_by_name("node2").fenced
    harness.send("node1", NodeReturned("node2"))
    harness.send("node1", NodeReturned("node3"))
    harness.advance(5)
    assert not harness.state.node_by_name("node2").offline and not harness.state.node_by_name("node2").fenced
    assert harness.state.node_by_name("node3").offline
    (online,) = jobs_of(harness, "node_modify")[-1:]
    assert online.actor == "cairn-healer" and "came back after its fence" in online.reason


def test_a_healer_job_that_ended_without_success_does_not_block_the_next():
    """A node_modify online job under the healer's request id that failed (or was canceled) is submitted again
    under the next attempt's id when the node asks again; found by the simulator, where an operator's cancel
    of the healer's job kept a fenced node offline for good."""
    harness = cluster(("node1", "node2", "node3"))
    harness.send("node1", NodeLapsed("node2", "lapsed"))
    harness.advance(5)
    node = harness.state.node_by_name("node2")
    request = f"heal-online-{node.id}-{node.fenced_seq}"
    failed = harness.submit(op("node_modify", node="node2", offline=False, colour="red"), request_id=request)
    harness.advance(2)
    assert harness.job(failed).status == "error"
    harness.send("node1", NodeReturned("node2"))
    harness.advance(5)
    assert not harness.state.node_by_name("node2").offline
    assert f"{request}-attempt2" in harness.state.job_requests


def test_without_a_lease_a_node_starts_nothing():
    """LeaseLost: the reconciler starts nothing until a new lease; with one it does."""
    harness = cluster(("node1",))
    harness.send("node1", LeaseLost())
    harness.submit(op("instance_add", name="web1.example.com", primary="node1", disk_template="diskless",
                      os="debian-12", memory_mib=512))
    for _ in range(10):       # time passes with no lease (advance() would hand out the old freshness)
        harness.now += 0.5
        harness.send("node1", Tick(harness.now))
    assert harness.world.hosts["node1"].running() == set()
    harness.send("node1", LeaderCommit(harness.state.seq, harness.now + 10))
    for _ in range(6):
        harness.now += 0.5
        harness.send("node1", Tick(harness.now))
    assert len(harness.world.hosts["node1"].running()) == 1
    harness.now += 20
    harness.send("node1", Tick(harness.now))


def test_an_instance_whose_secondary_is_fenced_gets_a_new_one_chosen_by_hail():
    """Harep built in: the secondary's node is fenced, so the healer replaces the disks (-I hail) onto the one
    node left; the new copy is paired and resynced to UPTODATE. An instance tagged cairn:repair:off is left."""
    harness = cluster(("node1", "node2", "node3"))
    found = add_instance(harness, primary="node2", secondary="node3")
    kept = add_instance(harness, name="kept.example.com", primary="node2", secondary="node3")
    harness.run(op("tags_add", kind="instance", target=kept.name, tags=("cairn:repair:off",)))
    harness.advance(4)
    harness.world.hosts["node3"].power_off()
    harness.send("node1", NodeLapsed("node3", "lapsed"))
    harness.advance(15)
    (repair,) = jobs_of(harness, "instance_replace_disks")
    assert repair.status == "success" and repair.actor == "cairn-healer", repair.error_message
    assert "is fenced" in repair.reason
    moved = harness.instance(found.name)
    assert harness.state.nodes[moved.secondary].name == "node1"
    states = {harness.state.nodes[node].name: state for _, node, state, _ in moved.disk_states}
    assert states == {"node1": "UPTODATE", "node2": "UPTODATE"}
    assert harness.state.nodes[harness.instance(kept.name).secondary].name == "node3"


def test_after_a_disarm_a_node_is_fenced_only_once_it_reported_its_watchdog_armed():
    """Disarming marks every node's watchdog as possibly stood down, in the log (so any later leader knows): a
    lapse then fences nothing, even after the re-arm, until the node reported its watchdog armed
    (NodeWatchdogArmed); from then on its lapse fences it."""
    from appliance.core.io import WatchdogArmed

    harness = cluster(("node1", "node2", "node3"))
    harness.run(op("cluster_mode", mode="recovery_disarmed", on=True))
    assert all(n.watchdog_down for n in harness.state.nodes.values())
    harness.run(op("cluster_mode", mode="recovery_disarmed", on=False))
    harness.send("node1", NodeLapsed("node2", "cut off while disarmed"))
    harness.advance(5)
    assert jobs_of(harness, "node_fence") == []
    harness.send("node1", WatchdogArmed("node2"))
    harness.advance(2)
    assert not harness.state.node_by_name("node2").watchdog_down
    assert harness.state.node_by_name("node3").watchdog_down
    (armed,) = harness.events(ev.NodeWatchdogArmed)
    assert armed.actor == "cairn-healer" and "watchdog armed" in armed.reason
    harness.send("node1", NodeLapsed("node2", "lapsed, armed"))
    harness.advance(5)
    assert harness.state.node_by_name("node2").fenced
