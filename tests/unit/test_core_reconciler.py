"""Tests of appliance/core/reconciler.py: each node makes its machine match the committed state."""

from appliance.core import reconciler
from appliance.model import events as ev
from tests.unit.core_support import add_instance, cluster, op


def running(harness, name: str) -> set:
    return harness.world.hosts[name].running()


def test_an_instance_marked_up_is_started_and_reported_running():
    """instance_add with start: the primary's reconciler starts it and reports InstanceObservedRunning."""
    harness = cluster()
    found = add_instance(harness)
    assert running(harness, "node1") == {found.id}
    assert (found.observed_state, found.observed_node) == ("running", found.primary)


def test_disks_are_created_on_both_nodes_before_the_start():
    """A replicated instance's disk exists on its primary and its secondary."""
    harness = cluster(("node1", "node2"))
    found = add_instance(harness, secondary="node2")
    assert (found.id, 0) in harness.world.hosts["node1"].disks and (found.id, 0) in harness.world.hosts["node2"].disks


def test_a_crash_is_reported_and_restarted_after_a_back_off():
    """A crashed instance is reported crashed, a restart decided as an event, then started again."""
    harness = cluster()
    found = add_instance(harness)
    harness.world.hosts["node1"].crash(found.id)
    harness.advance(10)
    decided = harness.events(ev.InstanceRestartDecided)
    assert [e.event.attempt for e in decided] == [1] and "restart 1 of" in decided[0].reason
    assert running(harness, "node1") == {found.id}
    assert harness.instance(found.name).observed_state == "running"


def test_restarts_stop_at_the_limit():
    """After RESTART_LIMIT crashes in a row the reconciler gives up, with an event saying so."""
    harness = cluster()
    found = add_instance(harness)
    for _ in range(reconciler.RESTART_LIMIT + 1):
        harness.until(lambda: found.id in running(harness, "node1") or
                      harness.instance(found.name).observed_state == "error", 60)
        harness.world.hosts["node1"].crash(found.id)
        harness.advance(3)
    harness.advance(40)
    assert harness.instance(found.name).observed_state == "error"
    assert len(harness.events(ev.InstanceRestartsExhausted)) == 1 and not running(harness, "node1")


def test_a_paused_watcher_restarts_nothing():
    """With the watcher paused a crashed instance stays down; an explicit startup still works."""
    harness = cluster()
    found = add_instance(harness)
    assert harness.run(op("cluster_mode", mode="watcher_paused")).status == "success"
    harness.world.hosts["node1"].crash(found.id)
    harness.advance(20)
    assert not running(harness, "node1") and harness.instance(found.name).observed_state == "crashed"
    assert harness.run(op("instance_startup", instance=found.name)).status == "success"
    assert running(harness, "node1") == {found.id}


def test_a_guest_shutdown_is_recorded_and_not_fought():
    """A guest that powers itself off is recorded as user_down and left down until a startup."""
    harness = cluster()
    found = add_instance(harness)
    harness.world.hosts["node1"].guest_shutdown(found.id)
    harness.advance(20)
    assert harness.instance(found.name).observed_state == "user_down" and not running(harness, "node1")
    stopped = harness.events(ev.InstanceObservedStopped)[-1]
    assert stopped.event.cause == "guest" and "shut itself down" in stopped.reason
    assert harness.run(op("instance_startup", instance=found.name)).status == "success"
    assert running(harness, "node1") == {found.id}


def test_a_failover_starts_the_instance_only_after_the_old_primary_confirms_it_stopped():
    """The new primary waits for the old one's InstanceObservedStopped before it starts the instance."""
    harness = cluster(("node1", "node2"))
    found = add_instance(harness, secondary="node2")
    harness.held.add("node1")
    job_id = harness.submit(op("instance_failover", instance=found.name))
    harness.advance(5)
    assert running(harness, "node2") == set() and harness.instance(found.name).pending_stop == (found.primary,)
    harness.release("node1")
    harness.until(lambda: harness.job(job_id).status == "success")
    assert running(harness, "node2") == {found.id} and running(harness, "node1") == set()


def test_a_fence_proof_lets_the_new_primary_start_at_once():
    """Marking a dead node offline records NodeFenced, which stands in for the old primary's confirmation."""
    harness = cluster(("node1", "node2", "node3"))
    found = add_instance(harness, primary="node1", secondary="node2")
    harness.held.add("node1")
    harness.world.hosts["node1"].power_off()
    assert harness.run(op("node_modify", node="node1", offline=True)).status == "success"
    assert [e.event.proof for e in harness.events(ev.NodeFenced)] == ["operator"]
    assert harness.run(op("instance_failover", instance=found.name)).status == "success"
    assert running(harness, "node2") == {found.id}


def test_the_start_before_stop_bug_switch_breaks_the_rule():
    """With the planted bug the new primary starts while the old one still runs it (what the simulator catches)."""
    harness = cluster(("node1", "node2"), bugs=frozenset({"start_before_stop"}))
    found = add_instance(harness, secondary="node2")
    harness.held.add("node1")
    harness.submit(op("instance_failover", instance=found.name))
    harness.advance(5)
    assert running(harness, "node1") == running(harness, "node2") == {found.id}


def test_an_instance_the_state_does_not_place_here_is_stopped():
    """A node stops an instance it runs that the state puts elsewhere."""
    harness = cluster(("node1", "node2"))
    found = add_instance(harness, secondary="node2")
    harness.world.hosts["node2"].start(found.id, {})
    harness.advance(5)
    assert running(harness, "node2") == set() and running(harness, "node1") == {found.id}


def test_a_node_marked_offline_stops_what_it_still_runs():
    """A node whose daemon learns it is marked offline stops every instance: others may take them over."""
    harness = cluster(("node1", "node2", "node3"))
    found = add_instance(harness, primary="node1", secondary="node2")
    assert harness.run(op("node_modify", node="node1", offline=True)).status == "success"
    harness.advance(5)
    assert running(harness, "node1") == set()
    assert found.id not in running(harness, "node2")


def test_a_removed_instance_loses_its_disks():
    """Removing an instance stops it and removes its disks from both nodes."""
    harness = cluster(("node1", "node2"))
    found = add_instance(harness, secondary="node2")
    assert harness.run(op("instance_remove", instance=found.name)).status == "success"
    harness.advance(5)
    assert not harness.world.hosts["node1"].disks and not harness.world.hosts["node2"].disks
    assert not running(harness, "node1")


# --- replicated copies ------------------------------------------------------------------------------

def disk_states(harness, name: str) -> dict:
    found = harness.instance(name)
    return {harness.state.nodes[node].name: state for _, node, state, _ in found.disk_states}


def test_replicated_copies_are_paired_and_reported_uptodate():
    """Both nodes pair their copy in its role before the start, and each reports its copy's state."""
    harness = cluster(("node1", "node2"))
    found = add_instance(harness, secondary="node2")
    harness.advance(6)
    copies = {n: harness.world.hosts[n].copies[(found.id, 0)] for n in ("node1", "node2")}
    assert (copies["node1"].peer, copies["node1"].role) == ("node2", "primary")
    assert (copies["node2"].peer, copies["node2"].role) == ("node1", "secondary")
    assert disk_states(harness, found.name) == {"node1": "UPTODATE", "node2": "UPTODATE"}


def test_a_stale_secondary_is_reported_degraded_and_resynced():
    """Writes acknowledged while the secondary is cut off leave its copy behind: both copies report DEGRADED,
    and once the peer is back the secondary resyncs and both report UPTODATE again."""
    harness = cluster(("node1", "node2"))
    found = add_instance(harness, secondary="node2")
    harness.advance(6)
    harness.world.hosts["node2"].disks_reachable = False
    harness.world.hosts["node1"].guest_write(found.id)
    harness.advance(6)
    assert disk_states(harness, found.name) == {"node1": "DEGRADED", "node2": "DEGRADED"}
    harness.world.hosts["node2"].disks_reachable = True
    harness.advance(10)
    assert disk_states(harness, found.name) == {"node1": "UPTODATE", "node2": "UPTODATE"}
    assert harness.world.hosts["node2"].copies[(found.id, 0)].records >= {1}


def test_after_a_failover_the_roles_swap():
    """The new primary pairs its copy as the primary, the old one as the secondary."""
    harness = cluster(("node1", "node2"))
    found = add_instance(harness, secondary="node2")
    harness.advance(4)
    harness.run(op("instance_failover", instance=found.name))
    harness.advance(6)
    copies = {n: harness.world.hosts[n].copies[(found.id, 0)] for n in ("node1", "node2")}
    assert (copies["node2"].role, copies["node1"].role) == ("primary", "secondary")
    assert found.id in harness.world.hosts["node2"].running()


def test_a_start_the_driver_refuses_is_retried_after_a_pause():
    """A start the driver refuses (a missing bridge, say) is tried again every START_RETRY_S, not in a tight loop;
    once the driver takes it, the instance runs."""
    harness = cluster()
    harness.refused.add(("node1", "start"))
    harness.submit(op("instance_add", name="web1.example.com", primary="node1", disk_template="file",
                      os="debian-12", memory_mib=512, disks=(1024,)))
    harness.advance(10)
    attempts = harness.acted.count(("node1", "start"))
    assert 1 <= attempts <= 10 / reconciler.START_RETRY_S + 1, attempts
    harness.refused.clear()
    harness.advance(reconciler.START_RETRY_S + 3)
    assert running(harness, "node1") == {harness.instance("web1.example.com").id}


def test_a_shutdown_gives_the_guest_the_time_it_asks_for():
    """`instance shutdown --timeout N`: the node asks the guest to power off and kills it after N s (Ganeti's
    --timeout), not after the default 120 s."""
    harness = cluster()
    found = add_instance(harness)
    harness.run(op("instance_shutdown", instance=found.name, timeout_s=7))
    assert harness.instance(found.name).stop_timeout_s == 7
    stops = [args for node, kind, args in harness.acted_args if (node, kind) == ("node1", "stop")]
    assert stops and stops[0]["timeout_s"] == 7
