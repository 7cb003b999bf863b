"""A deterministic simulated multi-member log for tests: a small Raft driven by explicit ticks and one seeded RNG.

`SimCluster(names, seed)` holds every member, the network and the clock.
Nothing happens between calls to `tick()`: messages are delivered after a
delay drawn from the cluster's one `random.Random(seed)`, may be dropped, are
cut by partitions, and crashed members neither send nor receive. Elections,
replication and commits follow Raft (terms, votes, log matching, commit only
of the leader's own term, a no-op on election), so leader changes, lost
leaders and minority partitions behave as they do on the real log. The same
seed and the same sequence of calls give the same run.

`SimCluster.member(name)` is that member's EventLog view. Proposals go to the
leader (others raise NotLeader); a Trio task calling `SimCluster.run()` ticks
the cluster for async callers. Durable state (term, vote, Raft log, committed
records) survives `crash`/`restart`; volatile state does not.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import trio

from consensus.log import Leadership, LogClosed, LogError, LogStatus, NotLeader, OutcomeUnknown, check_proposal
from consensus.read_side import ListLog
from consensus.record import ChainHead, Record, next_record

FOLLOWER, CANDIDATE, LEADER = "follower", "candidate", "leader"


@dataclass(frozen=True)
class SimSettings:
    """Timing of the simulated cluster, in ticks; probabilities per message."""

    election_min_ticks: int = 10
    election_max_ticks: int = 20
    heartbeat_ticks: int = 3
    delay_min_ticks: int = 1
    delay_max_ticks: int = 3
    drop_rate: float = 0.0
    max_entries_per_message: int = 64


@dataclass
class _Entry:
    term: int
    payload: bytes | None  # None is the leader's no-op


@dataclass
class _Node:
    """One member's Raft state: durable (term, vote, log, records) and volatile (the rest)."""

    name: str
    term: int = 0
    voted_for: str | None = None
    log: list[_Entry] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    applied: int = 0
    up: bool = True
    role: str = FOLLOWER
    leader: str | None = None
    commit: int = 0
    votes: set = field(default_factory=set)
    next_index: dict = field(default_factory=dict)
    match_index: dict = field(default_factory=dict)
    election_at: int = 0
    heartbeat_at: int = 0

    def last_term(self) -> int:
        return self.log[-1].term if self.log else 0


class SimCluster:
    """Every simulated member, the network between them and the tick clock."""

    def __init__(self, names: list[str], seed: int, settings: SimSettings | None = None) -> None:
        self.rng = random.Random(seed)
        self.settings = settings or SimSettings()
        self.now = 0
        self.nodes = {name: _Node(name) for name in sorted(names)}
        self._messages: list = []
        self._sequence = itertools.count()
        self._blocked: set[tuple[str, str]] = set()
        self._waiters: dict[tuple[str, int], list] = {}
        self._members: dict[str, SimMember] = {}
        self.trace = hashlib.sha256()
        self._changed = trio.Event()
        for node in self.nodes.values():
            self._reset_election(node)

    # -- faults --------------------------------------------------------------------

    def crash(self, name: str) -> None:
        """Stop a member: it loses its volatile state, its messages in flight are lost."""
        node = self.nodes[name]
        node.up = False
        node.role, node.leader, node.votes = FOLLOWER, None, set()
        self._fail_waiters(name, OutcomeUnknown(f"{name} crashed; the payload may still commit; retry"))
        self._note("crash", name)

    def restart(self, name: str) -> None:
        """Start a crashed member again from its durable state."""
        node = self.nodes[name]
        node.up = True
        node.commit = node.applied
        self._reset_election(node)
        self._note("restart", name)

    def partition(self, *groups: list[str]) -> None:
        """Cut the network between the given groups (members in no group are cut from all)."""
        side = {name: index for index, group in enumerate(groups) for name in group}
        # A member in no group is alone on its side.
        self._blocked = {(a, b) for a in self.nodes for b in self.nodes
                         if a != b and side.get(a, ("alone", a)) != side.get(b, ("alone", b))}
        self._note("partition", repr(sorted(map(sorted, groups))))

    def heal(self) -> None:
        """Remove every partition and stop dropping messages."""
        self._blocked = set()
        self.settings = SimSettings(**{**self.settings.__dict__, "drop_rate": 0.0})
        self._note("heal", "")

    def set_drop_rate(self, rate: float) -> None:
        self.settings = SimSettings(**{**self.settings.__dict__, "drop_rate": rate})

    def inject_random_fault(self) -> None:
        """One fault drawn from the RNG: crash or restart a member, partition, heal, or change the drop rate."""
        names = sorted(self.nodes)
        choice = self.rng.randrange(5)
        name = self.rng.choice(names)
        if choice == 0 and sum(n.up for n in self.nodes.values()) > 1:
            self.crash(name)
        elif choice == 1 and not self.nodes[name].up:
            self.restart(name)
        elif choice == 2:
            cut = self.rng.randrange(1, len(names))
            shuffled = names[:]
            self.rng.shuffle(shuffled)
            self.partition(shuffled[:cut], shuffled[cut:])
        elif choice == 3:
            self.heal()
        else:
            self.set_drop_rate(self.rng.choice((0.0, 0.05, 0.2)))

    # -- the clock ---------------------------------------------------------------------

    def tick(self, count: int = 1) -> None:
        """Advance the simulated clock: deliver due messages, then run each member's timers."""
        for _ in range(count):
            self.now += 1
            while self._messages and self._messages[0][0] <= self.now:
                _at, _n, source, target, message = heapq.heappop(self._messages)
                if self.nodes[target].up and (source, target) not in self._blocked:
                    self._receive(self.nodes[target], source, message)
            for node in self.nodes.values():
                if node.up:
                    self._timers(node)
        self._changed.set()
        self._changed = trio.Event()

    async def run(self, tick_s: float = 0.001) -> None:
        """Tick forever for async callers (each tick yields to Trio)."""
        while True:
            self.tick()
            await trio.sleep(tick_s)

    def leader(self) -> str | None:
        """The member that leads with the highest term, if any is up."""
        leaders = [n for n in self.nodes.values() if n.up and n.role == LEADER]
        return max(leaders, key=lambda n: n.term).name if leaders else None

    def member(self, name: str) -> SimMember:
        if name not in self._members:
            self._members[name] = SimMember(self, name)
        return self._members[name]

    # -- Raft -------------------------------------------------------------------------

    def _reset_election(self, node: _Node) -> None:
        s = self.settings
        node.election_at = self.now + self.rng.randint(s.election_min_ticks, s.election_max_ticks)

    def _note(self, kind: str, detail: str) -> None:
        self.trace.update(f"{self.now}:{kind}:{detail};".encode())

    def _send(self, source: str, target: str, message: dict) -> None:
        if self.rng.random() < self.settings.drop_rate:
            return
        delay = self.rng.randint(self.settings.delay_min_ticks, self.settings.delay_max_ticks)
        heapq.heappush(self._messages, (self.now + delay, next(self._sequence), source, target, message))

    def _majority(self) -> int:
        return len(self.nodes) // 2 + 1

    def _timers(self, node: _Node) -> None:
        if node.role == LEADER:
            if self.now >= node.heartbeat_at:
                self._replicate(node)
        elif self.now >= node.election_at:
            self._campaign(node)

    def _campaign(self, node: _Node) -> None:
        node.term += 1
        node.role, node.voted_for, node.votes, node.leader = CANDIDATE, node.name, {node.name}, None
        self._reset_election(node)
        self._note("campaign", f"{node.name}@{node.term}")
        for other in self.nodes:
            if other != node.name:
                self._send(node.name, other, {"type": "vote", "term": node.term,
                                              "last_index": len(node.log), "last_term": node.last_term()})
        self._maybe_win(node)

    def _maybe_win(self, node: _Node) -> None:
        if node.role == CANDIDATE and len(node.votes) >= self._majority():
            node.role, node.leader = LEADER, node.name
            node.next_index = {n: len(node.log) + 1 for n in self.nodes}
            node.match_index = {n: 0 for n in self.nodes}
            node.log.append(_Entry(node.term, None))
            node.match_index[node.name] = len(node.log)
            self._note("leader", f"{node.name}@{node.term}")
            self._replicate(node)

    def _step_down(self, node: _Node, term: int) -> None:
        if term > node.term:
            node.term, node.voted_for = term, None
        if node.role != FOLLOWER:
            node.role = FOLLOWER
            self._fail_waiters(node.name, OutcomeUnknown(f"{node.name} lost the leadership; the payload may "
                                                         "still commit; retry with the same payload"))

    def _replicate(self, leader: _Node) -> None:
        leader.heartbeat_at = self.now + self.settings.heartbeat_ticks
        for other in self.nodes:
            if other == leader.name:
                continue
            start = leader.next_index[other]
            entries = leader.log[start - 1:start - 1 + self.settings.max_entries_per_message]
            prev_term = leader.log[start - 2].term if start >= 2 else 0
            self._send(leader.name, other, {"type": "append", "term": leader.term, "prev_index": start - 1,
                                            "prev_term": prev_term, "entries": list(entries),
                                            "commit": leader.commit})
        self._advance_commit(leader)

    def _receive(self, node: _Node, source: str, message: dict) -> None:
        if message["term"] > node.term:
            self._step_down(node, message["term"])
            node.leader = None
        handler = getattr(self, "_on_" + message["type"])
        handler(node, source, message)

    def _on_vote(self, node: _Node, source: str, message: dict) -> None:
        up_to_date = (message["last_term"], message["last_index"]) >= (node.last_term(), len(node.log))
        granted = (message["term"] == node.term and up_to_date and node.voted_for in (None, source))
        if granted:
            node.voted_for = source
            self._reset_election(node)
        self._send(node.name, source, {"type": "vote_reply", "term": node.term, "granted": granted})

    def _on_vote_reply(self, node: _Node, source: str, message: dict) -> None:
        if node.role == CANDIDATE and message["term"] == node.term and message["granted"]:
            node.votes.add(source)
            self._maybe_win(node)

    def _on_append(self, node: _Node, source: str, message: dict) -> None:
        if message["term"] < node.term:
            self._send(node.name, source, {"type": "append_reply", "term": node.term, "ok": False, "match": 0})
            return
        if node.role != FOLLOWER:
            self._step_down(node, message["term"])
        node.leader = source
        self._reset_election(node)
        prev = message["prev_index"]
        if prev > len(node.log) or (prev >= 1 and node.log[prev - 1].term != message["prev_term"]):
            self._send(node.name, source, {"type": "append_reply", "term": node.term, "ok": False,
                                           "match": min(prev - 1, len(node.log))})
            return
        for offset, entry in enumerate(message["entries"]):
            index = prev + offset + 1
            if index <= len(node.log) and node.log[index - 1].term != entry.term:
                del node.log[index - 1:]
            if index > len(node.log):
                node.log.append(entry)
        match = prev + len(message["entries"])
        node.commit = max(node.commit, min(message["commit"], match))
        self._apply(node)
        self._send(node.name, source, {"type": "append_reply", "term": node.term, "ok": True, "match": match})

    def _on_append_reply(self, node: _Node, source: str, message: dict) -> None:
        if node.role != LEADER or message["term"] != node.term:
            return
        if message["ok"]:
            node.match_index[source] = max(node.match_index[source], message["match"])
            node.next_index[source] = node.match_index[source] + 1
            self._advance_commit(node)
        else:
            node.next_index[source] = max(1, min(node.next_index[source] - 1, message["match"] + 1))

    def _advance_commit(self, leader: _Node) -> None:
        for index in range(len(leader.log), leader.commit, -1):
            replicated = sum(1 for n in self.nodes if leader.match_index.get(n, 0) >= index)
            if replicated >= self._majority() and leader.log[index - 1].term == leader.term:
                leader.commit = index
                break
        self._apply(leader)

    def _apply(self, node: _Node) -> None:
        while node.applied < node.commit:
            node.applied += 1
            entry = node.log[node.applied - 1]
            if entry.payload is None:
                continue
            head = node.records[-1] if node.records else ChainHead()
            record = next_record(head, entry.payload)
            node.records.append(record)
            self._note("apply", f"{node.name}:{record.seq}:{record.hash.hex()[:16]}")
            for waiter in self._waiters.pop((node.name, node.applied), []):
                waiter.resolve(record.seq if waiter.term == entry.term else None,
                               None if waiter.term == entry.term else NotLeader(node.leader))

    def _fail_waiters(self, name: str, error: LogError) -> None:
        for key in [k for k in self._waiters if k[0] == name]:
            for waiter in self._waiters.pop(key):
                waiter.resolve(None, error)

    def propose_nowait(self, name: str, payload: bytes) -> _SimWaiter:
        """Append a payload on the leader `name`; the returned waiter resolves when it applies there."""
        node = self.nodes[name]
        if not node.up or node.role != LEADER:
            raise NotLeader(self.leader() if node.up else None)
        node.log.append(_Entry(node.term, bytes(payload)))
        node.match_index[node.name] = len(node.log)
        waiter = _SimWaiter(node.term)
        self._waiters.setdefault((name, len(node.log)), []).append(waiter)
        return waiter


@dataclass(eq=False)
class _SimWaiter:
    term: int
    done: trio.Event = field(default_factory=trio.Event)
    seq: int | None = None
    error: LogError | None = None

    def resolve(self, seq: int | None, error: LogError | None) -> None:
        if not self.done.is_set():
            self.seq, self.error = seq, error
            self.done.set()


class SimMember(ListLog):
    """One simulated member's view of the log."""

    def __init__(self, cluster: SimCluster, name: str) -> None:
        self.cluster = cluster
        self.address = name
        self._closed = False

    @property
    def _node(self) -> _Node:
        return self.cluster.nodes[self.address]

    async def propose(self, payload: bytes, timeout_s: float = 5.0) -> int:
        check_proposal(self._closed, payload)
        waiter = self.cluster.propose_nowait(self.address, payload)
        with trio.move_on_after(timeout_s):
            await waiter.done.wait()
        if not waiter.done.is_set():
            raise OutcomeUnknown(f"no answer within {timeout_s} s; retry with the same payload")
        if waiter.error is not None:
            raise waiter.error
        return waiter.seq

    def _record_list(self) -> list[Record]:
        return self._node.records

    def _next_change(self) -> trio.Event:
        return self.cluster._changed

    def leader(self) -> str | None:
        node = self._node
        return None if self._closed or not node.up else node.leader

    def is_leader(self) -> bool:
        return not self._closed and self._node.up and self._node.role == LEADER

    def status(self) -> LogStatus:
        node = self._node
        return LogStatus(self.address, self.leader(), node.term, self.head().seq,
                         voters=tuple(sorted(self.cluster.nodes)), extra={"role": node.role, "up": node.up})

    async def leadership_changes(self) -> AsyncIterator[Leadership]:
        last = None
        while not self._closed:
            changed = self.cluster._changed
            current = Leadership(self.leader(), self._node.term)
            if current != last:
                last = current
                yield current
            await changed.wait()

    async def aclose(self) -> None:
        self._closed = True
        self.cluster._fail_waiters(self.address, LogClosed("the log was closed while the proposal waited"))
        self.cluster._changed.set()
