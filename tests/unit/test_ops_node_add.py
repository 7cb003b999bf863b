"""Tests of node_add."""

from appliance.model.errors import ALREADY_EXISTS, UNKNOWN_ENTITY
from tests.unit.test_ops_support import cluster, refused


def test_node_add_records_the_node_in_the_default_group():
    """An added node is a voter in the default group with its capacity."""
    box = cluster(nodes=1, memory_mib=2048)
    found = box.state.node_by_name("n1.example.com")
    assert found.group == box.state.cluster.default_group and found.role == "voter" and found.memory_mib == 2048


def test_node_add_refuses_an_existing_name():
    """A node name is unique."""
    refused(cluster(nodes=1), "node_add", ALREADY_EXISTS, "already in the cluster", name="n1.example.com")


def test_node_add_refuses_an_unknown_group():
    """The group must exist."""
    refused(cluster(nodes=0), "node_add", UNKNOWN_ENTITY, "Group 'rack9' not known", name="n1.example.com",
            group="rack9")


def test_sixth_master_capable_node_is_a_non_voter():
    """At most five nodes vote; the sixth joins as a non-voter."""
    box = cluster(nodes=0)
    for n in range(6):
        box.run("node_add", name=f"m{n}.example.com")
    assert box.state.node_by_name("m5.example.com").role == "non-voter"
