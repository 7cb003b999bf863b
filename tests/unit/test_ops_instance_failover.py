"""Tests of instance_failover (it shares ops/_migration.py with instance_migrate)."""

from appliance.model import events as ev
from appliance.model.errors import WRONG_INPUT, WRONG_STATE
from tests.unit.test_ops_support import add, cluster, node_id, refused


def test_failover_moves_an_instance_off_an_offline_primary():
    """Failover is the way out when the primary died: it works with the primary offline."""
    box = cluster()
    found = add(box)
    box.commit(ev.NodeModified(found.primary, True, None, None, None, None))
    box.run("instance_failover", instance="web1.example.com")
    assert box.state.instances[found.id].primary == node_id(box, "n2.example.com")


def test_failover_plans_one_instance_failed_over_and_waits_to_see_it_run():
    """The plan swaps the nodes with InstanceFailedOver, then waits to see the instance run on the new primary."""
    box = cluster()
    found = add(box)
    plan = box.plan("instance_failover", instance="web1.example.com", timeout_s=60)
    (step,) = plan.steps
    assert step.events == (ev.InstanceFailedOver(found.id, found.secondary, found.primary),)
    waits = [(wait.what, wait.node, wait.timeout_s) for wait in step.waits]
    assert waits == [("observed_running", found.secondary, 60)]


def test_failover_leaves_the_old_primary_to_confirm_the_stop():
    """After a failover the old primary must confirm the instance stopped there before it may start."""
    box = cluster()
    found = add(box)
    box.run("instance_failover", instance="web1.example.com")
    assert box.state.instances[found.id].pending_stop == (found.primary,)


def test_failover_from_an_offlined_primary_needs_no_confirmation():
    """An operator-offlined primary is fenced, so nothing waits for it to confirm the stop."""
    box = cluster()
    found = add(box)
    box.run("node_modify", node="n1.example.com", offline=True)
    box.run("instance_failover", instance="web1.example.com")
    assert box.state.instances[found.id].pending_stop == ()


def test_failover_refuses_an_offline_secondary():
    """Failover too needs the secondary online."""
    box = cluster()
    found = add(box)
    box.commit(ev.NodeModified(found.secondary, True, None, None, None, None))
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


def test_failover_refuses_a_copy_known_not_uptodate_unless_told():
    """A secondary copy reported DEGRADED or SYNCING may have missed writes: refused, as Ganeti checks
    consistency; --ignore-consistency takes the risk. A copy never reported (no state yet) is not refused."""
    box = cluster()
    found = add(box)
    box.commit(ev.DiskStateObserved(found.id, 0, found.secondary, "DEGRADED", 0.0))
    refused(box, "instance_failover", WRONG_STATE, "0 (DEGRADED)", instance="web1.example.com")
    box.run("instance_failover", instance="web1.example.com", ignore_consistency=True)
    assert box.state.instances[found.id].primary == found.secondary
