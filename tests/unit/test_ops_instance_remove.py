"""Tests of instance_remove."""

from appliance.model import events as ev
from appliance.model.errors import UNKNOWN_ENTITY
from ops import instance_remove
from tests.unit.test_ops_support import add, cluster, refused


def test_remove_drops_the_instance_and_frees_its_nodes():
    """Removing an instance deletes it, its name and MACs, and gives back its memory and disk."""
    box = cluster()
    found = add(box)
    mac = found.nics[0].mac
    box.run("instance_remove", instance="web1.example.com")
    state = box.state
    assert found.id not in state.instances and "web1.example.com" not in state.instance_names
    assert mac not in state.macs
    assert state.usage[found.primary].memory_mib == 0 and state.usage[found.secondary].disk_mib == 0


def test_remove_stops_a_running_instance_first():
    """An instance marked up is shut down (waiting to see it stopped) before it is removed."""
    box = cluster()
    add(box)
    plan = box.plan("instance_remove", instance="web1.example.com")
    assert [type(e) for e in plan.events] == [ev.InstanceShutdownRequested, ev.InstanceRemoved]
    assert plan.steps[0].waits[0].what == "observed_stopped"


def test_remove_of_a_stopped_instance_is_one_step():
    """A stopped instance is removed without a shutdown step."""
    box = cluster()
    add(box, start=False)
    plan = box.plan("instance_remove", instance="web1.example.com")
    assert [type(e) for e in plan.events] == [ev.InstanceRemoved]


def test_remove_refuses_an_unknown_instance():
    """Removing an instance that does not exist is refused as unknown_entity, in Ganeti's words."""
    box = cluster()
    refused(box, "instance_remove", UNKNOWN_ENTITY, "Instance 'nosuch.example.com' not known",
            instance="nosuch.example.com")


def test_remove_claims_the_instance_and_its_nodes():
    """The claims hold the instance exclusively and both of its nodes shared, all by id."""
    box = cluster()
    found = add(box)
    claims = instance_remove.claims(box.state, instance_remove.Params("web1.example.com"))
    assert claims.instances == {found.id} and claims.shared_nodes == {found.primary, found.secondary}
