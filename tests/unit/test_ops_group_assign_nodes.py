"""Tests of group_assign_nodes."""

from appliance.model import events as ev
from appliance.model.errors import UNKNOWN_ENTITY, WRONG_STATE
from tests.unit.test_ops_support import add, cluster, node_id, refused


def with_rack2():
    box = cluster()
    box.run("group_add", name="rack2")
    return box


def test_assign_moves_nodes_into_the_group():
    """Assigned nodes belong to the group afterwards."""
    box = with_rack2()
    box.run("group_assign_nodes", group="rack2", nodes=("n3.example.com",))
    assert box.state.node_by_name("n3.example.com").group == box.state.group_by_name("rack2").id


def test_assign_refuses_splitting_a_replicated_instance():
    """Moving one node of a replicated instance to another group is refused, naming the instance."""
    box = with_rack2()
    add(box)
    refused(box, "group_assign_nodes", WRONG_STATE, "get split by this change and force was not given: "
            "web1.example.com", group="rack2", nodes=("n2.example.com",))


def test_assign_with_force_splits_the_instance():
    """With force, the split is accepted."""
    box = with_rack2()
    add(box)
    box.run("group_assign_nodes", group="rack2", nodes=("n2.example.com",), force=True)
    assert box.state.node_by_name("n2.example.com").group == box.state.group_by_name("rack2").id


def test_assign_of_both_nodes_does_not_split():
    """Moving both nodes of a replicated instance together is accepted without force."""
    box = with_rack2()
    add(box)
    box.run("group_assign_nodes", group="rack2", nodes=("n1.example.com", "n2.example.com"))


def test_assign_leaves_out_nodes_already_in_the_group():
    """Only nodes that change group are in the event; none changing plans nothing."""
    box = cluster()
    assert box.plan("group_assign_nodes", group="default", nodes=("n1.example.com",)).events == ()
    box.run("group_add", name="rack2")
    box.run("group_assign_nodes", group="rack2", nodes=("n1.example.com",))
    plan = box.plan("group_assign_nodes", group="rack2", nodes=("n1.example.com", "n2.example.com"))
    rack2 = box.state.group_by_name("rack2").id
    assert plan.events == (ev.NodesAssignedToGroup(rack2, (node_id(box, "n2.example.com"),)),)


def test_assign_refuses_an_unknown_node():
    """An unknown node name is refused as unknown_entity."""
    refused(with_rack2(), "group_assign_nodes", UNKNOWN_ENTITY, "Node 'n9.example.com' not known", group="rack2",
            nodes=("n9.example.com",))
