"""Tests of appliance/core/engine.py: jobs as committed data, run by the leader only."""

from appliance.core.io import CancelRequested, Committed, LeadershipChanged, Submitted, Tick
from appliance.core.node import NodeCore
from appliance.core.plans import decode_steps
from appliance.model import events as ev
from appliance.model.codec import encode
from tests.unit.core_support import START, Harness, add_instance, cluster, op


def test_a_job_runs_to_success_through_committed_steps():
    """A job goes JobSubmitted, JobAdmitted, JobOperationPlanned, its events, JobProgressed, JobSucceeded."""
    harness = cluster()
    add_instance(harness)
    kinds = [type(e.event).__name__ for e in harness.events() if e.job == max(harness.state.jobs)]
    assert kinds == ["JobAdmitted", "JobOperationPlanned", "InstanceAdded", "JobProgressed", "JobSucceeded"]


def test_generated_values_and_resolved_ids_are_committed_with_the_plan():
    """The plan's params hold the instance id, the MAC and the node ids, not only what the user typed."""
    harness = cluster(("node1", "node2"))
    found = add_instance(harness, secondary="node2")
    planned = [e.event for e in harness.events(ev.JobOperationPlanned) if e.event.params.get("name") == found.name][0]
    assert planned.params["instance_id"] == found.id
    assert planned.params["primary"] == found.primary and planned.params["secondary"] == found.secondary
    assert planned.params["nics"][0]["mac"] == found.nics[0].mac


def test_step_event_ids_derive_from_the_job_and_the_step():
    """The InstanceAdded of a job has the id derived from (job, operation, step, index)."""
    from appliance.core.plans import event_id

    harness = cluster()
    add_instance(harness)
    job_id = max(harness.state.jobs)
    added = harness.events(ev.InstanceAdded)[-1]
    assert added.event_id == event_id("step", job_id, 0, 0, 0) and added.job == job_id


def test_a_resubmission_with_the_same_request_id_returns_the_same_job():
    """A client retry with its request id gets the existing job back, and no second job is made."""
    harness = cluster()
    first = harness.submit(op("user_add", name="bob", role="operator"), request_id="req-1")
    again = harness.submit(op("user_add", name="bob", role="operator"), request_id="req-1")
    assert first == again
    assert sum(1 for e in harness.events(ev.JobSubmitted) if e.event.request_id == "req-1") == 1


def test_claims_by_name_and_by_id_conflict():
    """A job naming an instance by id waits for a running job that named it by name."""
    harness = cluster(("node1", "node2"))
    found = add_instance(harness, secondary="node2")
    harness.held.add("node1")
    first = harness.submit(op("instance_shutdown", instance=found.name))
    second = harness.submit(op("instance_startup", instance=found.id))
    harness.advance(2)
    assert harness.job(first).status == "running" and harness.job(second).status == "queued"
    harness.release("node1")
    harness.until(lambda: harness.job(second).status == "success")


def test_two_adds_on_one_node_share_it():
    """Two instance adds on the same node are admitted side by side (shared node claims)."""
    harness = cluster()
    harness.held.add("node1")
    first = harness.submit(op("instance_add", name="a.example.com", primary="node1", disk_template="diskless",
                              os="debian-12"))
    second = harness.submit(op("instance_add", name="b.example.com", primary="node1", disk_template="diskless",
                               os="debian-12"))
    harness.advance(1)
    assert harness.job(first).status == harness.job(second).status == "running"


def test_a_node_removal_waits_for_an_add_on_that_node():
    """node_remove claims its node exclusively, so it waits behind an add that shares the node."""
    harness = cluster(("node1", "node2"))
    harness.held.add("node2")
    add = harness.submit(op("instance_add", name="a.example.com", primary="node2", disk_template="diskless",
                            os="debian-12"))
    remove = harness.submit(op("node_remove", node="node2"))
    harness.advance(1)
    assert harness.job(add).status == "running" and harness.job(remove).status == "queued"


def test_a_refused_operation_fails_the_job_with_its_code_and_message():
    """check's PrereqError becomes JobFailed with Ganeti's code and the message."""
    harness = cluster()
    job = harness.run(op("instance_startup", instance="nosuch.example.com"))
    assert job.status == "error" and job.error_code == "unknown_entity"
    assert "nosuch.example.com" in job.error_message


def test_a_queued_job_can_be_canceled():
    """Cancel on a queued job ends it canceled; cancel on an ended job is refused."""
    harness = cluster(("node1", "node2"))
    found = add_instance(harness, secondary="node2")
    harness.held.add("node1")
    first = harness.submit(op("instance_shutdown", instance=found.name))
    second = harness.submit(op("instance_startup", instance=found.name))
    harness.send("node1", CancelRequested("c1", second, "admin"))
    harness.advance(1)
    assert harness.job(second).status == "canceled" and harness.replies["c1"].ok
    harness.release("node1")
    harness.until(lambda: harness.job(first).status == "success")
    harness.send("node1", CancelRequested("c2", first, "admin"))
    assert not harness.replies["c2"].ok and "already ended" in harness.replies["c2"].message


def test_a_wait_that_times_out_commits_the_compensation_then_fails():
    """A migration the source never finishes is aborted (InstanceMigrationAborted), then the job fails."""
    harness = cluster(("node1", "node2"))
    found = add_instance(harness, secondary="node2")
    harness.held.add("node1")
    job_id = harness.submit(op("instance_migrate", instance=found.name, timeout_s=10))
    harness.until(lambda: harness.job(job_id).status == "error", 60)
    assert harness.job(job_id).error_code == "timeout"
    assert [e.event.target for e in harness.events(ev.InstanceMigrationAborted)] == [found.secondary]
    # The target has to confirm it does not run the instance before anyone may start it anywhere.
    harness.until(lambda: harness.instance(found.name).pending_stop == (), 10)
    confirmed = [e for e in harness.events(ev.InstanceObservedStopped) if e.event.node == found.secondary]
    assert confirmed and confirmed[-1].event.cause == "absent"
    assert harness.instance(found.name).pending_stop == ()


def test_the_engine_acts_only_after_its_own_leader_election_is_applied():
    """A node told it leads proposes LeaderElected, and admits no job until that is applied."""
    core = NodeCore("node1")
    core.step(Tick(START))
    first = core.step(LeadershipChanged("node1", 3))
    second = core.step(Submitted("t", (op("cluster_init", name="x.example.com"),), "admin"))
    assert [type(p.envelope.event) for p in first.proposals + second.proposals] == [ev.LeaderElected,
                                                                                    ev.JobSubmitted]
    election, submission = first.proposals[0], second.proposals[0]
    after_job = core.step(Committed(1, encode(submission.envelope)))
    assert not any(type(p.envelope.event) is ev.JobAdmitted for p in after_job.proposals)
    after_election = core.step(Committed(2, encode(election.envelope)))
    assert [type(p.envelope.event) for p in after_election.proposals] == [ev.JobAdmitted]


def test_a_new_leader_continues_the_committed_plan():
    """After a leader change the new leader runs the next step of the committed migration plan, unchanged."""
    harness = cluster(("node1", "node2"))
    found = add_instance(harness, secondary="node2")
    harness.held.add("node1")
    job_id = harness.submit(op("instance_migrate", instance=found.name))
    harness.advance(1)
    steps = decode_steps(harness.job(job_id).plan)
    for name in harness.names:
        harness.send(name, LeadershipChanged("node2", 2))
    harness.release("node1")
    harness.until(lambda: harness.job(job_id).status == "success")
    migrated = harness.events(ev.InstanceMigrated)[-1]
    assert migrated.event == steps[1].events[0] and harness.state.leader_node == "node2"


def test_a_drained_queue_refuses_new_jobs_but_not_the_undrain():
    """With the queue drained a submission is refused with queue_drained; cluster_mode still runs."""
    harness = cluster()
    assert harness.run(op("cluster_mode", mode="queue_drained")).status == "success"
    token = "t-drained"
    harness.send("node1", Submitted(token, (op("user_add", name="eve"),), "admin"))
    assert harness.replies[token].code == "queue_drained"
    assert harness.run(op("cluster_mode", mode="queue_drained", on=False)).status == "success"


def test_a_node_in_maintenance_gets_no_new_instances():
    """instance_add onto a node in maintenance fails naming the node."""
    harness = cluster()
    assert harness.run(op("cluster_mode", mode="maintenance", target="node1")).status == "success"
    job = harness.run(op("instance_add", name="a.example.com", primary="node1", disk_template="diskless",
                         os="debian-12"))
    assert job.status == "error" and "maintenance" in job.error_message


def test_a_heavy_operation_returns_follow_up_jobs():
    """node_migrate submits one instance_migrate job per instance and its result names them."""
    harness = cluster(("node1", "node2"))
    for name in ("a.example.com", "b.example.com"):
        add_instance(harness, name, secondary="node2")
    job = harness.run(op("node_migrate", node="node1"))
    children = job.result[-1]["jobs"]
    assert job.status == "success" and len(children) == 2
    harness.until(lambda: all(harness.job(c).status == "success" for c in children))
    assert {harness.instance(n).primary for n in ("a.example.com", "b.example.com")} == {
        harness.state.node_names["node2"]}


def test_a_job_of_several_operations_runs_them_in_order():
    """Each operation is planned only when the one before it has finished, against the state it left."""
    harness = cluster()
    job = harness.run(op("instance_add", name="a.example.com", primary="node1", disk_template="diskless",
                         os="debian-12", start=False),
                      op("instance_startup", instance="a.example.com"))
    assert job.status == "success" and harness.instance("a.example.com").observed_state == "running"
    assert len(job.result) == 2


def test_cancel_between_operations_stops_the_rest():
    """A cancel requested while the first operation runs ends the job before the second is planned."""
    harness = cluster()
    harness.held.add("node1")
    job_id = harness.submit(op("instance_add", name="a.example.com", primary="node1", disk_template="diskless",
                               os="debian-12"),
                            op("instance_shutdown", instance="a.example.com"))
    harness.advance(1)
    harness.send("node1", CancelRequested("c", job_id, "admin"))
    harness.release("node1")
    harness.until(lambda: harness.job(job_id).status == "canceled")
    assert harness.job(job_id).operation_index == 0


def test_a_malformed_job_is_refused_before_it_is_committed():
    """An operation name nobody knows is refused with wrong_input, naming the known ones."""
    harness = Harness()
    harness.send("node1", Submitted("bad", ({"op": "instance_explode", "params": {}},), "admin"))
    assert harness.replies["bad"].code == "wrong_input" and "instance_add" in harness.replies["bad"].message


def test_a_start_that_does_not_happen_is_retried_then_fails():
    """A startup whose wait times out is requested again (twice), then the job fails with the timeout."""
    harness = cluster()
    found = add_instance(harness, start=False)
    harness.held.add("node1")
    job_id = harness.submit(op("instance_startup", instance=found.name, timeout_s=10))
    harness.until(lambda: harness.job(job_id).status == "error", 120)
    requests = [e for e in harness.events(ev.InstanceStartupRequested) if e.job == job_id]
    assert len(requests) == 3 and harness.job(job_id).error_code == "timeout"
    assert [tuple(p) for p in harness.job(job_id).progress] == [(0, 0)] * 3


def test_a_retried_start_succeeds_when_the_node_comes_back():
    """If the node acts during a retry, the startup job succeeds."""
    harness = cluster()
    found = add_instance(harness, start=False)
    harness.held.add("node1")
    job_id = harness.submit(op("instance_startup", instance=found.name, timeout_s=10))
    harness.advance(12)
    harness.release("node1")
    harness.until(lambda: harness.job(job_id).status != "running", 60)
    assert harness.job(job_id).status == "success"


def test_a_caller_waiting_on_a_job_hears_how_it_ended():
    """WaitForJob is answered when the job ends, with its status and result; at once for an ended job."""
    from appliance.core.io import WaitForJob

    harness = cluster()
    harness.held.add("node1")
    job_id = harness.submit(op("instance_add", name="a.example.com", primary="node1", disk_template="diskless",
                               os="debian-12"))
    harness.send("node1", WaitForJob("w", job_id))
    assert "w" not in harness.replies
    harness.release("node1")
    harness.until(lambda: "w" in harness.replies)
    assert harness.replies["w"].value["status"] == "success"
    harness.send("node1", WaitForJob("again", job_id))
    assert harness.replies["again"].value["job"] == job_id
    harness.send("node1", WaitForJob("none", 999))
    assert harness.replies["none"].code == "unknown_entity"


def test_a_caller_waiting_on_a_seq_is_answered_once_it_is_applied():
    """WaitForSeq is answered once the node has applied that seq (a read after a write)."""
    from appliance.core.io import WaitForSeq

    harness = cluster()
    target = len(harness.records) + 2
    harness.send("node2" if "node2" in harness.names else "node1", WaitForSeq("s", target))
    assert "s" not in harness.replies
    harness.run(op("user_add", name="eve"))
    assert harness.replies["s"].ok and harness.replies["s"].value >= target
