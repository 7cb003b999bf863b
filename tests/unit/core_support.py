"""A synchronous harness for node cores: one in-memory log that commits every proposal at once, in order.

Every node's core sees every record; node1 leads (term 1) unless told
otherwise. Driver actions run at once on in-memory machines unless a node's
actions are held back (`hold`). Time moves only through `advance`.
"""

from __future__ import annotations

import itertools
from collections import deque

from appliance.core.io import Committed, DriverDone, LeaderCommit, LeadershipChanged, Submitted, Tick, op
from appliance.core.node import NodeCore
from appliance.drivers.base import DriverError
from appliance.drivers.memory import MemoryWorld
from appliance.model.codec import decode, encode
from consensus.record import ChainHead, next_record

START = 1_764_633_600.0


class Harness:
    """Nodes over one log that commits at once; machines that act at once."""

    def __init__(self, names=("node1",), bugs=frozenset(), leader: str = "node1") -> None:
        self.names = list(names)
        self.world = MemoryWorld(self.names)
        self.cores = {name: NodeCore(name, bugs=bugs) for name in self.names}
        self.records: list = []
        self.replies: dict = {}
        self.now = START
        self.held: set[str] = set()
        self.failing: set[str] = set()
        self.refused: set[tuple[str, str]] = set()     # (node, action kind) its driver refuses
        self.acted: list[tuple[str, str]] = []          # (node, action kind) of every action run
        self.acted_args: list[tuple[str, str, dict]] = []   # the same with the action's arguments
        self.waiting: list = []
        self.queue: deque = deque()
        self.tokens = itertools.count(1)
        for name in self.names:
            self.send(name, Tick(self.now))
            self.send(name, LeadershipChanged(leader, 1))
            self.send(name, LeaderCommit(0))

    # --- driving ------------------------------------------------------------------

    def send(self, name: str, message) -> None:
        self.queue.append((name, message))
        self._drain()

    def _drain(self) -> None:
        while self.queue:
            name, message = self.queue.popleft()
            ready = self.cores[name].step(message)
            for proposal in ready.proposals:
                self._commit(encode(proposal.envelope))
            for action in ready.actions:
                if name in self.held:
                    self.waiting.append((name, action))
                else:
                    self._act(name, action)
            for reply in ready.replies:
                self.replies[reply.token] = reply

    def commit_event(self, event, actor: str = "test", reason: str = "") -> None:
        """Commit one event as if a node had proposed it (a report the harness's machines do not make)."""
        from appliance.core.plans import event_id
        from appliance.model.codec import Envelope

        envelope = Envelope(event_id("harness", len(self.records)), event, actor, reason, self.now, 0)
        self._commit(encode(envelope))
        self._drain()

    def _commit(self, payload: bytes) -> None:
        head = self.records[-1] if self.records else ChainHead()
        record = next_record(head, payload)
        self.records.append(record)
        for name in self.names:
            self.queue.append((name, Committed(record.seq, record.payload)))

    def _act(self, name: str, action) -> None:
        host = self.world.hosts[name]
        ok, value, message = True, None, ""
        try:
            self.acted.append((name, action.kind))
            self.acted_args.append((name, action.kind, dict(action.args)))
            if name in self.failing or (name, action.kind) in self.refused:
                raise DriverError("injected failure")
            if action.kind == "list":
                value = dict(host.instances)
            elif action.kind == "disk_list":
                value = sorted(host.disks)
            elif action.kind == "start":
                host.start(action.instance, action.args["spec"])
            elif action.kind == "stop":
                host.stop(action.instance)
            elif action.kind == "migrate":
                host.migrate(action.instance, action.args["target"])
            elif action.kind == "disk_create":
                host.create_disk(action.instance, action.args["index"], action.args["size_mib"])
            elif action.kind == "disk_remove":
                host.remove_disk(action.instance, action.args["index"])
            elif action.kind == "disk_states":
                value = host.disk_states()
            elif action.kind == "disk_set_peer":
                host.set_disk_peer(action.instance, action.args["index"], action.args["peer"], action.args["role"])
            elif action.kind == "disk_resync":
                host.resync_disk(action.instance, action.args["index"], action.args["peer"])
        except DriverError as error:
            ok, message = False, str(error)
        self.queue.append((name, DriverDone(action.id, ok, message, value)))

    def release(self, name: str) -> None:
        """Run the actions held back on a node."""
        self.held.discard(name)
        waiting, self.waiting = self.waiting, []
        for node, action in waiting:
            if node == name:
                self._act(node, action)
            else:
                self.waiting.append((node, action))
        self._drain()

    def advance(self, seconds: float = 1.0, step_s: float = 0.5) -> None:
        """Let time pass, ticking every node."""
        end = self.now + seconds
        while self.now < end:
            self.now += step_s
            for name in self.names:
                self.send(name, LeaderCommit(len(self.records)))
                self.send(name, Tick(self.now))

    def submit(self, *operations: dict, node: str = "node1", request_id: str = "", actor: str = "admin") -> int:
        """Submit a job; return its id (from the reply)."""
        token = next(self.tokens)
        self.send(node, Submitted(token, tuple(operations), actor, "test", request_id))
        reply = self.replies[token]
        assert reply.ok, reply.message
        return reply.value

    def run(self, *operations: dict, seconds: float = 30.0, **kwargs):
        """Submit a job and let time pass until it ends; return the job."""
        job_id = self.submit(*operations, **kwargs)
        self.until(lambda: self.job(job_id).status in ("success", "error", "canceled"), seconds)
        return self.job(job_id)

    def until(self, condition, seconds: float = 30.0) -> None:
        deadline = self.now + seconds
        while not condition():
            assert self.now < deadline, "condition not met in time"
            self.advance(0.5)

    # --- reads ------------------------------------------------------------------------

    @property
    def state(self):
        return self.cores[self.names[0]].state

    def job(self, job_id: int):
        return self.state.jobs[job_id]

    def instance(self, name: str):
        return self.state.instance_by_name(name)

    def events(self, kind: type | None = None) -> list:
        envelopes = [decode(r.payload) for r in self.records]
        return [e for e in envelopes if kind is None or type(e.event) is kind]


def cluster(names=("node1",), bugs=frozenset(), memory_mib: int = 16384) -> Harness:
    """A harness with the cluster initialised and every node added."""
    harness = Harness(names, bugs)
    assert harness.run(op("cluster_init", name="test.example.com", default_hypervisor="fake")).status == "success"
    for name in harness.names:
        job = harness.run(op("node_add", name=name, address=f"{name}:7800", memory_mib=memory_mib,
                             disk_mib=100_000, cpus=8))
        assert job.status == "success", job.error_message
    return harness


def add_instance(harness: Harness, name: str = "web1.example.com", primary: str = "node1", secondary: str = "",
                 start: bool = True, **extra):
    template = "replicated" if secondary else "file"
    job = harness.run(op("instance_add", name=name, primary=primary, secondary=secondary, disk_template=template,
                         os="debian-12", memory_mib=512, disks=(1024,), start=start, **extra))
    assert job.status == "success", job.error_message
    return harness.instance(name)
