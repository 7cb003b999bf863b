"""Tests of group_remove."""

from appliance.model.errors import UNKNOWN_ENTITY, WRONG_STATE
from tests.unit.test_ops_support import cluster, refused


def test_group_remove_removes_an_empty_group():
    """An empty group is removed with its name."""
    box = cluster(nodes=0)
    box.run("group_add", name="rack2")
    box.run("group_remove", group="rack2")
    assert box.state.group_by_name("rack2") is None


def test_group_remove_refuses_a_group_with_nodes():
    """A group with nodes is refused, naming them, in Ganeti's words."""
    box = cluster(nodes=0)
    box.run("group_add", name="rack2")
    box.run("node_add", name="n9.example.com", group="rack2")
    refused(box, "group_remove", WRONG_STATE, "Group 'rack2' not empty, has the following node(s): n9.example.com",
            group="rack2")


def test_group_remove_refuses_the_default_group():
    """The cluster's default group cannot be removed, even when empty."""
    refused(cluster(nodes=0), "group_remove", WRONG_STATE, "default group and cannot be removed", group="default")


def test_group_remove_refuses_an_unknown_group():
    """Removing a group that does not exist is refused as unknown_entity."""
    refused(cluster(nodes=0), "group_remove", UNKNOWN_ENTITY, "Group 'nosuch' not known", group="nosuch")
