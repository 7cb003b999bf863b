"""Tests of replay and state: determinism, the dedup window, checkpoints, derived indexes."""

from hypothesis import given, settings, strategies as st

from appliance.demo import Demo
from appliance.model import codec, events as ev, replay
from appliance.model.codec import Envelope
from appliance.model.state import (
    DEDUP_GENERATION, ClusterState, RecentIds, Window, decode_checkpoint, encode_checkpoint, to_plain, usage_of, with_indexes,
)
from appliance.sandbox import Sandbox


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
    for name in ("node_names", "instance_names", "group_names", "macs", "active_jobs"):
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
    events = (ev.InstanceRemoved("inst-x"), ev.NodeModified("node-x", {"offline": True}),
              ev.InstanceDiskGrown("inst-x", 3, 10), ev.JobSucceeded(42, None), ev.GroupRemoved("group-x"),
              ev.TagsAdded("node", "node-x", ("a",)), ev.ClusterModified({"mac_prefix": "aa:bb:cc"}))
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
    box.commit(ev.JobAdmitted(1, ({"node": node.id, "memory_mib": 1000, "disk_mib": 200},), ()))
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
