"""Tests of instance_replace_disks: the new secondary, its checks, the replay of InstanceSecondaryReplaced."""

from appliance import allocator
from appliance.model import events as ev
from appliance.model.errors import INSUFFICIENT_RESOURCES, WRONG_INPUT, WRONG_STATE
from fastpath.iallocator import answer_relocate
from tests.unit.test_allocator import four_nodes
from tests.unit.test_ops_support import add, node_id, refused


def test_replace_moves_disk_usage_to_the_new_secondary():
    """The disk usage leaves the old secondary for the new one; the primary keeps its share."""
    box = four_nodes()
    found = add(box, disks=(2048,))
    box.run("instance_replace_disks", instance="web1.example.com", node="n3.example.com")
    usage = box.state.usage
    assert box.state.instance_by_name("web1.example.com").secondary == node_id(box, "n3.example.com")
    assert usage[node_id(box, "n3.example.com")].disk_mib == 2048
    assert usage[node_id(box, "n3.example.com")].secondaries == 1
    assert usage[node_id(box, "n2.example.com")].disk_mib == 0
    assert usage[found.primary].disk_mib == 2048


def test_replace_drops_the_old_copies_and_starts_the_new_syncing():
    """The old secondary's disk states go; the new secondary's disks start SYNCING at 0 %."""
    box = four_nodes()
    found = add(box, disks=(2048, 1024))
    for disk in (0, 1):
        for node in (found.primary, found.secondary):
            box.commit(ev.DiskStateObserved(found.id, disk, node, "UPTODATE", 100.0))
    box.run("instance_replace_disks", instance="web1.example.com", node="n3.example.com")
    states = box.state.instance_by_name("web1.example.com").disk_states
    n3 = node_id(box, "n3.example.com")
    assert sorted(states) == sorted([(0, found.primary, "UPTODATE", 100.0), (1, found.primary, "UPTODATE", 100.0),
                                     (0, n3, "SYNCING", 0.0), (1, n3, "SYNCING", 0.0)])


def test_replay_ignores_a_record_whose_premise_moved():
    """A replacement whose old secondary is no longer the instance's changes nothing."""
    box = four_nodes()
    found = add(box)
    before = box.state.instances[found.id]
    box.commit(ev.InstanceSecondaryReplaced(found.id, node_id(box, "n4.example.com"), node_id(box, "n3.example.com")))
    assert box.state.instances[found.id] == before


def test_replace_with_hail_commits_what_relocate_answers():
    """-I hail takes the node answer_relocate gives on the state's document."""
    box = four_nodes()
    add(box)
    request = {"type": "relocate", "name": "web1.example.com", "required_nodes": 1,
               "relocate_from": ["n2.example.com"]}
    expected = answer_relocate(allocator.document(box.state, request), allocator.options())["result"][0]
    plan = box.run("instance_replace_disks", instance="web1.example.com", iallocator="hail")
    assert box.state.nodes[plan.events[0].new_secondary].name == expected
    assert plan.result == {"secondary": expected}


def test_replace_refuses_a_non_replicated_instance():
    """A file instance has no secondary to replace."""
    box = four_nodes()
    add(box, template="file")
    refused(box, "instance_replace_disks", WRONG_INPUT, "only replicated instances have a secondary node",
            instance="web1.example.com", node="n3.example.com")


def test_replace_refuses_the_primary_and_the_current_secondary():
    """The new secondary must be neither of the instance's nodes."""
    box = four_nodes()
    add(box)
    refused(box, "instance_replace_disks", WRONG_INPUT, "is the primary node", instance="web1.example.com",
            node="n1.example.com")
    refused(box, "instance_replace_disks", WRONG_INPUT, "is already the secondary node",
            instance="web1.example.com", node="n2.example.com")


def test_replace_refuses_offline_and_drained_nodes():
    """An offline or drained node cannot become a secondary."""
    box = four_nodes()
    add(box)
    box.run("node_modify", node="n3.example.com", drained=True)
    box.run("node_modify", node="n4.example.com", offline=True)
    refused(box, "instance_replace_disks", WRONG_STATE, "is drained", instance="web1.example.com",
            node="n3.example.com")
    refused(box, "instance_replace_disks", WRONG_STATE, "is offline", instance="web1.example.com",
            node="n4.example.com")


def test_replace_refuses_a_node_without_the_disk():
    """The new secondary must have free disk for every disk of the instance."""
    box = four_nodes(disk_mib=10_000)
    add(box, disks=(6000,))
    add(box, "big.example.com", template="file", primary="n3.example.com", disks=(5000,))
    refused(box, "instance_replace_disks", INSUFFICIENT_RESOURCES,
            "Not enough disk space on node n3.example.com for replacing disks of instance web1.example.com",
            instance="web1.example.com", node="n3.example.com")


def test_replace_needs_a_node_or_an_allocator_but_not_both():
    """Neither -n nor -I, or both, is refused saying what to give."""
    box = four_nodes()
    add(box)
    refused(box, "instance_replace_disks", WRONG_INPUT, "No new secondary node given",
            instance="web1.example.com")
    refused(box, "instance_replace_disks", WRONG_INPUT, "not both", instance="web1.example.com",
            node="n3.example.com", iallocator="hail")


def test_replace_refuses_a_node_in_maintenance():
    """A node in maintenance gets no new secondary either."""
    box = four_nodes()
    add(box)
    box.run("cluster_mode", mode="maintenance", target="n3.example.com")
    refused(box, "instance_replace_disks", WRONG_STATE, "is in maintenance", instance="web1.example.com",
            node="n3.example.com")
