"""Tests of the demo history: built as jobs through the engine, deterministic per seed, verifiable, replayable."""

import os
import subprocess
import sys
from collections import Counter

from appliance import eventfile
from appliance.demo import Demo, write_demo
from appliance.model import codec, events as ev, replay

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_same_seed_writes_the_same_file_in_another_process(tmp_path):
    """Two runs with one seed, the second in a process with another hash seed, write identical files."""
    write_demo(tmp_path / "a", 1500, seed=4)
    code = f"from appliance.demo import write_demo; write_demo({str(tmp_path / 'b')!r}, 1500, seed=4)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": "7"})
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()


def test_another_seed_writes_another_history(tmp_path):
    """A different seed gives a different history."""
    write_demo(tmp_path / "a", 800, seed=4)
    write_demo(tmp_path / "b", 800, seed=5)
    assert (tmp_path / "a").read_bytes() != (tmp_path / "b").read_bytes()


def test_the_demo_file_verifies_and_replays_to_the_engine_state(tmp_path):
    """The file verifies, holds at least the events asked for, and replays to the digest the engine's node had."""
    demo = Demo(6)
    demo.setup()
    while demo.cluster.seq < 1000:
        demo.step()
    write_demo(tmp_path / "d", 1000, seed=6)
    summary = eventfile.verify(tmp_path / "d")
    assert summary.sealed and summary.count == demo.cluster.seq
    assert eventfile.replay_file(tmp_path / "d", None).digest() == demo.state.digest()


def test_the_history_is_made_of_jobs_run_by_the_engine():
    """Work is submitted, admitted, planned and ends in success; refused operations end as failed jobs."""
    envelopes = []
    demo = Demo(8, envelopes.append)
    demo.setup()
    for _ in range(400):
        demo.step()
    kinds = Counter(type(e.event) for e in envelopes)
    for kind in (ev.LeaderElected, ev.JobSubmitted, ev.JobAdmitted, ev.JobOperationPlanned, ev.JobProgressed,
                 ev.JobSucceeded, ev.JobFailed, ev.InstanceAdded, ev.InstanceObservedRunning,
                 ev.InstanceMigrationStarted, ev.InstanceMigrationFinished, ev.InstanceMigrated):
        assert kinds[kind] > 0, kind.__name__
    statuses = Counter(job.status for job in demo.state.jobs.values())
    assert statuses["success"] > statuses["error"] > 0 and not demo.state.active_jobs
    # Every instance event was caused by a job, except the observations the nodes report.
    for envelope in envelopes:
        if envelope.actor != "reconciler" and type(envelope.event).__name__.startswith("Instance"):
            assert envelope.job > 0, envelope


def test_the_demo_keeps_its_character():
    """Fifty nodes, many instances of every template, and a mix of actions beyond adds."""
    demo = Demo(3)
    demo.setup()
    for _ in range(300):
        demo.step()
    state = demo.state
    assert len(state.nodes) == 50 and len(state.instances) > 150
    assert {i.disk_template for i in state.instances.values()} == {"replicated", "file", "diskless"}
    operations = Counter(job.operations[0]["op"] for job in state.jobs.values())
    for name in ("instance_startup", "instance_shutdown", "instance_migrate", "instance_remove", "instance_modify"):
        assert operations[name] > 0, name


def test_committed_records_fold_to_the_node_state():
    """Folding the committed envelopes, encoded and decoded, gives the state the engine's node holds."""
    envelopes = []
    demo = Demo(2, envelopes.append)
    demo.setup()
    for _ in range(100):
        demo.step()
    folded = replay.fold_envelopes(codec.decode(codec.encode(e)) for e in envelopes)
    assert folded.digest() == demo.state.digest()
