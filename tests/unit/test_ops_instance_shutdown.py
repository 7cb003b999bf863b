"""Tests of instance_shutdown."""

from appliance.model import events as ev
from appliance.model.errors import UNKNOWN_ENTITY, WRONG_INPUT
from tests.unit.test_ops_support import add, cluster, refused


def test_shutdown_marks_a_running_instance_down():
    """Shutting down a running instance marks it down and waits to see it stopped."""
    box = cluster()
    found = add(box)
    plan = box.run("instance_shutdown", instance="web1.example.com", timeout_s=30)
    assert box.state.instances[found.id].admin_state == "down"
    assert plan.events == (ev.InstanceShutdownRequested(found.id, 30),)
    assert plan.steps[0].waits[0].what == "observed_stopped"


def test_shutdown_of_a_stopped_instance_does_nothing():
    """Shutting down a stopped instance succeeds with a plan of no events (Ganeti's idempotence)."""
    box = cluster()
    add(box, start=False)
    plan = box.run("instance_shutdown", instance="web1.example.com")
    assert plan.events == () and "already stopped" in plan.result


def test_shutdown_repairs_an_instance_marked_down_but_running():
    """An instance marked down but seen running (ERROR_up) gets the stop request again."""
    box = cluster()
    found = add(box, start=False)
    box.commit(ev.InstanceObservedRunning(found.id, found.primary))
    plan = box.run("instance_shutdown", instance="web1.example.com")
    assert [type(e) for e in plan.events] == [ev.InstanceShutdownRequested]


def test_shutdown_on_an_offline_primary_does_not_wait():
    """With the primary offline the instance is marked down without waiting for a report that cannot come."""
    box = cluster()
    found = add(box)
    box.commit(ev.NodeModified(found.primary, True, None, None, None, None))
    plan = box.run("instance_shutdown", instance="web1.example.com")
    assert plan.steps[0].waits == () and box.state.instances[found.id].admin_state == "down"


def test_shutdown_refuses_a_bad_timeout():
    """A timeout below one second is refused as wrong_input."""
    box = cluster()
    add(box)
    refused(box, "instance_shutdown", WRONG_INPUT, "timeout", instance="web1.example.com", timeout_s=0)


def test_shutdown_refuses_an_unknown_instance():
    """Shutting down an unknown instance is refused as unknown_entity."""
    refused(cluster(), "instance_shutdown", UNKNOWN_ENTITY, "not known", instance="nosuch.example.com")
