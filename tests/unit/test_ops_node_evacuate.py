"""Tests of node_evacuate: hail's moves committed in the plan, returned as one follow-up job per instance."""

from appliance import allocator
from appliance.core.io import op
from appliance.model.errors import INSUFFICIENT_RESOURCES, WRONG_INPUT
from fastpath.iallocator import answer_node_evacuate
from tests.unit.core_support import add_instance, cluster as core_cluster
from tests.unit.test_allocator import four_nodes
from tests.unit.test_ops_support import add, refused


def hail_jobs(box, instances: list, mode: str) -> tuple:
    """What answer_node_evacuate answers on the state's document, as Cairn operations."""
    request = {"type": "node-evacuate", "instances": instances, "evac_mode": mode}
    _, _, jobs = answer_node_evacuate(allocator.document(box.state, request), allocator.options())["result"]
    return tuple(tuple(allocator.operation(opcode) for opcode in job) for job in jobs)


def two_instances(box) -> None:
    """web1 on n1 (secondary n2) and db1 on n2 (secondary n1)."""
    add(box)
    add(box, "db1.example.com", primary="n2.example.com", secondary="n1.example.com")


def test_secondary_evacuation_follows_hail():
    """--secondary-only gives hail's replace-disks jobs, committed with the plan."""
    box = four_nodes()
    two_instances(box)
    plan = box.plan("node_evacuate", node="n2.example.com", mode="secondary-only")
    assert plan.result.jobs == hail_jobs(box, ["web1.example.com"], "secondary-only")
    assert plan.result.jobs[0][0]["op"] == "instance_replace_disks"


def test_primary_evacuation_migrates_with_failover_allowed():
    """--primary-only gives hail's migrations, which fail over an instance that is not running."""
    box = four_nodes()
    two_instances(box)
    plan = box.plan("node_evacuate", node="n2.example.com", mode="primary-only")
    assert plan.result.jobs == hail_jobs(box, ["db1.example.com"], "primary-only") == (
        ({"op": "instance_migrate", "params": {"instance": "db1.example.com", "allow_failover": True}},),)


def test_full_evacuation_moves_primaries_and_secondaries_in_one_plan():
    """Without a mode flag, every instance on the node moves, as hail's 'all' answer says."""
    box = four_nodes()
    two_instances(box)
    plan = box.plan("node_evacuate", node="n2.example.com")
    assert plan.result.jobs == hail_jobs(box, ["db1.example.com", "web1.example.com"], "all")
    assert len(plan.result.jobs) == 2 and "2 instance(s) to move off n2.example.com" in plan.result.summary


def test_new_secondary_node_replaces_every_secondary():
    """-n NODE (secondary-only) gives one replace-disks job per secondary instance onto that node."""
    box = four_nodes()
    two_instances(box)
    plan = box.plan("node_evacuate", node="n1.example.com", mode="secondary-only", remote_node="n4.example.com")
    assert plan.result.jobs == (
        ({"op": "instance_replace_disks", "params": {"instance": "db1.example.com", "node": "n4.example.com"}},),)


def test_new_secondary_node_only_in_secondary_mode():
    """-n with primaries to move is refused, naming --secondary-only and -I hail."""
    box = four_nodes()
    two_instances(box)
    refused(box, "node_evacuate", WRONG_INPUT, "replaces secondaries only", node="n1.example.com",
            remote_node="n4.example.com")


def test_evacuation_is_refused_when_an_instance_cannot_move():
    """A file instance cannot be relocated: the evacuation fails naming it and hail's reason."""
    box = four_nodes()
    add(box, "f1.example.com", template="file", primary="n3.example.com")
    refused(box, "node_evacuate", INSUFFICIENT_RESOURCES,
            "Unable to evacuate instances f1.example.com (Instances of type file cannot be relocated)",
            node="n3.example.com")


def test_an_empty_node_has_nothing_to_move():
    """A node without instances gives no follow-up jobs."""
    box = four_nodes()
    plan = box.plan("node_evacuate", node="n4.example.com")
    assert plan.result.jobs == ()


def test_follow_up_jobs_move_the_secondary_through_the_engine():
    """Run as a job, the evacuation's follow-up replace-disks job gives the instance its new secondary."""
    harness = core_cluster(("node1", "node2", "node3"))
    add_instance(harness, "web1.example.com", primary="node1", secondary="node2")
    job = harness.run(op("node_evacuate", node="node2", mode="secondary-only"))
    assert job.status == "success", job.error_message
    children = job.result[-1]["jobs"]
    harness.until(lambda: all(harness.job(c).status in ("success", "error") for c in children))
    assert [harness.job(c).status for c in children] == ["success"]
    instance = harness.instance("web1.example.com")
    assert (instance.primary, instance.secondary) == (harness.state.node_names["node1"],
                                                      harness.state.node_names["node3"])
