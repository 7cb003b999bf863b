"""A realistic synthetic history, built as jobs through the real job engine, for demos and benchmarks.

One cluster of 50 nodes; thousands of instances are added, started, stopped,
rebooted, migrated, modified, renamed and removed. Every action is a job
submitted to the leader's NodeCore over an in-process log
(`appliance.sandbox.InProcessCluster`): the engine admits it, plans each
operation, commits its steps and waits, and a refused operation ends as a
failed job. The sandbox's Observer answers the waits as the nodes'
reconcilers would. Operators submit a few jobs at a time, so jobs overlap in
the log. Everything is derived from one seed, so the same seed gives the
same file.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable

from appliance.core.io import op
from appliance.model import events as ev
from appliance.model.codec import Envelope
from appliance.sandbox import InProcessCluster
from consensus.record import FileSummary, RecordWriter
from ops import registry

NODES = 50
TARGET_INSTANCES = 3000
DOMAIN = "demo.example.com"
LEADER = f"node01.{DOMAIN}"
RECONCILER = "reconciler"
OPERATORS = ("alice", "bob", "carol")
MEMORY_CHOICES_MIB = (512, 1024, 2048, 4096, 8192)
DISK_CHOICES_MIB = (2048, 5120, 10240, 20480, 51200)
TEMPLATES = ("replicated", "replicated", "file", "diskless")
# How many jobs operators submit together in one step of the demo.
BURST = (1, 1, 2, 3, 4)


class Demo:
    """Drives an in-process cluster through a long, plausible life, one burst of jobs per step.

    `sink` sees every committed envelope; `record(seq, payload)` every committed record, encoded.
    """

    def __init__(self, seed: int, sink: Callable[[Envelope], None] | None = None,
                 record: Callable[[int, bytes], None] | None = None) -> None:
        self.rng = random.Random(seed)
        self.sink, self.record = sink, record
        self.serial = 0
        self.names: list[str] = []           # instance names that random picks draw from (committed ones)
        self.ids: list[str] = []             # the instance id of each name
        self.positions: dict[str, int] = {}  # instance id -> index in names
        self.cluster = InProcessCluster(LEADER, on_commit=self._committed)

    @property
    def state(self):
        return self.cluster.state

    # --- set-up ---------------------------------------------------------

    def setup(self) -> None:
        self.submit((op("cluster_init", name=DOMAIN),), "admin", "new cluster for the demo")
        self.cluster.settle()
        for user in OPERATORS:
            self.submit((op("user_add", name=user, role="operator"),), "admin", "team member")
        self.submit((op("user_add", name=RECONCILER, role="operator"),), "admin", "node daemons report observations")
        for n in range(1, NODES + 1):
            self.submit((op("node_add", name=f"node{n:02d}.{DOMAIN}", address=f"10.0.{n // 250}.{n % 250}:7800",
                            memory_mib=self.rng.choice((65536, 131072, 262144)),
                            disk_mib=self.rng.choice((2_000_000, 4_000_000, 8_000_000)),
                            cpus=self.rng.choice((16, 32, 64))),), "admin", "rack installation")
        self.cluster.settle()

    def step(self) -> None:
        """Time passes, operators submit a few jobs, and the cluster runs them to their end."""
        self.cluster.tick(self.rng.uniform(0.5, 30.0))
        for _ in range(self.rng.choice(BURST)):
            if len(self.state.instances) < TARGET_INSTANCES and self.rng.random() < 0.6:
                self.add_instance()
            else:
                self.act_on_instance()
        self.cluster.settle()

    def submit(self, operations: tuple, actor: str | None = None, reason: str = "") -> None:
        """Submit one job (if this build has its operations), as an operator would."""
        if any(entry["op"] not in registry.OPERATIONS for entry in operations):
            return
        actor = actor or self.rng.choice(OPERATORS)
        self.cluster.submit(operations, actor, reason, f"req-{self.rng.getrandbits(32):08x}")

    # --- the life of instances -------------------------------------------

    def add_instance(self) -> None:
        self.serial += 1
        template = self.rng.choice(TEMPLATES)
        nodes = self.rng.sample(range(1, NODES + 1), 2)
        fields = dict(name=f"vm{self.serial:06d}.{DOMAIN}", primary=f"node{nodes[0]:02d}.{DOMAIN}",
                      disk_template=template, os=self.rng.choice(("debian-12", "ubuntu-24.04", "alpine-3.20")),
                      memory_mib=self.rng.choice(MEMORY_CHOICES_MIB), vcpus=self.rng.randint(1, 4),
                      start=self.rng.random() < 0.9)
        if template != "diskless":
            fields["disks"] = tuple(self.rng.choice(DISK_CHOICES_MIB) for _ in range(self.rng.randint(1, 2)))
        if template == "replicated":
            fields["secondary"] = f"node{nodes[1]:02d}.{DOMAIN}"
        self.submit((op("instance_add", **fields),), reason="customer order")

    def act_on_instance(self) -> None:
        if not self.names:
            return
        name = self.rng.choice(self.names)
        action = self.rng.choices(
            ("startup", "shutdown", "reboot", "migrate", "modify", "rename", "remove"),
            weights=(20, 20, 10, 15, 15, 3, 12))[0]
        if action == "modify":
            self._modify(name)
        elif action == "rename":
            self.serial += 1
            self.submit((op("instance_shutdown", instance=name),
                         op("instance_rename", instance=name, new_name=f"vm{self.serial:06d}r.{DOMAIN}")),
                        reason="customer rename")
        else:
            reason = {"startup": "customer request", "shutdown": "customer request", "reboot": "kernel update",
                      "migrate": "rebalancing", "remove": "contract ended"}[action]
            self.submit((op(f"instance_{action}", instance=name),), reason=reason)

    def _modify(self, name: str) -> None:
        change = self.rng.choice(("memory", "vcpus", "disk_add", "disk_grow", "nic_add", "tags"))
        instance = self.state.instance_by_name(name)
        if change == "memory":
            self.submit((op("instance_modify", instance=name, memory_mib=self.rng.choice(MEMORY_CHOICES_MIB)),),
                        reason="resize")
        elif change == "vcpus":
            self.submit((op("instance_modify", instance=name, vcpus=self.rng.randint(1, 4)),), reason="resize")
        elif change == "disk_add" and instance.disk_template != "diskless":
            self.submit((op("instance_modify", instance=name, disk_add=(self.rng.choice(DISK_CHOICES_MIB),)),),
                        reason="more space")
        elif change == "disk_grow" and instance.disks:
            self.submit((op("instance_modify", instance=name, disk_grow=((0, instance.disks[0].size_mib + 1024),)),),
                        reason="more space")
        elif change == "nic_add":
            self.submit((op("instance_modify", instance=name, nic_add=({"mode": "bridged", "link": "br1", "mac": ""},)),),
                        reason="second network")
        elif change == "tags":
            self.submit((op("tags_add", kind="instance", target=name,
                            tags=(self.rng.choice(("prod", "staging", "db", "web", "backup")),)),), reason="inventory")

    # --- the committed stream ----------------------------------------------

    def _committed(self, seq: int, payload: bytes, envelope: Envelope) -> None:
        if self.record is not None:
            self.record(seq, payload)
        if self.sink is not None:
            self.sink(envelope)
        event = envelope.event
        kind = type(event)
        if kind is ev.InstanceAdded and event.instance not in self.positions:
            self.positions[event.instance] = len(self.names)
            self.names.append(event.name)
            self.ids.append(event.instance)
        elif kind is ev.InstanceRenamed and event.instance in self.positions:
            self.names[self.positions[event.instance]] = event.name
        elif kind is ev.InstanceRemoved and event.instance in self.positions:
            self._forget(event.instance)

    def _forget(self, instance_id: str) -> None:
        """Drop a removed instance from the picks: the last name takes its place."""
        position = self.positions.pop(instance_id)
        last_name, last_id = self.names.pop(), self.ids.pop()
        if position < len(self.names):
            self.names[position], self.ids[position] = last_name, last_id
            self.positions[last_id] = position


def write_demo(path: str | os.PathLike, events: int, seed: int = 1,
               progress: Callable[[int], None] | None = None) -> FileSummary:
    """Write a demo history of at least `events` events (it stops at the first step past the count)."""
    if os.path.exists(path):
        os.unlink(path)
    writer = RecordWriter(path)

    def record(seq: int, payload: bytes) -> None:
        written = writer.append_payload(payload)
        if written.seq != seq:
            raise AssertionError(f"the event file numbers record {written.seq} where the log committed {seq}")

    demo = Demo(seed, record=record)
    demo.setup()
    report_every = max(events // 20, 1)
    while writer.count < events:
        before = writer.count
        demo.step()
        if progress is not None and writer.count // report_every != before // report_every:
            progress(writer.count)
    head = writer.head
    seal = writer.seal()
    return FileSummary(seal.count, seal.first_seq, head.seq, head.hash, True)
