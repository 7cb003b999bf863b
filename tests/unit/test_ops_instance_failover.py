"""Tests of instance_failover (it shares ops/_migration.py with instance_migrate)."""

from appliance.model import events as ev
from appliance.model.errors import WRONG_INPUT, WRONG_STATE
from tests.unit.test_ops_support import add, cluster, node_id, refused


def test_failover_moves_an_instance_off_an_offline_primary():
    """Failover is the way out when the primary died: it works with the primary offline."""
    box = cluster()
    found = add(box)
    box.commit(ev.NodeModified(found.primary, {"offline": True}))
    box.run("instance_failover", instance="web1.example.com")
    assert box.state.instances[found.id].primary == node_id(box, "n2.example.com")


def test_failover_refuses_an_offline_secondary():
    """Failover too needs the secondary online."""
    box = cluster()
    found = add(box)
    box.commit(ev.NodeModified(found.secondary, {"offline": True}))
    refused(box, "instance_failover", WRONG_STATE, "is offline", instance="web1.example.com")



def test_failover_fails_a_stopped_instance_over():
    """A stopped instance fails over without waiting to see it run."""
    box = cluster()
    found = add(box, start=False)
    plan = box.run("instance_failover", instance="web1.example.com")
    assert box.state.instances[found.id].primary == found.secondary and plan.steps[0].waits == ()


def test_failover_refuses_an_instance_without_secondary():
    """A non-replicated instance cannot fail over."""
    box = cluster()
    add(box, template="diskless")
    refused(box, "instance_failover", WRONG_INPUT, "has no secondary node", instance="web1.example.com")
