"""Tests of cluster_mode: queue drain, watcher pause, recovery disarm and node maintenance."""

from appliance.model.errors import PERMISSION_DENIED, QUEUE_DRAINED, UNKNOWN_ENTITY, WRONG_INPUT
from tests.unit.test_ops_support import cluster, node_id, refused


def test_drain_refuses_new_jobs_and_undrain_works_while_drained():
    """A drained queue refuses other operations; undraining is exempt and accepts jobs again."""
    box = cluster(nodes=0)
    box.run("cluster_mode", mode="queue_drained")
    refused(box, "user_add", QUEUE_DRAINED, "The job queue is drained", name="alice")
    box.run("cluster_mode", mode="queue_drained", on=False)
    box.run("user_add", name="alice")


def test_mode_with_expiry_reads_as_off_after_it():
    """A mode switched on until T is active before T and inactive after, without any event."""
    box = cluster(nodes=0)
    until = box.now + 3600
    box.run("cluster_mode", mode="watcher_paused", until=until)
    assert box.state.mode_active("watcher_paused", box.now)
    assert not box.state.mode_active("watcher_paused", until + 1)


def test_expired_drain_no_longer_refuses_jobs():
    """Once a drain's expiry passed, jobs are accepted again."""
    box = cluster(nodes=0)
    box.run("cluster_mode", mode="queue_drained", until=box.now + 60)
    box.tick(120)
    box.run("user_add", name="alice")


def test_recovery_disarm_and_arm():
    """Recovery can be disarmed and armed again."""
    box = cluster(nodes=0)
    box.run("cluster_mode", mode="recovery_disarmed")
    assert ("recovery_disarmed", "") in box.state.modes
    box.run("cluster_mode", mode="recovery_disarmed", on=False)
    assert not box.state.modes


def test_maintenance_is_per_node():
    """Maintenance mode is keyed by the node's id."""
    box = cluster()
    box.run("cluster_mode", mode="maintenance", target="n2.example.com")
    assert box.state.mode_active("maintenance", box.now, node_id(box, "n2.example.com"))
    assert not box.state.mode_active("maintenance", box.now, node_id(box, "n1.example.com"))


def test_maintenance_needs_a_node():
    """Maintenance without a node is refused."""
    refused(cluster(), "cluster_mode", WRONG_INPUT, "per node; name the node", mode="maintenance")


def test_maintenance_refuses_an_unknown_node():
    """Maintenance of an unknown node is refused as unknown_entity."""
    refused(cluster(), "cluster_mode", UNKNOWN_ENTITY, "not known", mode="maintenance", target="n9.example.com")


def test_cluster_modes_take_no_target():
    """A cluster-wide mode with a target is refused."""
    refused(cluster(), "cluster_mode", WRONG_INPUT, "cluster-wide; give no target", mode="watcher_paused",
            target="n1.example.com")


def test_unknown_mode_is_refused():
    """Only the known modes can be set."""
    refused(cluster(nodes=0), "cluster_mode", WRONG_INPUT, "Unknown mode 'party'", mode="party")


def test_expiry_only_when_switching_on():
    """An expiry given with on=False is refused."""
    refused(cluster(nodes=0), "cluster_mode", WRONG_INPUT, "only applies when switching a mode on",
            mode="watcher_paused", on=False, until=5.0)


def test_clearing_a_mode_that_is_off_plans_nothing():
    """Undraining an undrained queue succeeds with no events."""
    assert cluster(nodes=0).plan("cluster_mode", mode="queue_drained", on=False).events == ()


def test_modes_need_an_admin():
    """An operator cannot switch modes."""
    box = cluster(nodes=0)
    box.run("user_add", name="bob", role="operator")
    refused(box, "cluster_mode", PERMISSION_DENIED, "needs role admin", actor="bob", mode="watcher_paused")
