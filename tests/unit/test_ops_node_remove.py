"""Tests of node_remove."""

from appliance.model import events as ev
from appliance.model.errors import UNKNOWN_ENTITY, WRONG_STATE
from tests.unit.test_ops_support import add, cluster, node_id, refused


def test_node_remove_removes_an_empty_node():
    """An empty node leaves the state, with its name and usage."""
    box = cluster()
    gone = node_id(box, "n3.example.com")
    box.run("node_remove", node="n3.example.com")
    assert gone not in box.state.nodes and "n3.example.com" not in box.state.node_names
    assert gone not in box.state.usage


def test_node_remove_refuses_a_node_with_instances():
    """A node that still holds instances is refused, naming how many, and evacuation is suggested."""
    box = cluster()
    add(box)
    add(box, name="web2.example.com", template="file")
    refused(box, "node_remove", WRONG_STATE, "still holds 2 instance(s) (2 as primary, 0 as secondary); evacuate",
            node="n1.example.com")
    refused(box, "node_remove", WRONG_STATE, "1 as secondary", node="n2.example.com")


def test_node_remove_refuses_the_last_voter():
    """The last voter cannot be removed."""
    refused(cluster(nodes=1), "node_remove", WRONG_STATE, "last voter", node="n1.example.com")


def test_node_remove_refuses_an_unknown_node():
    """Removing a node that does not exist is refused as unknown_entity, in Ganeti's words."""
    refused(cluster(), "node_remove", UNKNOWN_ENTITY, "Node 'nosuch.example.com' not known", node="nosuch.example.com")


def test_node_remove_refuses_a_node_with_reservations():
    """A node holding a running job's reservations is not removed under it."""
    box = cluster()
    box.commit(ev.JobSubmitted(({"op": "instance_add", "params": {}},), "r1"))
    box.commit(ev.JobAdmitted(1, ()))
    box.commit(ev.JobOperationPlanned(1, 0, {}, (), ({"node": node_id(box, "n3.example.com"), "memory_mib": 512, "disk_mib": 0},), (), None))
    refused(box, "node_remove", WRONG_STATE, "reserved by a running job", node="n3.example.com")


def test_node_remove_clears_the_node_maintenance_mode():
    """A node's own modes are cleared with it."""
    box = cluster()
    box.commit(ev.ModeSet("maintenance", node_id(box, "n3.example.com"), None))
    box.run("node_remove", node="n3.example.com")
    assert not box.state.modes


def test_node_remove_revokes_the_node_certificate():
    """Removing a node revokes its recorded certificate before the node leaves."""
    box = cluster()
    box.run("node_add", name="n4.example.com", certificate_serial="5c3e8a1f")
    gone = node_id(box, "n4.example.com")
    plan = box.run("node_remove", node="n4.example.com")
    assert plan.events == (ev.NodeCertificateRevoked("n4.example.com", "5c3e8a1f"), ev.NodeRemoved(gone))
    assert "n4.example.com" not in box.state.certificates
    assert dict(box.state.revoked_serials) == {"5c3e8a1f": "n4.example.com"}


def test_node_remove_without_a_certificate_revokes_nothing():
    """A node the log recorded no certificate for is removed with no revocation."""
    box = cluster()
    plan = box.run("node_remove", node="n3.example.com")
    assert [type(e) for e in plan.events] == [ev.NodeRemoved] and not box.state.revoked_serials
