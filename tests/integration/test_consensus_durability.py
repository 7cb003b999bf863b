"""Under fsync=always an acknowledged proposal is on the disks of a majority before the proposer hears of it.

Three pysyncobj members run in this process on loopback. The sync calls
themselves are watched (os.fsync, os.fdatasync and pysyncobj's msync): each
records how far that member's Raft journal is on disk, counting only entries
written before the call began. Two orders are then checked against that
record: a follower's "appended" answer never leaves before the entries it
reports are on its disk, and when a proposal is acknowledged, the Raft entry
carrying it is on the disks of a majority. The last two tests break the
order on purpose and require the checks to notice.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import pytest
import trio
from pysyncobj import journal as pysyncobj_journal
from pysyncobj.transport import TCPTransport

from consensus.syncobj_journal import DurableTransport
from consensus.syncobj_log import SyncObjSettings, open_syncobj_log, wait_for
from consensus.syncobj_raft import RaftNode
from tests.contract.log_contract import free_node_address

SECRET = "durability-test-cluster-secret"


class DiskWatch:
    """How far each member's Raft journal is on disk, learnt from the sync calls, and every order broken."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.members: dict[str, object] = {}  # address -> SyncObjLog
        self._journal_paths: dict[str, str] = {}  # resolved journal path -> address
        self.durable_index: dict[str, int] = {}
        self.violations: list[str] = []

    def add(self, member) -> None:
        self.members[member.address] = member
        self._journal_paths[str((member._data_dir / "raft.journal").resolve())] = member.address
        self.durable_index.setdefault(member.address, 0)

    def _journal(self, address: str):
        return self.members[address]._raft._SyncObj__raftLog

    def _last_index(self, address: str) -> int:
        journal = self._journal(address)
        return journal[-1][1] if len(journal) else 0

    def synced(self, address: str | None, real_sync) -> None:
        """Run `real_sync`; afterwards, what the member's journal held before it began is on disk."""
        if address is None or address not in self.members:
            real_sync()
            return
        before = self._last_index(address)
        real_sync()
        with self._lock:
            self.durable_index[address] = max(self.durable_index[address], before)

    def address_of_descriptor(self, descriptor: int) -> str | None:
        try:
            path = os.readlink(f"/proc/self/fd/{descriptor}")
        except OSError:
            return None
        return self._journal_paths.get(path)

    def address_of_mapping(self, mapped) -> str | None:
        return next((a for a in self.members if self._journal(a)._FileJournal__journalFile is mapped), None)

    def address_of_raft(self, raft) -> str | None:
        return next((a for a, m in self.members.items() if m._raft is raft), None)

    def answer_sent(self, raft, message: dict) -> None:
        """A follower's success answer claims the entries before `next_node_idx`; they must be on its disk."""
        if message.get("type") != "next_node_idx" or not message.get("success"):
            return
        address = self.address_of_raft(raft)
        if address is None:
            return
        claimed = message["next_node_idx"] - 1
        with self._lock:
            if self.durable_index[address] < claimed:
                self.violations.append(f"{address} answered 'appended up to {claimed}' with only "
                                       f"{self.durable_index[address]} on disk")

    def acknowledged(self, leader, payload: bytes, voters: int) -> None:
        """The Raft entry carrying `payload` must be on the disks of a majority of `voters` now."""
        entries = self._journal(leader.address)._FileJournal__journal
        index = next((idx for command, idx, _term in reversed(entries) if payload in bytes(command)), None)
        if index is None:
            self.violations.append(f"acknowledged {payload!r}, which is in no entry of the leader's journal")
            return
        with self._lock:
            on_disk = sorted(a for a, durable in self.durable_index.items() if durable >= index)
        if len(on_disk) < voters // 2 + 1:
            self.violations.append(f"acknowledged {payload!r} (Raft entry {index}) when only {on_disk} had it on disk")


@pytest.fixture
def watch(monkeypatch) -> DiskWatch:
    """A DiskWatch fed by every fsync, fdatasync and pysyncobj msync, and by every message a member sends."""
    watched = DiskWatch()
    real_fsync, real_fdatasync = os.fsync, os.fdatasync
    real_msync = pysyncobj_journal.ResizableFile.flush
    real_send = TCPTransport.send

    def fsync(descriptor) -> None:
        watched.synced(watched.address_of_descriptor(descriptor), lambda: real_fsync(descriptor))

    def fdatasync(descriptor) -> None:
        watched.synced(watched.address_of_descriptor(descriptor), lambda: real_fdatasync(descriptor))

    def msync(mapped) -> None:
        watched.synced(watched.address_of_mapping(mapped), lambda: real_msync(mapped))

    def send(transport, node, message):
        watched.answer_sent(transport._syncObj, message)
        return real_send(transport, node, message)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(pysyncobj_journal.ResizableFile, "flush", msync)
    monkeypatch.setattr(TCPTransport, "send", send)
    return watched


@contextlib.asynccontextmanager
async def durable_members(tmp_path: Path, watch: DiskWatch):
    """Three voters at fsync=always in this process, watched, with a leader elected."""
    nodes = [free_node_address() for _ in range(3)]
    settings = SyncObjSettings(password=SECRET, fsync="always")
    async with contextlib.AsyncExitStack() as stack:
        opened = []
        for i, node in enumerate(nodes):
            member = await stack.enter_async_context(open_syncobj_log(node, nodes, tmp_path / f"m{i}", settings))
            watch.add(member)
            opened.append(member)
        await wait_for(lambda: any(m.is_leader() for m in opened), 20, "a leader elected")
        await wait_for(lambda: all(m.leader() is not None for m in opened), 20, "every member knows the leader")
        yield opened


async def propose_and_check(leader, watch: DiskWatch, tasks: int = 8, each: int = 15) -> None:
    """Proposals from several tasks at once (so entries carry several payloads), each checked when acknowledged."""
    async def proposer(task: int) -> None:
        for n in range(each):
            payload = f"durable-{task:02d}-{n:04d}-".encode() + os.urandom(8).hex().encode()
            await leader.propose(payload, timeout_s=10.0)
            watch.acknowledged(leader, payload, voters=3)

    async with trio.open_nursery() as nursery:
        for task in range(tasks):
            nursery.start_soon(proposer, task)


async def test_an_acknowledged_proposal_is_on_a_majority_of_disks(tmp_path, watch):
    """At fsync=always every acknowledged entry is on a majority's disks and no answer is ahead of its disk."""
    async with durable_members(tmp_path, watch) as members:
        leader = next(m for m in members if m.is_leader())
        await propose_and_check(leader, watch)
        assert watch.violations == []
        assert min(watch.durable_index.values()) > 1  # the watch saw the syncs of every member


async def test_with_one_follower_down_the_leader_syncs_before_it_counts_itself(tmp_path, watch):
    """With one follower stopped the majority includes the leader: its own entry is on its disk before the answer."""
    async with durable_members(tmp_path, watch) as members:
        leader = next(m for m in members if m.is_leader())
        await members[[m.is_leader() for m in members].index(False)].aclose()
        await propose_and_check(leader, watch)
        assert watch.violations == []


async def test_a_single_member_syncs_its_journal_before_it_answers(tmp_path, watch):
    """A one-member cluster sends no messages, yet its entries are on its disk before a proposal is acknowledged."""
    node = free_node_address()
    settings = SyncObjSettings(password=SECRET, fsync="always")
    async with open_syncobj_log(node, [node], tmp_path / "solo", settings) as member:
        watch.add(member)
        await wait_for(member.is_leader, 20, "the member leads itself")
        for n in range(20):
            payload = f"solo-{n:04d}-".encode() + os.urandom(8).hex().encode()
            await member.propose(payload, timeout_s=10.0)
            watch.acknowledged(member, payload, voters=1)
        assert watch.violations == []


async def test_the_check_notices_a_follower_that_answers_before_it_syncs(tmp_path, watch, monkeypatch):
    """A transport that sends first and syncs after is caught: the test can fail."""
    def send_then_sync(transport, node, message):
        sent = TCPTransport.send(transport, node, message)
        transport.journal_syncer().sync()
        return sent

    monkeypatch.setattr(DurableTransport, "send", send_then_sync)
    async with durable_members(tmp_path, watch) as members:
        leader = next(m for m in members if m.is_leader())
        await propose_and_check(leader, watch, tasks=2, each=5)
        assert any("answered" in v for v in watch.violations)


async def test_the_check_notices_a_leader_that_never_syncs_its_own_entries(tmp_path, watch, monkeypatch):
    """A leader that counts itself without syncing is caught once it needs its own vote for a majority."""
    monkeypatch.setattr(RaftNode, "sync_sent_entries", lambda raft: None)
    async with durable_members(tmp_path, watch) as members:
        leader = next(m for m in members if m.is_leader())
        await members[[m.is_leader() for m in members].index(False)].aclose()
        await propose_and_check(leader, watch, tasks=2, each=5)
        assert any("acknowledged" in v for v in watch.violations)


async def test_a_history_tail_lost_with_the_page_cache_comes_back_from_the_journal(tmp_path):
    """At fsync=always the history is not synced per entry: a tail lost in a crash is rebuilt from the Raft journal."""
    nodes = [free_node_address() for _ in range(3)]
    settings = SyncObjSettings(password=SECRET, fsync="always")
    async with contextlib.AsyncExitStack() as stack:
        members = [await stack.enter_async_context(open_syncobj_log(n, nodes, tmp_path / f"m{i}", settings))
                   for i, n in enumerate(nodes)]
        await wait_for(lambda: any(m.is_leader() for m in members), 20, "a leader elected")
        leader = next(m for m in members if m.is_leader())
        for n in range(300):
            await leader.propose(f"record {n}".encode())
        victim_index = [m.is_leader() for m in members].index(False)
        victim = members[victim_index]
        await wait_for(lambda: victim.head() == leader.head(), 20, "the follower at the leader's head")
        head = leader.head()
        await victim.aclose()
        # What an unsynced tail looks like after a power loss: the segment ends early, mid-frame.
        segment = max((tmp_path / f"m{victim_index}" / "history").glob("*.seg"))
        with open(segment, "r+b") as f:
            f.truncate(segment.stat().st_size // 3 + 7)
        async with open_syncobj_log(nodes[victim_index], nodes, tmp_path / f"m{victim_index}", settings) as back:
            await wait_for(lambda: back.head() == head, 20, "the restarted member back at the head")
            records = list(back._history.read(1, head.seq))
            assert [r.seq for r in records] == list(range(1, head.seq + 1))
            assert records[-1].hash == head.hash
            assert back.history_copies == 0  # rebuilt from its own journal, not copied from a peer
