"""Tests of replay and state: determinism, the dedup window, checkpoints, derived indexes."""

import cbor2
import pytest
from hypothesis import given, settings, strategies as st

from appliance.demo import Demo
from appliance.model import codec, events as ev, replay
from appliance.model.codec import Envelope
from appliance.model.state import (
    CHECKPOINT_FORMAT, DEDUP_GENERATION, ClusterState, JoinTokenEntry, RecentIds, Window, decode_checkpoint,
    encode_checkpoint, to_plain, usage_of, with_indexes,
)
from appliance.sandbox import Sandbox
from tests.unit.test_ops_support import add, cluster, node_id


def history(seed: int, steps: int) -> list:
    """A valid history: the demo's set-up and `steps` random steps, through the real operations."""
    collected = []
    demo = Demo(seed, collected.append)
    demo.setup()
    for _ in range(steps):
        demo.step()
    return collected


def fold_bytes(envelopes) -> ClusterState:
    return replay.fold_envelopes(codec.decode(codec.encode(e)) for e in envelopes)


def without_seq(state: ClusterState) -> dict:
    plain = to_plain(state)
    del plain["seq"]
    return plain


histories = st.builds(history, st.integers(0, 2**32), st.integers(0, 150))


@given(histories)
@settings(max_examples=25, deadline=None)
def test_folding_twice_gives_the_same_digest(envelopes):
    """Folding the same valid sequence twice, through encode and decode, gives the same digest."""
    assert fold_bytes(envelopes).digest() == fold_bytes(envelopes).digest()


@given(histories, st.data())
@settings(max_examples=25, deadline=None)
def test_a_duplicate_event_id_changes_nothing(envelopes, data):
    """Repeating an already-applied event (a retried proposal) leaves the state as it was."""
    position = data.draw(st.integers(0, len(envelopes) - 1))
    later = data.draw(st.integers(position + 1, len(envelopes)))
    before = replay.fold_envelopes(envelopes[:later])
    after = replay.apply(before, envelopes[position])
    assert after.seq == before.seq + 1
    assert without_seq(after) == without_seq(before)
    # Numbered as if the duplicate had not been there, the rest folds to the very same state.
    rest = replay.fold_envelopes(envelopes[later:], after.evolve(seq=before.seq))
    assert rest.digest() == replay.fold_envelopes(envelopes).digest()


@given(histories, st.data())
@settings(max_examples=25, deadline=None)
def test_checkpoint_plus_tail_equals_full_fold(envelopes, data):
    """The state encoded at any point, decoded and folded on, equals the full fold."""
    cut = data.draw(st.integers(0, len(envelopes)))
    head = replay.fold_envelopes(envelopes[:cut])
    resumed = replay.fold_envelopes(envelopes[cut:], decode_checkpoint(encode_checkpoint(head)))
    assert resumed.digest() == replay.fold_envelopes(envelopes).digest()


@given(histories)
@settings(max_examples=15, deadline=None)
def test_incremental_indexes_match_a_rebuild(envelopes):
    """Usage, name, MAC and active-job indexes kept by apply equal those rebuilt from the entities."""
    state = replay.fold_envelopes(envelopes)
    rebuilt = with_indexes(state)
    for name in ("node_names", "instance_names", "group_names", "macs", "active_jobs", "job_requests"):
        assert getattr(state, name) == getattr(rebuilt, name), name
    assert {k: v for k, v in state.usage.items() if v != type(v)()} == {
        k: v for k, v in usage_of(state.instances).items() if v != type(v)()}


def test_snapshot_is_unaffected_by_later_applies():
    """A reference to the state is a snapshot: applying more events does not change it."""
    box = Sandbox(3)
    box.run("cluster_init", name="c.example.com")
    snapshot = box.state
    box.run("node_add", name="n1.example.com", memory_mib=1024, disk_mib=10240, cpus=2)
    assert len(snapshot.nodes) == 0 and len(box.state.nodes) == 1


def test_apply_tolerates_events_about_missing_entities():
    """Events naming unknown ids leave the state unchanged instead of raising."""
    state = ClusterState()
    events = (ev.InstanceRemoved("inst-x"), ev.NodeModified("node-x", True, None, None, None, None),
              ev.InstanceDiskGrown("inst-x", 3, 10), ev.JobSucceeded(42, None), ev.GroupRemoved("group-x"),
              ev.TagsAdded("node", "node-x", ("a",)),
              ev.ClusterModified(None, None, None, None, "aa:bb:cc", None, None, None),
              ev.NodeFenced("node-x", "operator", ""), ev.InstanceFailedOver("inst-x", "node-a", "node-b"),
              ev.InstanceMigrationStarted("inst-x", "node-a", "node-b"),
              ev.InstanceMigrationFinished("inst-x", "node-a", "node-b", True, "", 3),
              ev.InstanceMigrationAborted("inst-x", "node-b"), ev.InstanceRestartDecided("inst-x", "node-a", 1, 5.0),
              ev.InstanceRestartsExhausted("inst-x", "node-a", 3),
              ev.DiskStateObserved("inst-x", 0, "node-a", "UPTODATE", 100.0),
              ev.InstanceObservedStopped("inst-x", "node-a", 1, "crashed"),
              ev.JobOperationPlanned(42, 0, {}, (), (), (), None), ev.JobCancelRequested(42), ev.JobAdmitted(42, ()))
    for number, event in enumerate(events):
        after = replay.apply(state, Envelope(f"{number:016d}".encode(), event, "admin", "", 0.0))
        assert without_seq(after) | {"recent_events": None} == without_seq(state) | {"recent_events": None}
        state = after


def test_dedup_window_forgets_ids_two_generations_back():
    """An id is remembered for one to two generations of events: a fixed part of the format."""
    recent = RecentIds(2)
    for key in "abcde":
        recent = recent.push(key)
    assert "a" not in recent and "b" not in recent and all(k in recent for k in "cde")
    assert RecentIds.rebuilt(2, *recent.plain()) == recent
    assert DEDUP_GENERATION == 50_000


def test_window_keeps_the_last_keys_in_order():
    """The finished-jobs ring keeps the newest keys and says which one fell out."""
    window = Window(3)
    for key in "abcd":
        window, evicted = window.push(key)
    assert evicted == "a" and window.ordered() == ["b", "c", "d"]
    assert Window.rebuilt(3, window.count, window.ordered()) == window


def test_job_ids_follow_commit_order():
    """Submitted jobs get integer ids 1, 2, 3 in the order they commit."""
    box = Sandbox(4)
    box.run("cluster_init", name="c.example.com")
    for _ in range(3):
        box.commit(ev.JobSubmitted(({"op": "cluster_init", "params": {}},), ""))
    assert sorted(box.state.jobs) == [1, 2, 3] and box.state.next_job_id == 4
    assert [box.state.jobs[i].submit_seq for i in (1, 2, 3)] == [3, 4, 5]


def test_finished_jobs_leave_the_state_after_the_limit(monkeypatch):
    """Only the most recent finished jobs stay in the state; active ones always stay."""
    box = Sandbox(5)
    box.run("cluster_init", name="c.example.com")
    box.state = box.state.evolve(finished_jobs=Window(2))
    for job_id in range(1, 5):
        box.commit(ev.JobSubmitted((), ""))
    for job_id in (1, 2, 3):
        box.commit(ev.JobSucceeded(job_id, None))
    assert sorted(box.state.jobs) == [2, 3, 4]
    assert box.state.jobs[4].status == "queued"


def test_reservations_count_until_the_job_ends():
    """Memory reserved by an admitted job is not free until the job finishes."""
    box = Sandbox(6)
    box.run("cluster_init", name="c.example.com")
    box.run("node_add", name="n1.example.com", memory_mib=4096, disk_mib=10240, cpus=2)
    node = box.state.node_by_name("n1.example.com")
    box.commit(ev.JobSubmitted((), ""))
    box.commit(ev.JobAdmitted(1, ()))
    box.commit(ev.JobOperationPlanned(1, 0, {}, (), ({"node": node.id, "memory_mib": 1000, "disk_mib": 200},), (),
                                      None))
    assert box.state.free_memory_mib(node.id) == 3096 and box.state.free_disk_mib(node.id) == 10040
    box.commit(ev.JobFailed(1, "wrong_input", "x"))
    assert box.state.free_memory_mib(node.id) == 4096


def test_digest_changes_with_any_fact():
    """Two states that differ in one fact have different digests."""
    box = Sandbox(7)
    box.run("cluster_init", name="c.example.com")
    before = box.state.digest()
    box.commit(ev.TagsAdded("cluster", "", ("prod",)))
    assert box.state.digest() != before
    assert box.state.evolve().digest() == box.state.digest()


def test_dedup_window_snapshots_never_see_a_later_push():
    """A snapshot taken before pushes (the shared generation grows in place) still sees only its own ids."""
    head = RecentIds(3)
    for key in "ab":
        head = head.push(key)
    snapshot = head
    head = head.push("c")
    assert "c" in head and "c" not in snapshot
    assert snapshot.plain() == [[], ["a", "b"]]


def test_dedup_window_fork_copies_and_leaves_the_other_line_alone():
    """Pushing from a snapshot behind the head (a fork) copies its part; neither line sees the other's ids."""
    base = RecentIds(4).push("a").push("b")
    one = base.push("c").push("d")
    other = base.push("x")
    assert "x" in other and "c" not in other and "d" not in other
    assert "x" not in one and all(k in one for k in "abcd")
    assert one.plain() == [[], ["a", "b", "c", "d"]] and other.plain() == [[], ["a", "b", "x"]]
    assert "x" not in base and base.plain() == [[], ["a", "b"]]


def _reference_window(generation: int, pushes: list) -> list:
    """The dedup rule stated plainly: generations of `generation` ids, the current and the previous one kept."""
    generations = [[]]
    for key in pushes:
        if len(generations[-1]) >= generation:
            generations.append([])
        generations[-1].append(key)
    previous = generations[-2] if len(generations) > 1 else []
    return [sorted(previous), sorted(generations[-1])]


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 4), st.lists(st.tuples(st.integers(0, 30), st.integers(0, 10**6)), max_size=40))
def test_dedup_window_with_random_forks_matches_the_plain_rule(generation, steps):
    """Random pushes from random earlier snapshots: every snapshot equals the plain rule for its own line."""
    lines = [(RecentIds(generation), [])]
    for pick, key in steps:
        window, pushed = lines[pick % len(lines)]
        if key in window:
            continue
        lines.append((window.push(key), pushed + [key]))
    every_key = {key for _, key in steps}
    for window, pushed in lines:
        previous, current = _reference_window(generation, pushed)
        assert window.plain() == [previous, current]
        assert {key for key in every_key if key in window} == set(previous) | set(current)


# --- the leader, the cluster and nodes ------------------------------------

def test_leader_elected_sets_the_leader_of_a_higher_term():
    """LeaderElected with a term above the known one records the node and the term."""
    box = cluster(nodes=0)
    box.commit(ev.LeaderElected("node-a", 3))
    assert (box.state.leader_node, box.state.leader_term) == ("node-a", 3)


def test_leader_elected_of_an_old_term_changes_nothing():
    """LeaderElected with a term not above the known one leaves the leader as it was."""
    box = cluster(nodes=0)
    box.commit(ev.LeaderElected("node-a", 3))
    box.commit(ev.LeaderElected("node-b", 3))
    box.commit(ev.LeaderElected("node-c", 2))
    assert (box.state.leader_node, box.state.leader_term) == ("node-a", 3)


def test_cluster_modified_applies_every_given_field_and_keeps_the_rest():
    """ClusterModified sets each non-None field on the cluster and leaves the None ones unchanged."""
    box = cluster(nodes=0)
    before = box.state.cluster
    box.commit(ev.ClusterModified(("fake",), ("file",), "fake", {"max": {}}, "aa:11:22", 2, 30, 90))
    after = box.state.cluster
    assert after == before.evolve(enabled_hypervisors=("fake",), enabled_disk_templates=("file",),
                                  default_hypervisor="fake", ipolicy={"max": {}}, mac_prefix="aa:11:22",
                                  feature_level=2, fencing_interval_s=30, recovery_interval_s=90)
    box.commit(ev.ClusterModified(None, None, None, None, None, None, None, None))
    assert box.state.cluster == after


def test_node_modified_applies_every_given_flag_and_keeps_the_rest():
    """NodeModified sets each non-None flag and role on the node and leaves the None ones unchanged."""
    box = cluster()
    node = box.state.node_by_name("n3.example.com")
    box.commit(ev.NodeModified(node.id, None, True, False, None, "non-voter"))
    assert box.state.nodes[node.id] == node.evolve(drained=True, master_capable=False, role="non-voter")


def test_node_fenced_marks_the_node_and_releases_its_pending_stops():
    """NodeFenced marks the node fenced and removes it from every instance's pending_stop."""
    box = cluster()
    found = add(box)
    box.commit(ev.InstanceFailedOver(found.id, found.secondary, found.primary))
    assert box.state.instances[found.id].pending_stop == (found.primary,)
    box.commit(ev.NodeFenced(found.primary, "operator", "marked offline by the operator"))
    assert box.state.nodes[found.primary].fenced and box.state.instances[found.id].pending_stop == ()


def test_node_back_online_is_no_longer_fenced():
    """NodeModified with offline False clears the node's fence proof."""
    box = cluster()
    n3 = node_id(box, "n3.example.com")
    box.commit(ev.NodeModified(n3, True, None, None, None, None))
    box.commit(ev.NodeFenced(n3, "operator", ""))
    box.commit(ev.NodeModified(n3, False, None, None, None, None))
    assert not box.state.nodes[n3].fenced and not box.state.nodes[n3].offline


# --- instances: moves, migrations, restarts, disks -------------------------

def test_failed_over_swaps_the_nodes_and_waits_for_the_old_primary():
    """InstanceFailedOver swaps the nodes, keeps usage right and puts the old primary in pending_stop."""
    box = cluster()
    found = add(box)
    box.commit(ev.InstanceFailedOver(found.id, found.secondary, found.primary))
    moved = box.state.instances[found.id]
    assert (moved.primary, moved.secondary) == (found.secondary, found.primary)
    assert moved.pending_stop == (found.primary,) and moved.moved_at_seq == box.state.seq
    assert {k: v for k, v in box.state.usage.items() if v != type(v)()} == dict(usage_of(box.state.instances))


def test_failed_over_from_a_fenced_primary_needs_no_confirmation():
    """A failover away from a fenced primary adds nothing to pending_stop: its instances are known dead."""
    box = cluster()
    found = add(box)
    box.commit(ev.NodeFenced(found.primary, "operator", ""))
    box.commit(ev.InstanceFailedOver(found.id, found.secondary, found.primary))
    assert box.state.instances[found.id].pending_stop == ()


def test_failed_over_ends_a_migration_and_resets_restarts():
    """InstanceFailedOver clears the migration fields and the restart count."""
    box = cluster()
    found = add(box)
    box.commit(ev.InstanceMigrationStarted(found.id, found.primary, found.secondary))
    box.commit(ev.InstanceRestartDecided(found.id, found.primary, 2, 10.0))
    box.commit(ev.InstanceFailedOver(found.id, found.secondary, found.primary))
    moved = box.state.instances[found.id]
    assert (moved.migration_target, moved.migration_status, moved.restarts) == ("", "", 0)


def test_migrated_records_the_move_without_pending_stop():
    """InstanceMigrated (live) sets moved_at_seq and clears the migration, with nobody left to confirm a stop."""
    box = cluster()
    found = add(box)
    box.commit(ev.InstanceMigrationStarted(found.id, found.primary, found.secondary))
    box.commit(ev.InstanceMigrated(found.id, found.secondary, found.primary))
    moved = box.state.instances[found.id]
    assert moved.primary == found.secondary and moved.pending_stop == () and moved.moved_at_seq == box.state.seq
    assert (moved.migration_target, moved.migration_status) == ("", "")


def test_migration_started_records_the_target():
    """InstanceMigrationStarted sets the target and the status running."""
    box = cluster()
    found = add(box)
    box.commit(ev.InstanceMigrationStarted(found.id, found.primary, found.secondary))
    instance = box.state.instances[found.id]
    assert (instance.migration_target, instance.migration_status) == (found.secondary, "running")


@pytest.mark.parametrize("ok, status", [(True, "done"), (False, "failed")])
def test_migration_finished_records_how_it_ended(ok, status):
    """InstanceMigrationFinished for the current target sets the status done or failed."""
    box = cluster()
    found = add(box)
    box.commit(ev.InstanceMigrationStarted(found.id, found.primary, found.secondary))
    box.commit(ev.InstanceMigrationFinished(found.id, found.primary, found.secondary, ok, "", box.state.seq))
    assert box.state.instances[found.id].migration_status == status


def test_migration_finished_for_another_target_changes_nothing():
    """A report about a migration to another node than the current target is ignored."""
    box = cluster()
    found = add(box)
    box.commit(ev.InstanceMigrationStarted(found.id, found.primary, found.secondary))
    other = node_id(box, "n3.example.com")
    box.commit(ev.InstanceMigrationFinished(found.id, found.primary, other, True, "", box.state.seq))
    assert box.state.instances[found.id].migration_status == "running"


def test_migration_aborted_makes_the_target_confirm_a_stop():
    """InstanceMigrationAborted puts the target in pending_stop, records the seq and clears the migration."""
    box = cluster()
    found = add(box)
    box.commit(ev.InstanceMigrationStarted(found.id, found.primary, found.secondary))
    box.commit(ev.InstanceMigrationAborted(found.id, found.secondary))
    instance = box.state.instances[found.id]
    assert instance.pending_stop == (found.secondary,) and instance.moved_at_seq == box.state.seq
    assert (instance.migration_target, instance.migration_status, instance.primary) == ("", "", found.primary)


def test_migration_aborted_without_a_migration_changes_nothing():
    """An abort when no migration is recorded leaves the instance as it was."""
    box = cluster()
    found = add(box)
    box.commit(ev.InstanceMigrationAborted(found.id, found.secondary))
    assert box.state.instances[found.id] == found


def test_restart_decided_records_the_attempt():
    """InstanceRestartDecided sets the instance's restart count to the attempt."""
    box = cluster()
    found = add(box)
    box.commit(ev.InstanceRestartDecided(found.id, found.primary, 2, 30.0))
    assert box.state.instances[found.id].restarts == 2


def test_restarts_exhausted_leaves_the_instance_in_error():
    """InstanceRestartsExhausted sets the observed state to error."""
    box = cluster()
    found = add(box)
    box.commit(ev.InstanceRestartsExhausted(found.id, found.primary, 3))
    assert box.state.instances[found.id].observed_state == "error"


def test_disk_state_observed_replaces_the_entry_of_that_disk_and_node():
    """DiskStateObserved keeps one entry per (disk, node), sorted, the latest one winning."""
    box = cluster()
    found = add(box)
    box.commit(ev.DiskStateObserved(found.id, 0, found.secondary, "SYNCING", 10.0))
    box.commit(ev.DiskStateObserved(found.id, 0, found.primary, "UPTODATE", 100.0))
    box.commit(ev.DiskStateObserved(found.id, 0, found.secondary, "UPTODATE", 100.0))
    assert box.state.instances[found.id].disk_states == tuple(sorted(
        [(0, found.primary, "UPTODATE", 100.0), (0, found.secondary, "UPTODATE", 100.0)]))


# --- instances: observations and requests -----------------------------------

def test_observed_stopped_after_the_move_confirms_the_stop():
    """A stop seen by a pending node at or after the move's seq removes it from pending_stop."""
    box = cluster()
    found = add(box)
    box.commit(ev.InstanceFailedOver(found.id, found.secondary, found.primary))
    moved_at = box.state.seq
    box.commit(ev.InstanceObservedStopped(found.id, found.primary, moved_at, "shutdown"))
    assert box.state.instances[found.id].pending_stop == ()


def test_observed_stopped_before_the_move_confirms_nothing():
    """A stop seen by a pending node before the move's seq leaves it in pending_stop."""
    box = cluster()
    found = add(box)
    box.commit(ev.InstanceFailedOver(found.id, found.secondary, found.primary))
    box.commit(ev.InstanceObservedStopped(found.id, found.primary, box.state.seq - 1, "shutdown"))
    assert box.state.instances[found.id].pending_stop == (found.primary,)


@pytest.mark.parametrize("cause, observed", [("shutdown", "stopped"), ("absent", "stopped"),
                                             ("crashed", "crashed"), ("guest", "user_down")])
def test_observed_stopped_on_the_primary_records_the_cause(cause, observed):
    """A stop seen on the primary sets the observed state its cause stands for."""
    box = cluster()
    found = add(box)
    box.commit(ev.InstanceObservedStopped(found.id, found.primary, box.state.seq, cause))
    instance = box.state.instances[found.id]
    assert (instance.observed_state, instance.observed_node) == (observed, found.primary)


def test_observed_stopped_on_another_node_leaves_what_was_seen_on_the_primary():
    """A stop seen on a node that is neither the primary nor where it was last seen changes no observed state."""
    box = cluster()
    found = add(box)
    box.commit(ev.InstanceObservedStopped(found.id, found.secondary, box.state.seq, "absent"))
    instance = box.state.instances[found.id]
    assert (instance.observed_state, instance.observed_node) == ("running", found.primary)


def test_observed_running_records_the_node():
    """InstanceObservedRunning sets the observed state running on the reporting node."""
    box = cluster()
    found = add(box, observed=False)
    box.commit(ev.InstanceObservedRunning(found.id, found.primary, box.state.seq))
    instance = box.state.instances[found.id]
    assert (instance.observed_state, instance.observed_node) == ("running", found.primary)


@pytest.mark.parametrize("request_event", [ev.InstanceStartupRequested, ev.InstanceRebootRequested])
@pytest.mark.parametrize("observed", ["user_down", "error"])
def test_start_or_reboot_request_makes_the_reconciler_act_again(request_event, observed):
    """A start or reboot request resets restarts and turns user_down or error into stopped."""
    box = cluster()
    found = add(box)
    box.commit(ev.InstanceRestartDecided(found.id, found.primary, 3, 60.0))
    if observed == "user_down":
        box.commit(ev.InstanceObservedStopped(found.id, found.primary, box.state.seq, "guest"))
    else:
        box.commit(ev.InstanceRestartsExhausted(found.id, found.primary, 3))
    box.commit(request_event(found.id, "hard") if request_event is ev.InstanceRebootRequested
               else request_event(found.id))
    instance = box.state.instances[found.id]
    assert (instance.admin_state, instance.restarts, instance.observed_state) == ("up", 0, "stopped")


# --- jobs -------------------------------------------------------------------

def submitted(box, request_id: str = "") -> int:
    """Commit a JobSubmitted and return the id of the job it names."""
    box.commit(ev.JobSubmitted(({"op": "cluster_init", "params": {}},), request_id))
    return box.state.job_requests.get(request_id, box.state.next_job_id - 1)


def admitted(box) -> int:
    """Commit a JobSubmitted and its JobAdmitted; return the job's id."""
    job = submitted(box)
    box.commit(ev.JobAdmitted(job, ()))
    return job


def test_job_submitted_twice_with_one_request_id_makes_one_job():
    """A resubmission with a request id already in the state changes nothing: the job is the first one."""
    box = cluster(nodes=0)
    first = submitted(box, "req-1")
    before = box.state
    assert submitted(box, "req-1") == first
    assert without_seq(box.state) | {"recent_events": None} == without_seq(before) | {"recent_events": None}
    assert box.state.next_job_id == first + 1


def test_an_evicted_job_frees_its_request_id():
    """Once a finished job leaves the state, its request id is forgotten and may name a new job."""
    box = cluster(nodes=0)
    box.state = box.state.evolve(finished_jobs=Window(1))
    first = submitted(box, "req-1")
    box.commit(ev.JobSucceeded(first, None))
    other = submitted(box)
    box.commit(ev.JobSucceeded(other, None))
    assert first not in box.state.jobs and "req-1" not in box.state.job_requests
    assert submitted(box, "req-1") == other + 1


def test_job_admitted_records_the_claims():
    """JobAdmitted sets the job running with its claims."""
    box = cluster(nodes=0)
    job = submitted(box)
    box.commit(ev.JobAdmitted(job, ({"instances": ("inst-1",)},)))
    assert (box.state.jobs[job].status, box.state.jobs[job].claims) == ("running", ({"instances": ("inst-1",)},))


def test_job_admitted_v1_puts_reservations_and_macs_on_the_job():
    """A JobAdmitted v1 record folds as it did: reservations and MACs on the job, no claims."""
    box = cluster()
    node = node_id(box, "n1.example.com")
    job = submitted(box)
    raw = {"event_id": bytes(16), "type": ev.JobAdmitted.TYPE, "version": 1, "actor": "admin", "reason": "",
           "proposed_at": 0.0, "payload": {"job": job, "macs": ["aa:00:00:00:00:01"],
                                           "reservations": [{"node": node, "memory_mib": 1000, "disk_mib": 0}]}}
    state = replay.apply(box.state, codec.decode(cbor2.dumps(raw, canonical=True)))
    admitted = state.jobs[job]
    assert (admitted.status, admitted.claims, admitted.macs) == ("running", (), ("aa:00:00:00:00:01",))
    assert state.free_memory_mib(node) == box.state.free_memory_mib(node) - 1000


def test_job_operation_planned_records_the_plan():
    """JobOperationPlanned puts the operation's steps, holdings and result on the job, no step done yet."""
    box = cluster(nodes=0)
    job = admitted(box)
    assert box.state.jobs[job].planned == -1
    box.commit(ev.JobOperationPlanned(job, 0, {"x": 1}, ({"events": ()},), ({"node": "n", "memory_mib": 1,
                                                                             "disk_mib": 0},), ("m",), "ok"))
    planned = box.state.jobs[job]
    assert (planned.plan, planned.operation_index, planned.reservations, planned.macs, planned.op_result) == (
        ({"events": ()},), 0, ({"node": "n", "memory_mib": 1, "disk_mib": 0},), ("m",), "ok")
    assert (planned.step_done, planned.step_done_at, planned.results, planned.planned) == (-1, box.now, (), 0)


def test_job_operation_planned_twice_keeps_the_first_plan():
    """A second plan for an operation already planned (a late duplicate) changes nothing."""
    box = cluster(nodes=0)
    job = admitted(box)
    box.commit(ev.JobOperationPlanned(job, 0, {}, ("first",), (), (), "one"))
    box.commit(ev.JobProgressed(job, 0, 0, "step one"))
    box.commit(ev.JobOperationPlanned(job, 0, {}, ("second",), (), (), "two"))
    planned = box.state.jobs[job]
    assert (planned.plan, planned.op_result, planned.step_done) == (("first",), "one", 0)


def test_job_operation_planned_for_the_next_operation_keeps_the_previous_result():
    """The plan of operation k > 0 appends the previous operation's result to the job's results."""
    box = cluster(nodes=0)
    job = admitted(box)
    box.commit(ev.JobOperationPlanned(job, 0, {}, (), (), (), "first result"))
    box.commit(ev.JobOperationPlanned(job, 1, {}, ("s",), (), (), "second result"))
    planned = box.state.jobs[job]
    assert (planned.operation_index, planned.results, planned.op_result) == (1, ("first result",), "second result")


def test_job_operation_planned_for_a_job_not_admitted_changes_nothing():
    """A plan for a queued job (its admission did not commit) is ignored."""
    box = cluster(nodes=0)
    job = submitted(box)
    box.commit(ev.JobOperationPlanned(job, 0, {}, ("s",), (), (), None))
    assert box.state.jobs[job].planned == -1 and box.state.jobs[job].plan == ()


def test_job_operation_planned_for_a_finished_job_changes_nothing():
    """A plan arriving after the job ended is ignored."""
    box = cluster(nodes=0)
    job = submitted(box)
    box.commit(ev.JobCanceled(job))
    before = box.state.jobs[job]
    box.commit(ev.JobOperationPlanned(job, 0, {}, ("s",), (), (), None))
    assert box.state.jobs[job] == before


def test_job_progressed_records_the_step_done():
    """JobProgressed records the step as done, and when."""
    box = cluster(nodes=0)
    job = admitted(box)
    box.commit(ev.JobOperationPlanned(job, 0, {}, ("a", "b"), (), (), None))
    box.tick(5.0)
    box.commit(ev.JobProgressed(job, 0, 1, "second step"))
    assert (box.state.jobs[job].step_done, box.state.jobs[job].step_done_at) == (1, box.now)


def test_job_cancel_requested_marks_an_active_job():
    """JobCancelRequested marks an active job; a finished one stays as it ended."""
    box = cluster(nodes=0)
    active, finished = submitted(box), submitted(box)
    box.commit(ev.JobSucceeded(finished, None))
    box.commit(ev.JobCancelRequested(active))
    box.commit(ev.JobCancelRequested(finished))
    assert box.state.jobs[active].cancel_requested and not box.state.jobs[finished].cancel_requested


# --- join tokens and node certificates ------------------------------------

TOKEN_HASH = "ab" * 32


def test_join_token_issued_records_an_unused_token():
    """JoinTokenIssued keeps the token under its hash: the node and address it admits, its expiry, unused."""
    box = cluster(nodes=0)
    box.commit(ev.JoinTokenIssued("n4.example.com", "10.0.0.4:7800", TOKEN_HASH, 1_764_637_200))
    assert box.state.join_tokens[TOKEN_HASH] == JoinTokenEntry("n4.example.com", "10.0.0.4:7800", 1_764_637_200,
                                                               False, box.actor)


def test_join_token_used_marks_the_token_used_and_keeps_it():
    """JoinTokenUsed marks the token used; it stays in the state so that it is refused the next time."""
    box = cluster(nodes=0)
    box.commit(ev.JoinTokenIssued("n4.example.com", "10.0.0.4:7800", TOKEN_HASH, 1_764_637_200))
    box.commit(ev.JoinTokenUsed(TOKEN_HASH))
    assert box.state.join_tokens[TOKEN_HASH].used
    spent = box.state
    box.commit(ev.JoinTokenUsed(TOKEN_HASH))
    assert without_seq(box.state) | {"recent_events": None} == without_seq(spent) | {"recent_events": None}


def test_join_token_issued_again_never_unspends_a_token():
    """A JoinTokenIssued for a hash already known changes nothing, so a used token stays used."""
    box = cluster(nodes=0)
    box.commit(ev.JoinTokenIssued("n4.example.com", "10.0.0.4:7800", TOKEN_HASH, 1_764_637_200))
    box.commit(ev.JoinTokenUsed(TOKEN_HASH))
    box.commit(ev.JoinTokenIssued("n5.example.com", "10.0.0.5:7800", TOKEN_HASH, 1_764_640_800))
    assert box.state.join_tokens[TOKEN_HASH] == JoinTokenEntry("n4.example.com", "10.0.0.4:7800", 1_764_637_200,
                                                               True, box.actor)


def test_join_token_used_for_an_unknown_token_changes_nothing():
    """JoinTokenUsed naming a hash never issued leaves the tokens as they were."""
    box = cluster(nodes=0)
    box.commit(ev.JoinTokenUsed(TOKEN_HASH))
    assert not box.state.join_tokens


def test_node_certificate_issued_records_the_serial_under_the_node_name():
    """NodeCertificateIssued maps the node's name (it may have no id yet) to the serial; a newer one replaces it."""
    box = cluster(nodes=0)
    box.commit(ev.NodeCertificateIssued("n4.example.com", "5c3e"))
    assert dict(box.state.certificates) == {"n4.example.com": "5c3e"}
    box.commit(ev.NodeCertificateIssued("n4.example.com", "7d1f"))
    assert dict(box.state.certificates) == {"n4.example.com": "7d1f"}


def test_node_removed_keeps_its_certificate_until_revoked():
    """NodeRemoved alone leaves the certificate; NodeCertificateRevoked moves its serial to the revoked set."""
    box = cluster()
    box.commit(ev.NodeCertificateIssued("n3.example.com", "5c3e"))
    box.commit(ev.NodeRemoved(node_id(box, "n3.example.com")))
    assert box.state.certificates["n3.example.com"] == "5c3e" and not box.state.revoked_serials
    box.commit(ev.NodeCertificateRevoked("n3.example.com", "5c3e"))
    assert not box.state.certificates and dict(box.state.revoked_serials) == {"5c3e": "n3.example.com"}


def test_node_certificate_revoked_twice_changes_nothing_the_second_time():
    """A second revocation of one serial leaves the state as the first left it."""
    box = cluster(nodes=0)
    box.commit(ev.NodeCertificateIssued("n4.example.com", "5c3e"))
    box.commit(ev.NodeCertificateRevoked("n4.example.com", "5c3e"))
    revoked = box.state
    box.commit(ev.NodeCertificateRevoked("n4.example.com", "5c3e"))
    assert without_seq(box.state) | {"recent_events": None} == without_seq(revoked) | {"recent_events": None}


def test_node_certificate_revoked_for_an_older_serial_keeps_the_current_one():
    """Revoking a serial the node no longer holds adds it to the revoked set and leaves the current certificate."""
    box = cluster(nodes=0)
    box.commit(ev.NodeCertificateIssued("n4.example.com", "7d1f"))
    box.commit(ev.NodeCertificateRevoked("n4.example.com", "5c3e"))
    assert dict(box.state.certificates) == {"n4.example.com": "7d1f"}
    assert dict(box.state.revoked_serials) == {"5c3e": "n4.example.com"}


def test_a_revoked_serial_is_never_issued_again():
    """NodeCertificateIssued with a revoked serial changes nothing: revocation is for good."""
    box = cluster(nodes=0)
    box.commit(ev.NodeCertificateIssued("n4.example.com", "5c3e"))
    box.commit(ev.NodeCertificateRevoked("n4.example.com", "5c3e"))
    box.commit(ev.NodeCertificateIssued("n4.example.com", "5c3e"))
    assert not box.state.certificates and "5c3e" in box.state.revoked_serials


# --- checkpoints --------------------------------------------------------------

def test_checkpoint_round_trip_keeps_tokens_and_certificates():
    """Join tokens, certificates and revoked serials survive a checkpoint, and the digest covers each of them."""
    box = cluster(nodes=0)
    digests = [box.state.digest()]
    box.commit(ev.JoinTokenIssued("n4.example.com", "10.0.0.4:7800", TOKEN_HASH, 1_764_637_200))
    digests.append(box.state.digest())
    box.commit(ev.JoinTokenUsed(TOKEN_HASH))
    digests.append(box.state.digest())
    box.commit(ev.NodeCertificateIssued("n4.example.com", "5c3e"))
    digests.append(box.state.digest())
    box.commit(ev.NodeCertificateRevoked("n4.example.com", "5c3e"))
    box.commit(ev.NodeCertificateIssued("n4.example.com", "7d1f"))
    digests.append(box.state.digest())
    assert len(set(digests)) == len(digests)
    decoded = decode_checkpoint(encode_checkpoint(box.state))
    assert decoded.digest() == box.state.digest()
    assert (decoded.join_tokens, decoded.certificates, decoded.revoked_serials) == (
        box.state.join_tokens, box.state.certificates, box.state.revoked_serials)
    assert type(decoded.join_tokens[TOKEN_HASH]) is JoinTokenEntry


def test_a_checkpoint_written_before_tokens_and_certificates_decodes_empty():
    """A checkpoint without the token and certificate keys (written by an older build) decodes with them empty."""
    plain = to_plain(cluster(nodes=1).state)
    for key in ("join_tokens", "certificates", "revoked_serials"):
        del plain[key]
    decoded = decode_checkpoint(cbor2.dumps(plain, canonical=True))
    assert not decoded.join_tokens and not decoded.certificates and not decoded.revoked_serials
    assert len(decoded.nodes) == 1


def test_checkpoint_round_trip_keeps_the_new_fields():
    """A state using every new field encodes and decodes to the same digest and the same entities."""
    box = cluster()
    found = add(box)
    job = submitted(box, "req-1")
    box.commit(ev.LeaderElected(found.primary, 4))
    box.commit(ev.JobAdmitted(job, ({"instances": (found.id,)},)))
    box.commit(ev.JobOperationPlanned(job, 0, {"instance": found.id}, ({"events": ({"x": (1, 2)},)},), (), (), None))
    box.commit(ev.JobCancelRequested(job))
    box.commit(ev.InstanceMigrationStarted(found.id, found.primary, found.secondary))
    box.commit(ev.InstanceMigrationAborted(found.id, found.secondary))
    box.commit(ev.InstanceMigrationStarted(found.id, found.primary, found.secondary))
    box.commit(ev.InstanceRestartDecided(found.id, found.primary, 1, 2.5))
    box.commit(ev.DiskStateObserved(found.id, 0, found.secondary, "DEGRADED", 42.5))
    box.commit(ev.NodeFenced(node_id(box, "n3.example.com"), "operator", ""))
    decoded = decode_checkpoint(encode_checkpoint(box.state))
    assert decoded.digest() == box.state.digest()
    assert decoded.instances == box.state.instances and decoded.jobs == box.state.jobs
    assert decoded.nodes == box.state.nodes
    assert dict(decoded.job_requests) == dict(box.state.job_requests) == {"req-1": job}
    assert (decoded.leader_node, decoded.leader_term) == (found.primary, 4)


def test_a_checkpoint_of_the_old_format_is_refused():
    """A checkpoint written in format 1 is refused with the advice to rebuild the checkpoints."""
    plain = to_plain(cluster(nodes=0).state) | {"format": 1}
    assert CHECKPOINT_FORMAT == 2
    with pytest.raises(ValueError, match="rebuild the checkpoints"):
        decode_checkpoint(cbor2.dumps(plain, canonical=True))
