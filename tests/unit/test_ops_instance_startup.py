"""Tests of instance_startup."""

from appliance.model import events as ev
from appliance.model.errors import UNKNOWN_ENTITY, WRONG_STATE
from tests.unit.test_ops_support import add, cluster, observe, refused


def test_startup_marks_a_stopped_instance_up():
    """Starting a stopped instance marks it up and waits to see it running on its primary."""
    box = cluster()
    found = add(box, start=False)
    plan = box.run("instance_startup", instance="web1.example.com")
    assert box.state.instances[found.id].admin_state == "up"
    assert plan.events == (ev.InstanceStartupRequested(found.id),)
    assert plan.steps[0].waits[0].what == "observed_running" and plan.steps[0].waits[0].node == found.primary


def test_startup_of_a_running_instance_does_nothing():
    """Starting an instance already running succeeds with a plan of no events (Ganeti's idempotence)."""
    box = cluster()
    add(box)
    plan = box.run("instance_startup", instance="web1.example.com")
    assert plan.events == () and "already running" in plan.result


def test_startup_repairs_an_instance_marked_up_but_stopped():
    """An instance marked up but seen stopped (ERROR_down) gets the start request again."""
    box = cluster()
    found = add(box)
    observe(box, "web1.example.com", running=False)
    plan = box.run("instance_startup", instance="web1.example.com")
    assert plan.events == (ev.InstanceStartupRequested(found.id),)


def test_startup_refuses_an_offline_primary():
    """An instance whose primary is offline cannot be started."""
    box = cluster()
    found = add(box, start=False)
    box.commit(ev.NodeModified(found.primary, True, None, None, None, None))
    refused(box, "instance_startup", WRONG_STATE, "primary node n1.example.com is offline",
            instance="web1.example.com")


def test_startup_refuses_an_unknown_instance():
    """Starting an unknown instance is refused as unknown_entity."""
    refused(cluster(), "instance_startup", UNKNOWN_ENTITY, "not known", instance="nosuch.example.com")
