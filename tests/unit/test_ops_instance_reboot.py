"""Tests of instance_reboot."""

from appliance.model import events as ev
from appliance.model.errors import WRONG_INPUT, WRONG_STATE
from tests.unit.test_ops_support import add, cluster, refused


def test_reboot_of_a_running_instance_requests_a_reboot():
    """A running instance gets a reboot request of the asked type."""
    box = cluster()
    found = add(box)
    plan = box.run("instance_reboot", instance="web1.example.com", reboot_type="soft")
    assert plan.events == (ev.InstanceRebootRequested(found.id, "soft"),)
    assert box.state.instances[found.id].admin_state == "up"


def test_reboot_of_a_stopped_instance_starts_it():
    """Rebooting a stopped instance starts it, saying so as Ganeti does."""
    box = cluster()
    found = add(box, start=False)
    plan = box.run("instance_reboot", instance="web1.example.com")
    assert plan.events == (ev.InstanceStartupRequested(found.id),)
    assert "already stopped, starting now" in plan.steps[0].message
    assert box.state.instances[found.id].admin_state == "up"


def test_reboot_refuses_an_unknown_type():
    """A reboot type other than soft, hard or full is refused."""
    box = cluster()
    add(box)
    refused(box, "instance_reboot", WRONG_INPUT, "Invalid reboot type", instance="web1.example.com",
            reboot_type="gentle")


def test_reboot_refuses_an_offline_primary():
    """An instance whose primary is offline cannot be rebooted."""
    box = cluster()
    found = add(box)
    box.commit(ev.NodeModified(found.primary, True, None, None, None, None))
    refused(box, "instance_reboot", WRONG_STATE, "is offline", instance="web1.example.com")
