"""Tests of group_add."""

from appliance.model.errors import ALREADY_EXISTS, WRONG_INPUT
from tests.unit.test_ops_support import cluster, refused


def test_group_add_creates_a_group_with_a_generated_id():
    """A new group gets a fresh id and its name."""
    box = cluster(nodes=0)
    box.run("group_add", name="rack2")
    found = box.state.group_by_name("rack2")
    assert found.id.startswith("group-") and found.id != box.state.cluster.default_group


def test_group_add_refuses_a_taken_name():
    """Group names are unique, in Ganeti's words."""
    refused(cluster(nodes=0), "group_add", ALREADY_EXISTS, "Desired group name 'default' already exists",
            name="default")


def test_group_add_refuses_a_bad_name():
    """Group names are simple lower-case names."""
    refused(cluster(nodes=0), "group_add", WRONG_INPUT, "Invalid group name", name="Rack 2")
