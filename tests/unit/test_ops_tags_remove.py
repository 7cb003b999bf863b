"""Tests of tags_remove."""

from appliance.model.errors import UNKNOWN_ENTITY
from tests.unit.test_ops_support import add, cluster, refused


def test_tags_remove_removes_the_named_tags():
    """Named tags leave the instance; the others stay."""
    box = cluster()
    add(box)
    box.run("tags_add", kind="instance", target="web1.example.com", tags=("a", "b", "c"))
    box.run("tags_remove", kind="instance", target="web1.example.com", tags=("a", "c"))
    assert box.state.instance_by_name("web1.example.com").tags == ("b",)


def test_tags_remove_refuses_a_tag_that_is_not_there():
    """Removing a missing tag is refused as unknown_entity, naming it."""
    box = cluster()
    box.run("tags_add", kind="cluster", tags=("a",))
    refused(box, "tags_remove", UNKNOWN_ENTITY, "Tag(s) zz not found on cluster c.example.com", kind="cluster",
            tags=("a", "zz"))


def test_tags_remove_on_a_group():
    """Group tags are removed too."""
    box = cluster(nodes=0)
    box.run("tags_add", kind="group", target="default", tags=("rack1",))
    box.run("tags_remove", kind="group", target="default", tags=("rack1",))
    assert box.state.group_by_name("default").tags == ()
