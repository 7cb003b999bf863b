"""Tests of node_fence and instance_recover: the healer's fence of a lapsed node, and each instance's recovery."""

from appliance.model import events as ev
from appliance.model.errors import INSUFFICIENT_RESOURCES, WRONG_INPUT, WRONG_STATE
from ops.base import ResultWithJobs
from tests.unit.test_ops_support import add, cluster, node_id, refused

HEALER = "cairn-healer"


def uptodate(box, name: str) -> None:
    """Commit the secondary's report that every disk of the instance is UPTODATE there."""
    found = box.state.instance_by_name(name)
    for index in range(len(found.disks)):
        box.commit(ev.DiskStateObserved(found.id, index, found.secondary, "UPTODATE", 100.0))


def fence(box, node: str = "n1.example.com"):
    return box.run("node_fence", node=node, proof="lease", detail="no lease for 8.2 s", actor=HEALER)


def test_fence_marks_the_node_offline_with_a_lease_proof_and_recovers_by_priority():
    """The fence records NodeModified(offline) and NodeFenced(lease, detail); its follow-up jobs recover the
    node's instances marked up, highest ha_priority first, then by name; a stopped one is not recovered."""
    box = cluster()
    add(box, "b.example.com")
    add(box, "a.example.com")
    add(box, "stopped.example.com", start=False)
    box.commit(ev.InstanceHaPrioritySet(box.state.instance_by_name("b.example.com").id, 10))
    plan = fence(box)
    n1 = node_id(box, "n1.example.com")
    assert plan.steps[0].events == (ev.NodeModified(n1, True, None, None, None, None),
                                    ev.NodeFenced(n1, "lease", "no lease for 8.2 s"))
    node = box.state.nodes[n1]
    assert (node.offline, node.fenced, node.fence_proof) == (True, True, "lease") and node.fenced_seq > 0
    assert isinstance(plan.result, ResultWithJobs)
    assert [job[0]["params"]["instance"] for job in plan.result.jobs] == ["b.example.com", "a.example.com"]
    assert all(job[0]["op"] == "instance_recover" for job in plan.result.jobs)


def test_a_second_fence_changes_nothing():
    """A repeat (a new leader that did not see the first commit) finds the node fenced and plans nothing."""
    box = cluster()
    fence(box)
    assert fence(box).steps == ()


def test_only_the_healer_proofs_are_taken():
    """An unknown proof is refused, naming the operator's way."""
    refused(cluster(), "node_fence", WRONG_INPUT, "cairn node modify", node="n1.example.com", proof="hunch")


def test_a_replicated_instance_recovers_on_its_uptodate_secondary():
    """With every disk UPTODATE on the secondary, recovery fails the instance over there and waits to see it run;
    nothing waits for the fenced node to confirm the stop."""
    box = cluster()
    found = add(box)
    uptodate(box, "web1.example.com")
    fence(box)
    plan = box.run("instance_recover", instance="web1.example.com", node="n1.example.com", actor=HEALER)
    after = box.state.instances[found.id]
    assert (after.primary, after.secondary, after.pending_stop) == (found.secondary, found.primary, ())
    assert [(w.what, w.node) for w in plan.steps[0].waits] == [("observed_running", found.secondary)]
    assert "UPTODATE" in plan.steps[0].message and "fenced" in plan.steps[0].message


def test_a_copy_that_is_not_uptodate_is_never_promoted():
    """A SYNCING or unknown copy refuses the recovery, saying which disk and what is known of it."""
    box = cluster()
    found = add(box)
    fence(box)
    refused(box, "instance_recover", WRONG_STATE, "0 (unknown)", instance="web1.example.com", node="n1.example.com",
            actor=HEALER)
    box.commit(ev.DiskStateObserved(found.id, 0, found.secondary, "SYNCING", 42.0))
    refused(box, "instance_recover", WRONG_STATE, "0 (SYNCING 42.0%)", instance="web1.example.com",
            node="n1.example.com", actor=HEALER)


def test_recovery_needs_a_fence_proof():
    """An instance of a node that is not fenced may still run there: recovery is refused."""
    box = cluster()
    add(box)
    uptodate(box, "web1.example.com")
    refused(box, "instance_recover", WRONG_STATE, "is not fenced", instance="web1.example.com",
            node="n1.example.com", actor=HEALER)


def test_a_diskless_instance_restarts_on_the_node_with_most_free_memory():
    """A diskless instance goes to the online node with the most free memory (InstanceRecovered)."""
    box = cluster()
    add(box, "busy.example.com", template="diskless", primary="n2.example.com")
    found = add(box, "web1.example.com", template="diskless")
    fence(box)
    plan = box.run("instance_recover", instance="web1.example.com", node="n1.example.com", actor=HEALER)
    n3 = node_id(box, "n3.example.com")
    assert plan.steps[0].events == (ev.InstanceRecovered(found.id, n3, found.primary),)
    assert box.state.instances[found.id].primary == n3


def test_a_diskless_instance_with_no_room_anywhere_is_reported():
    """No node with the memory: the job fails with the reason."""
    box = cluster(memory_mib=1500)
    add(box, "x.example.com", template="diskless", primary="n2.example.com")
    add(box, "y.example.com", template="diskless", primary="n3.example.com")
    add(box, "web1.example.com", template="diskless")
    fence(box)
    refused(box, "instance_recover", INSUFFICIENT_RESOURCES, "no online node has 1024 MiB",
            instance="web1.example.com", node="n1.example.com", actor=HEALER)


def test_an_instance_on_file_disks_is_marked_down_with_the_reason():
    """File disks live only on the dead node: the instance is marked down, saying so."""
    box = cluster()
    found = add(box, "files.example.com", template="file")
    fence(box)
    plan = box.run("instance_recover", instance="files.example.com", node="n1.example.com", actor=HEALER)
    assert box.state.instances[found.id].admin_state == "down"
    assert "live only on the fenced node" in plan.steps[0].message


def test_an_instance_already_moved_needs_nothing():
    """Recovery of an instance no longer on the fenced node (or no longer up) plans nothing."""
    box = cluster()
    add(box)
    uptodate(box, "web1.example.com")
    box.run("instance_failover", instance="web1.example.com")
    fence(box)
    assert box.run("instance_recover", instance="web1.example.com", node="n1.example.com", actor=HEALER).steps == ()


def test_an_instance_whose_node_came_back_needs_nothing():
    """A recovery queued behind the node's return (the healer brought it back) plans nothing, saying why; found
    by the simulator, where such jobs failed with 'not fenced: may still run there'."""
    box = cluster()
    add(box)
    uptodate(box, "web1.example.com")
    fence(box)
    box.run("node_modify", node="n1.example.com", offline=False, actor=HEALER)
    plan = box.run("instance_recover", instance="web1.example.com", node="n1.example.com", actor=HEALER)
    assert plan.steps == () and "back online" in plan.result
