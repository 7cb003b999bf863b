"""Tests of appliance.allocator: the live state as iallocator documents and htools text, and its answers."""

import pytest

from appliance import allocator
from appliance.model import events as ev
from appliance.sandbox import Sandbox
from fastpath import htools_text
from fastpath.iallocator import answer_allocate, answer_node_evacuate, answer_relocate
from tests.unit.test_ops_support import add


def four_nodes(memory_mib: int = 8192, disk_mib: int = 100_000) -> Sandbox:
    """An initialised cluster of four nodes n1..n4 with the given capacity each."""
    box = Sandbox(3)
    box.run("cluster_init", name="c.example.com")
    for number in range(1, 5):
        box.run("node_add", name=f"n{number}.example.com", memory_mib=memory_mib, disk_mib=disk_mib, cpus=4)
    return box


def node_entry(box, name):
    return allocator.document(box.state, {"type": "allocate"})["nodes"][name]


def test_document_free_figures_come_from_usage():
    """A node's free memory and disk in the document are its capacity less its instances' usage."""
    box = four_nodes()
    add(box, memory_mib=1024, disks=(2048,))
    primary, secondary = node_entry(box, "n1.example.com"), node_entry(box, "n2.example.com")
    assert (primary["total_memory"], primary["free_memory"], primary["free_disk"]) == (8192, 7168, 97952)
    assert (secondary["free_memory"], secondary["free_disk"], secondary["reserved_memory"]) == (8192, 97952, 0)


def test_document_marks_offline_and_drained_nodes():
    """An offline node is offline and a drained one drained in the document."""
    box = four_nodes()
    box.run("node_modify", node="n3.example.com", drained=True)
    box.run("node_modify", node="n4.example.com", offline=True)
    assert node_entry(box, "n3.example.com")["drained"] is True
    assert node_entry(box, "n4.example.com")["offline"] is True
    assert node_entry(box, "n1.example.com")["drained"] is False


def test_document_names_replicated_as_drbd_with_both_nodes():
    """A replicated instance is a drbd instance listing its primary, then its secondary."""
    box = four_nodes()
    add(box)
    entry = allocator.document(box.state, {"type": "allocate"})["instances"]["web1.example.com"]
    assert (entry["disk_template"], entry["nodes"]) == ("drbd", ["n1.example.com", "n2.example.com"])


def test_htools_text_has_the_document_figures_and_flags():
    """The htools text writes drained and offline nodes as offline (Y) and free figures from usage."""
    box = four_nodes()
    add(box, memory_mib=1024, disks=(2048,))
    box.run("node_modify", node="n3.example.com", drained=True)
    cluster = htools_text.parse(allocator.htools_text(box.state))
    nodes = {node.name: node for node in cluster.nodes}
    assert (nodes["n1.example.com"].f_mem, nodes["n1.example.com"].f_dsk) == (7168, 97952)
    assert nodes["n3.example.com"].offline and not nodes["n2.example.com"].offline
    instance = cluster.instances[0]
    assert (instance.name, instance.template, instance.pnode, instance.snode) == (
        "web1.example.com", "drbd", "n1.example.com", "n2.example.com")
    assert cluster.policy_given and cluster.policy.templates == ["diskless", "file", "drbd"]


def test_allocate_gives_what_hail_answers_on_the_document():
    """allocate() returns the nodes answer_allocate chooses on the same state's document."""
    box = four_nodes()
    add(box)
    request = allocator.allocate_request("new.example.com", "replicated", 1024, 1, [4096])
    expected = answer_allocate(allocator.document(box.state, request), allocator.options())["result"]
    assert list(allocator.allocate(box.state, request)) == expected


def test_allocate_never_chooses_a_drained_node():
    """A drained node gets no new instance from the allocator."""
    box = four_nodes()
    for name in ("n1.example.com", "n2.example.com"):
        box.run("node_modify", node=name, drained=True)
    for _ in range(4):
        primary, _ = allocator.allocate(box.state, allocator.allocate_request("x.example.com", "file", 512, 1,
                                                                                [1024]))
        assert primary in ("n3.example.com", "n4.example.com")
        add(box, f"x{box.state.seq}.example.com", template="file", primary=primary, memory_mib=512)


def test_allocate_failure_carries_hails_text():
    """When nothing fits, AllocatorError holds hail's 'Request failed' text with the failure reasons."""
    box = four_nodes()
    with pytest.raises(allocator.AllocatorError, match="Request failed: .*FailMem"):
        allocator.allocate(box.state, allocator.allocate_request("big.example.com", "file", 9000, 1, [1024]))


def test_relocate_gives_what_hail_answers():
    """relocate() returns answer_relocate's new secondary."""
    box = four_nodes()
    add(box)
    request = {"type": "relocate", "name": "web1.example.com", "required_nodes": 1,
               "relocate_from": ["n2.example.com"]}
    expected = answer_relocate(allocator.document(box.state, request), allocator.options())["result"][0]
    assert allocator.relocate(box.state, "web1.example.com") == expected


def test_evacuate_turns_hails_opcodes_into_operations():
    """A secondary evacuation becomes one instance_replace_disks job per instance, to hail's node."""
    box = four_nodes()
    add(box)
    n2 = box.state.node_by_name("n2.example.com").id
    evacuation = allocator.evacuate(box.state, n2, "secondary-only")
    request = {"type": "node-evacuate", "instances": ["web1.example.com"], "evac_mode": "secondary-only"}
    _, _, jobs = answer_node_evacuate(allocator.document(box.state, request), allocator.options())["result"]
    assert evacuation.jobs == ((
        {"op": "instance_replace_disks", "params": {"instance": "web1.example.com",
                                                     "node": jobs[0][0]["remote_node"]}},),)


def test_move_operations_of_hbal_codes():
    """hbal's move codes become migrate (with failover allowed) and replace-disks operations, in order."""
    assert allocator.move_operations("a", "f r:n3") == (
        {"op": "instance_migrate", "params": {"instance": "a", "allow_failover": True}},
        {"op": "instance_replace_disks", "params": {"instance": "a", "node": "n3"}})
    with pytest.raises(ValueError, match="shared storage"):
        allocator.move_operations("a", "fa:n3")


def test_n1_reports_a_secondary_short_of_memory():
    """A node that cannot take over its secondaries' memory should their primary fail is reported, as Ganeti does."""
    box = four_nodes(memory_mib=4096)
    add(box, memory_mib=3072)
    add(box, "db1.example.com", primary="n2.example.com", secondary="n3.example.com", memory_mib=2048)
    assert allocator.n1_problems(box.state) == [
        "node n2.example.com: not enough memory to accommodate instance failovers should node n1.example.com "
        "fail (3072MiB needed, 2048MiB available)"]


def test_n1_ignores_offline_secondaries():
    """An offline node is not asked to take anything over."""
    box = four_nodes(memory_mib=4096)
    add(box, memory_mib=3072)
    add(box, "db1.example.com", primary="n2.example.com", secondary="n3.example.com", memory_mib=2048)
    box.commit(ev.NodeModified(box.state.node_by_name("n2.example.com").id, True, None, None, None, None))
    assert allocator.n1_problems(box.state) == []
