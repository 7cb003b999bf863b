"""The behaviour every EventLog implementation has: memory, simulated and pysyncobj logs each run this suite.

A subclass provides `open_log(tmp_path)`, an async context manager yielding a
member that accepts proposals (a leader, or a member that forwards to one).
"""

from __future__ import annotations

import contextlib
import random
import socket
from pathlib import Path

import pytest
import trio

from consensus.log import EventLog, LogClosed
from consensus.record import GENESIS_HASH, ChainHead, check_link


def free_node_address() -> str:
    """A 127.0.0.1:PORT whose ports PORT, PORT+1 and PORT+2 are free right now, below the ephemeral range.

    Outside the kernel's ephemeral range, so that no outgoing connection (a
    client, a peer) can take a member's port while the member is down and make
    its restart fail with a bind error.
    """
    low = ephemeral_port_range()[0]
    rng = random.Random()
    for _attempt in range(500):
        port = rng.randrange(10_000, max(low - 3, 10_100))
        sockets = []
        try:
            for offset in range(3):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port + offset))
            return f"127.0.0.1:{port}"
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError(f"no three consecutive free ports on 127.0.0.1 between 10000 and {low}; free some and retry")


def ephemeral_port_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux's default when unreadable)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


async def drain(log: EventLog, after_seq: int, count: int, timeout_s: float = 10.0) -> list:
    """The next `count` committed records after `after_seq`."""
    records = []
    with trio.fail_after(timeout_s):
        async for record in log.committed(after_seq):
            records.append(record)
            if len(records) == count:
                break
    return records


class LogContract:
    """Behaviour shared by every EventLog; subclasses say how to open one."""

    def open_log(self, tmp_path) -> contextlib.AbstractAsyncContextManager[EventLog]:
        raise NotImplementedError

    @pytest.fixture
    async def log(self, tmp_path):
        async with self.open_log(tmp_path) as member:
            yield member

    async def test_a_fresh_log_starts_at_genesis(self, log):
        """A fresh log's head is seq 0 with the genesis hash."""
        assert log.head() == ChainHead(0, GENESIS_HASH)

    async def test_proposals_get_consecutive_seqs(self, log):
        """Each committed proposal gets the next seq, starting at 1."""
        seqs = [await log.propose(f"event {i}".encode()) for i in range(5)]
        assert seqs == [1, 2, 3, 4, 5]

    async def test_head_is_the_last_committed_record(self, log):
        """The head names the seq and hash of the last committed record."""
        seq = await log.propose(b"only")
        await drain(log, 0, 1)
        record = list(log.read(seq, seq))[0]
        assert log.head() == ChainHead(record.seq, record.hash)

    async def test_read_returns_a_chain_of_the_payloads_in_order(self, log):
        """Read returns every payload in commit order, each record chained to the one before."""
        payloads = [f"p{i}".encode() * (i + 1) for i in range(10)]
        for payload in payloads:
            await log.propose(payload)
        await drain(log, 0, 10)
        records = list(log.read())
        assert [r.payload for r in records] == payloads
        previous = None
        for record in records:
            check_link(previous, record)
            previous = record

    async def test_read_honours_the_requested_range(self, log):
        """Read with first and last seq returns exactly that inclusive range."""
        for i in range(8):
            await log.propose(bytes([i]))
        await drain(log, 0, 8)
        assert [r.seq for r in log.read(3, 5)] == [3, 4, 5]
        assert [r.seq for r in log.read(7)] == [7, 8]

    async def test_committed_streams_old_and_new_records_in_order(self, log):
        """The committed stream yields records already there, then ones committed later, in order."""
        await log.propose(b"before")
        seen = []

        async def follow():
            async for record in log.committed(0):
                seen.append(record.payload)
                if len(seen) == 3:
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow)
            await log.propose(b"after 1")
            await log.propose(b"after 2")
        assert seen == [b"before", b"after 1", b"after 2"]

    async def test_committed_starts_after_the_given_seq(self, log):
        """The committed stream starts right after `after_seq`."""
        for i in range(4):
            await log.propose(bytes([i]))
        records = await drain(log, 2, 2)
        assert [r.seq for r in records] == [3, 4]

    async def test_concurrent_proposals_each_commit_once(self, log):
        """Proposals made at the same time each commit exactly once, at the seq they were told."""
        told = {}

        async def propose(i):
            told[i] = await log.propose(f"c{i}".encode())

        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(propose, i)
        await drain(log, 0, 40)
        by_seq = {r.seq: r.payload for r in log.read()}
        assert sorted(told.values()) == list(range(1, 41))
        assert all(by_seq[seq] == f"c{i}".encode() for i, seq in told.items())

    async def test_an_empty_payload_commits(self, log):
        """An empty payload is a valid record."""
        seq = await log.propose(b"")
        await drain(log, 0, 1)
        assert list(log.read(seq, seq))[0].payload == b""

    async def test_the_proposing_member_knows_a_leader(self, log):
        """A member that accepts proposals names a leader."""
        await log.propose(b"x")
        assert log.leader() is not None

    async def test_leadership_changes_start_with_the_current_leadership(self, log):
        """The leadership stream first yields the leadership as it is now."""
        await log.propose(b"x")
        with trio.fail_after(5):
            async for leadership in log.leadership_changes():
                if leadership.leader is not None:
                    break
        assert leadership.leader == log.leader()

    async def test_status_reports_the_commit_seq(self, log):
        """Status reports the member's address and the seq it has committed."""
        await log.propose(b"x")
        await drain(log, 0, 1)
        status = log.status()
        assert status.commit_seq == log.head().seq == 1
        assert status.leader == log.leader()

    async def test_a_snapshot_offered_is_the_latest(self, log):
        """The newest checkpoint offered with set_snapshot is the one latest_snapshot returns."""
        await log.propose(b"x")
        log.set_snapshot(1, b"state at 1")
        assert log.latest_snapshot() == (1, b"state at 1")

    async def test_propose_after_close_raises_log_closed(self, log):
        """Proposing on a closed log raises LogClosed."""
        await log.aclose()
        with pytest.raises(LogClosed):
            await log.propose(b"late")

    async def test_committed_raises_log_closed_when_closed(self, log):
        """A reader waiting on the committed stream gets LogClosed when the log closes."""
        await log.propose(b"x")

        async def follow():
            with pytest.raises(LogClosed):
                async for _record in log.committed(1):
                    pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow)
            await trio.sleep(0.05)
            await log.aclose()

    async def test_a_non_bytes_payload_is_refused(self, log):
        """A payload that is not bytes is refused with TypeError before anything is proposed."""
        with pytest.raises(TypeError):
            await log.propose("text")  # type: ignore[arg-type]
