"""Tests of node_modify."""

from appliance.model import events as ev
from appliance.model.errors import WRONG_INPUT, WRONG_STATE
from tests.unit.test_ops_support import add, cluster, node_id, refused


def node(box, name="n3.example.com"):
    return box.state.node_by_name(name)


def test_node_modify_drains_a_node():
    """Draining a node sets its flag."""
    box = cluster()
    box.run("node_modify", node="n3.example.com", drained=True)
    assert node(box).drained


def test_node_modify_offline_clears_drained():
    """Offlining a drained node clears drained, as Ganeti does."""
    box = cluster()
    box.run("node_modify", node="n3.example.com", drained=True)
    box.run("node_modify", node="n3.example.com", offline=True)
    assert node(box).offline and not node(box).drained


def test_node_modify_refuses_offline_and_drained_together():
    """Offline and drained cannot be set in one request, in Ganeti's words."""
    refused(cluster(), "node_modify", WRONG_INPUT, "more than one state at the same time", node="n3.example.com",
            offline=True, drained=True)


def test_node_modify_refuses_no_changes():
    """A modify that names no change is refused."""
    refused(cluster(), "node_modify", WRONG_INPUT, "No changes submitted", node="n3.example.com")


def test_node_modify_allows_offlining_a_node_with_instances():
    """A node holding instances can be offlined: that is how a dead node is declared before failover."""
    box = cluster()
    add(box)
    box.run("node_modify", node="n1.example.com", offline=True)
    assert node(box, "n1.example.com").offline


def test_node_modify_refuses_offlining_past_the_quorum():
    """Offlining a voter is refused when fewer than a majority of voters would stay online."""
    box = cluster()
    box.run("node_modify", node="n3.example.com", offline=True)
    refused(box, "node_modify", WRONG_STATE, "would leave 1 of 3 voters online", node="n2.example.com",
            offline=True)


def test_node_modify_refuses_unsetting_vm_capable_with_instances():
    """vm_capable cannot be unset while the node holds instances, in Ganeti's words."""
    box = cluster()
    add(box)
    refused(box, "node_modify", WRONG_STATE, "Node n2.example.com hosts instances, cannot unset vm_capable",
            node="n2.example.com", vm_capable=False)


def test_node_modify_refuses_a_voter_without_master_capable():
    """A voter must stay master_capable."""
    refused(cluster(), "node_modify", WRONG_STATE, "must stay master_capable", node="n3.example.com",
            master_capable=False)


def test_node_modify_demotes_and_unsets_master_capable_together():
    """A voter made a non-voter in the same request may drop master_capable."""
    box = cluster()
    box.run("node_modify", node="n3.example.com", role="non-voter", master_capable=False)
    assert node(box).role == "non-voter" and not node(box).master_capable


def test_node_modify_refuses_demoting_the_last_voter():
    """The last voter stays a voter."""
    refused(cluster(nodes=1), "node_modify", WRONG_STATE, "is the last voter", node="n1.example.com",
            role="non-voter")


def test_node_modify_sets_capacity():
    """Memory, disk and cpus given by the operator are recorded."""
    box = cluster()
    box.run("node_modify", node="n3.example.com", memory_mib=8192, cpus=8)
    assert (node(box).memory_mib, node(box).disk_mib, node(box).cpus) == (8192, 100_000, 8)


def test_node_modify_refuses_memory_below_use():
    """Memory cannot be set below what the node's instances use."""
    box = cluster()
    add(box)
    refused(box, "node_modify", WRONG_STATE, "use 1024 MiB of memory", node="n1.example.com", memory_mib=512)


def test_node_modify_with_current_values_plans_nothing():
    """Asking for the flags a node already has plans no events."""
    assert cluster().plan("node_modify", node="n3.example.com", drained=False).events == ()


def test_node_modify_emits_one_node_modified_event():
    """The flag changes travel in one NodeModified event."""
    box = cluster()
    plan = box.plan("node_modify", node="n3.example.com", drained=True)
    assert plan.events == (ev.NodeModified(node_id(box, "n3.example.com"), None, True, None, None, None),)


def test_node_modify_offline_records_a_fence_proof():
    """Offlining a node is the operator's fence proof: NodeFenced follows the NodeModified."""
    box = cluster()
    n3 = node_id(box, "n3.example.com")
    plan = box.plan("node_modify", node="n3.example.com", offline=True)
    assert plan.events == (ev.NodeModified(n3, True, None, None, None, None),
                           ev.NodeFenced(n3, "operator", "marked offline by the operator"))


def test_node_modify_online_clears_the_fence_proof():
    """Bringing an offlined node back online leaves it neither offline nor fenced."""
    box = cluster()
    box.run("node_modify", node="n3.example.com", offline=True)
    assert node(box).fenced
    plan = box.run("node_modify", node="n3.example.com", offline=False)
    assert not node(box).offline and not node(box).fenced
    assert not any(isinstance(event, ev.NodeFenced) for event in plan.events)


def test_node_modify_drain_clears_offline():
    """Draining an offline node clears offline, as Ganeti does."""
    box = cluster()
    box.run("node_modify", node="n3.example.com", offline=True)
    box.run("node_modify", node="n3.example.com", drained=True)
    assert node(box).drained and not node(box).offline


def test_node_modify_refuses_a_sixth_voter():
    """At most five nodes vote."""
    box = cluster(nodes=0)
    for n in range(6):
        box.run("node_add", name=f"m{n}.example.com")
    refused(box, "node_modify", WRONG_STATE, "already has 5 voters", node="m5.example.com", role="voter")


def test_marking_a_node_offline_shares_the_node_claim():
    """A fence (offline only) claims the node shared, so it never waits behind jobs stuck on the dead node."""
    from ops import node_modify

    box = cluster()
    node_id = box.state.node_by_name("n1.example.com").id
    fence = node_modify.claims(box.state, node_modify.Params("n1.example.com", offline=True))
    other = node_modify.claims(box.state, node_modify.Params("n1.example.com", offline=True, drained=None,
                                                             memory_mib=2048))
    assert fence.shared_nodes == {node_id} and not fence.nodes
    assert other.nodes == {node_id}
