"""Tests of group_rename."""

from appliance.model.errors import ALREADY_EXISTS
from tests.unit.test_ops_support import cluster, refused


def test_group_rename_keeps_the_id_and_nodes():
    """A renamed group keeps its id and its nodes."""
    box = cluster(nodes=1)
    default = box.state.cluster.default_group
    box.run("group_rename", group="default", new_name="rack1")
    assert box.state.group_by_name("rack1").id == default
    assert box.state.node_by_name("n1.example.com").group == default


def test_group_rename_refuses_a_taken_name():
    """The new name must be free."""
    box = cluster(nodes=0)
    box.run("group_add", name="rack2")
    refused(box, "group_rename", ALREADY_EXISTS, "already exists as a node group", group="default", new_name="rack2")


def test_default_still_names_the_default_group_after_a_rename():
    """Adding a node to 'default' still lands in the cluster's default group once it was renamed."""
    box = cluster(nodes=0)
    box.run("group_rename", group="default", new_name="rack1")
    box.run("node_add", name="n1.example.com")
    assert box.state.node_by_name("n1.example.com").group == box.state.cluster.default_group
