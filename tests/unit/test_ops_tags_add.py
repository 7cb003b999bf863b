"""Tests of tags_add."""

import pytest

from appliance.model.errors import UNKNOWN_ENTITY, WRONG_INPUT
from tests.unit.test_ops_support import add, cluster, refused


@pytest.mark.parametrize(("kind", "target"), [("cluster", ""), ("node", "n1.example.com"), ("group", "default"),
                                              ("instance", "web1.example.com")])
def test_tags_add_tags_each_kind(kind, target):
    """Tags are added, sorted and unique, to the cluster, a node, a group and an instance."""
    box = cluster()
    add(box)
    box.run("tags_add", kind=kind, target=target, tags=("prod", "db", "prod"))
    state = box.state
    tagged = {"cluster": lambda: state.cluster, "node": lambda: state.node_by_name(target),
              "group": lambda: state.group_by_name(target), "instance": lambda: state.instance_by_name(target)}
    assert tagged[kind]().tags == ("db", "prod")


def test_tags_add_keeps_existing_tags_and_plans_only_new_ones():
    """Tags already there are not added again."""
    box = cluster()
    box.run("tags_add", kind="node", target="n1.example.com", tags=("a",))
    plan = box.run("tags_add", kind="node", target="n1.example.com", tags=("a", "b"))
    assert plan.events[0].tags == ("b",) and box.state.node_by_name("n1.example.com").tags == ("a", "b")


def test_tags_add_refuses_an_invalid_tag():
    """A tag with a space is refused."""
    refused(cluster(), "tags_add", WRONG_INPUT, "Invalid tag 'has space'", kind="cluster", tags=("has space",))


def test_tags_add_refuses_no_tags():
    """At least one tag is needed."""
    refused(cluster(), "tags_add", WRONG_INPUT, "No tags given", kind="cluster", tags=())


def test_tags_add_refuses_an_unknown_kind():
    """Only cluster, node, group and instance take tags."""
    refused(cluster(), "tags_add", WRONG_INPUT, "Invalid tag kind 'network'", kind="network", tags=("a",))


def test_tags_add_refuses_an_unknown_target():
    """Tagging an unknown instance is refused as unknown_entity."""
    refused(cluster(), "tags_add", UNKNOWN_ENTITY, "Instance 'nosuch.example.com' not known", kind="instance",
            target="nosuch.example.com", tags=("a",))
