"""SyncObjLog in one process: safe settings, CBOR snapshots, group commit, leadership stream, restart from disk."""

import contextlib
import logging

import cbor2
import pytest
import trio

from consensus.log import LogError
from consensus.syncobj_log import SyncObjSettings, node_address, open_syncobj_log, raft_address, wait_for
from consensus.syncobj_settings import syncobj_conf
from tests.contract.log_contract import free_node_address

SECRET = "unit-test-cluster-secret"


@contextlib.asynccontextmanager
async def members(tmp_path, count=3, **settings):
    nodes = [free_node_address() for _ in range(count)]
    options = SyncObjSettings(password=SECRET, **settings)
    async with contextlib.AsyncExitStack() as stack:
        opened = [await stack.enter_async_context(open_syncobj_log(n, nodes, tmp_path / f"m{i}", options))
                  for i, n in enumerate(nodes)]
        await wait_for(lambda: any(m.is_leader() for m in opened), 20, "a leader elected")
        yield opened


def test_a_missing_secret_is_refused():
    """Settings without a password are refused, with the reason and the fix."""
    with pytest.raises(ValueError, match="cluster secret"):
        SyncObjSettings(password="")


def test_pysyncobj_is_configured_safely(tmp_path):
    """The pysyncobj configuration has a password, an explicit bind, non-batch mode, tuned timeouts and both files."""
    conf = syncobj_conf(SyncObjSettings(password=SECRET), tmp_path, "127.0.0.1:7001", lambda *a: None, lambda *a: None)
    conf.validate()
    assert conf.password == SECRET and conf.bindAddress == "127.0.0.1:7001"
    assert conf.appendEntriesUseBatch is False and conf.appendEntriesPeriod == 0.05
    assert (conf.raftMinTimeout, conf.raftMaxTimeout) == (0.3, 0.6)
    assert conf.leaderFallbackTimeout == 1.0 and conf.connectionRetryTime == 1.0
    assert conf.journalFile and conf.fullDumpFile and conf.serializer and conf.deserializer
    assert conf.dynamicMembershipChange is True


def test_the_raft_port_is_the_node_port_plus_one():
    """A node HOST:PORT runs Raft on PORT+1 and the mapping goes both ways."""
    assert raft_address("10.0.0.5:7000") == "10.0.0.5:7001"
    assert node_address("10.0.0.5:7001") == "10.0.0.5:7000"
    with pytest.raises(ValueError, match="HOST:PORT"):
        raft_address("no-port")


async def test_concurrent_proposals_share_raft_entries(tmp_path):
    """Proposals made while an entry is in flight are packed together: fewer entries than payloads, each its own seq."""
    async with members(tmp_path) as opened:
        leader = next(m for m in opened if m.is_leader())
        seqs = []

        async def propose(i):
            seqs.append(await leader.propose(f"{i}".encode()))

        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(propose, i)
        assert sorted(seqs) == list(range(1, 201))
        assert leader.payloads_sent == 200 and leader.entries_sent < 50


async def test_proposals_submitted_together_leave_in_one_entry(tmp_path):
    """Proposals submitted inside submitting_together() are packed into one Raft entry when the block ends."""
    async with members(tmp_path) as opened:
        leader = next(m for m in opened if m.is_leader())
        await leader.propose(b"settle")
        answers = []
        entries_before = leader.entries_sent
        with leader.submitting_together():
            for i in range(10):
                leader.submit(f"{i}".encode(), 10.0, lambda seq, error: answers.append((seq, error)))
            assert leader.entries_sent == entries_before
        assert leader.entries_sent == entries_before + 1
        await wait_for(lambda: len(answers) == 10, 20, "every proposal answered")
        assert [seq for seq, _error in answers] == list(range(2, 12))
        assert all(error is None for _seq, error in answers)


async def test_a_busy_leader_never_resends_entries_a_follower_holds(tmp_path, caplog):
    """Under concurrent load no follower truncates and re-appends applied entries (a stale answer never moves its next index back)."""
    async with members(tmp_path) as opened:
        leader = next(m for m in opened if m.is_leader())

        async def propose(task):
            for n in range(150):
                await leader.propose(f"{task}:{n}".encode())

        with caplog.at_level(logging.CRITICAL, logger="pysyncobj"):
            async with trio.open_nursery() as nursery:
                for task in range(16):
                    nursery.start_soon(propose, task)
            await wait_for(lambda: all(m.head() == leader.head() for m in opened), 20, "every member at the head")
        assert leader.head().seq == 16 * 150
        assert not [r for r in caplog.records if "truncating already-applied" in r.getMessage()]


async def test_a_busy_leader_sends_one_append_entries_per_entry(tmp_path):
    """With the next entry already queued, the commit index rides on its AppendEntries instead of one of its own."""
    async with members(tmp_path) as opened:
        leader = next(m for m in opened if m.is_leader())
        raft = leader._raft
        send_append_entries = raft._SyncObj__sendAppendEntries
        sends = []

        def counting() -> None:
            sends.append(1)
            send_append_entries()

        async def propose(task):
            for n in range(50):
                await leader.propose(f"{task}:{n}".encode())

        raft._SyncObj__sendAppendEntries = counting
        entries_before = leader.entries_sent
        async with trio.open_nursery() as nursery:
            for task in range(16):
                nursery.start_soon(propose, task)
        entries = leader.entries_sent - entries_before
        # Heartbeats add a few; pysyncobj alone sends two per entry.
        assert len(sends) < 1.5 * entries


async def test_followers_campaign_at_once_when_the_leader_process_goes(tmp_path):
    """After a quiet spell, a leader whose process stops closes its connections; a follower then campaigns well before its election timeout."""
    nodes = [free_node_address() for _ in range(3)]
    # Election timeouts of 8-9 s: a new leader within 4 s can only come from the early campaign.
    options = SyncObjSettings(password=SECRET, raft_min_timeout_s=8.0, raft_max_timeout_s=9.0)
    stops = [trio.Event() for _ in nodes]
    stopped = [trio.Event() for _ in nodes]

    async def member(i, task_status=trio.TASK_STATUS_IGNORED):
        try:
            async with open_syncobj_log(nodes[i], nodes, tmp_path / f"m{i}", options) as log:
                task_status.started(log)
                await stops[i].wait()
        finally:
            stopped[i].set()

    async with trio.open_nursery() as nursery:
        opened = [await nursery.start(member, i) for i in range(len(nodes))]
        try:
            await wait_for(lambda: any(m.is_leader() for m in opened), 40, "a first leader elected")
            index = next(i for i, m in enumerate(opened) if m.is_leader())
            old_term = opened[index].term()
            survivors = [m for i, m in enumerate(opened) if i != index]
            await wait_for(lambda: all(m.leader() == opened[index].address for m in survivors), 20,
                           "the followers know the leader")
            # Longer than pysyncobj's connection timeout (9 s here): the followers
            # say nothing to each other meanwhile but the keepalive.
            await trio.sleep(10)
            stops[index].set()
            await stopped[index].wait()
            await wait_for(lambda: any(m.is_leader() for m in survivors), 4, "a new leader before any election timeout")
            new_leader = next(m for m in survivors if m.is_leader())
            assert new_leader.term() > old_term
            assert await new_leader.propose(b"after the leader went") >= 1
        finally:
            for stop in stops:
                stop.set()


async def test_the_leadership_stream_reports_the_elected_leader(tmp_path):
    """Every member's leadership stream reports the leader and its term."""
    async with members(tmp_path) as opened:
        leader = next(m for m in opened if m.is_leader())
        for member in opened:
            with trio.fail_after(10):
                async for leadership in member.leadership_changes():
                    if leadership.leader == leader.address:
                        break
            assert leadership.term == leader.term() >= 1


async def test_snapshots_are_canonical_cbor_and_a_restart_serves_the_same_head(tmp_path):
    """After compaction the snapshot file is CBOR holding the chain head; restarted members keep every record."""
    nodes = [free_node_address() for _ in range(3)]
    options = SyncObjSettings(password=SECRET, log_compaction_min_entries=20)
    async with contextlib.AsyncExitStack() as stack:
        opened = [await stack.enter_async_context(open_syncobj_log(n, nodes, tmp_path / f"m{i}", options))
                  for i, n in enumerate(nodes)]
        await wait_for(lambda: any(m.is_leader() for m in opened), 20, "a leader elected")
        leader = next(m for m in opened if m.is_leader())
        for i in range(60):
            await leader.propose(f"entry {i}".encode())
        await wait_for(lambda: (tmp_path / "m0" / "raft.snapshot").exists(), 20, "a snapshot written")
        head = leader.head()
    document = cbor2.loads((tmp_path / "m0" / "raft.snapshot").read_bytes())
    assert document["format"] == 1 and 20 <= document["chain"][0] <= 60
    async with contextlib.AsyncExitStack() as stack:
        reopened = [await stack.enter_async_context(open_syncobj_log(n, nodes, tmp_path / f"m{i}", options))
                    for i, n in enumerate(nodes)]
        await wait_for(lambda: all(m.head() == head for m in reopened), 30, "every member back at the head")
        assert [r.payload for r in reopened[0].read()] == [f"entry {i}".encode() for i in range(60)]


async def test_a_taken_raft_port_fails_fast_with_a_fix(tmp_path):
    """Starting a member on a Raft port that is in use raises LogError naming the port."""
    node = free_node_address()
    options = SyncObjSettings(password=SECRET)
    async with open_syncobj_log(node, [node], tmp_path / "first", options):
        with pytest.raises(LogError, match="cannot listen"):
            async with open_syncobj_log(node, [node], tmp_path / "second", options):
                pass


def test_the_journal_syncer_syncs_what_changed_and_only_that(tmp_path, monkeypatch):
    """New entries are msynced once, a new term or vote fsyncs the meta file; with nothing new, nothing is synced."""
    from pysyncobj.journal import FileJournal

    from consensus import syncobj_journal

    journal = FileJournal(str(tmp_path / "raft.journal"))
    flushes, fsynced = [], []
    real_flush = journal.flush
    monkeypatch.setattr(journal, "flush", lambda: (flushes.append(1), real_flush()))
    monkeypatch.setattr(syncobj_journal, "_fsync_path", fsynced.append)
    syncer = syncobj_journal.JournalSyncer(journal)
    assert syncer.sync() and len(flushes) == 1 and len(fsynced) == 1  # nothing was known to be on disk
    assert not syncer.sync()
    journal.add(b"entry", 1, 1)
    assert syncer.sync() and len(flushes) == 2 and len(fsynced) == 1
    journal.setCurrentTerm(2, "127.0.0.1:7001")
    assert syncer.sync() and len(flushes) == 2 and fsynced[-1].endswith("raft.journal.meta")
    journal.deleteEntriesFrom(0)
    journal.add(b"other", 1, 2)  # same offset, another entry
    assert syncer.sync() and len(flushes) == 3
    assert not syncer.sync() and syncer.syncs == 4


async def test_under_fsync_always_members_sync_their_journal_before_sending(tmp_path):
    """With fsync=always every member's transport syncs the journal (followers included); with batch the tick does, every 50 ms."""
    async with members(tmp_path / "always", fsync="always") as opened:
        leader = next(m for m in opened if m.is_leader())
        for n in range(20):
            await leader.propose(f"{n}".encode())
        await wait_for(lambda: all(m.head() == leader.head() for m in opened), 20, "every member at the head")
        transports = [m._raft._SyncObj__transport for m in opened]
        assert all(t.syncer is not None and t.syncer.syncs >= 20 for t in transports)
    async with members(tmp_path / "batch") as opened:
        assert all(getattr(m._raft._SyncObj__transport, "syncer", None) is None for m in opened)
        leader = next(m for m in opened if m.is_leader())
        await leader.propose(b"one")
        # Under batch the tick thread syncs the journal at most every 50 ms instead.
        await wait_for(lambda: all(m._raft.journal_syncer and m._raft.journal_syncer.syncs >= 2 for m in opened), 20,
                       "every member syncs its journal")


def test_a_journal_without_a_term_yet_syncs_without_error(tmp_path):
    """Before pysyncobj has stored a term there is no term file; syncing is then a no-op for it, not an error."""
    from pysyncobj.journal import FileJournal

    from consensus.syncobj_log import JournalSyncer

    journal = FileJournal(str(tmp_path / "raft.journal"))
    assert not (tmp_path / "raft.journal.meta").exists()
    assert JournalSyncer(journal).sync()
