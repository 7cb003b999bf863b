"""A realistic synthetic history, built through the real operations, for demos and benchmarks.

One cluster of 50 nodes; thousands of instances are added, started, stopped,
rebooted, migrated, modified, renamed and removed, each as the operation would
do it (checks included: refused actions are simply not recorded), with the
reconcilers' observations and some of the work wrapped in jobs. Everything is
derived from one seed, so the same seed gives the same file.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from appliance.model import events as ev
from appliance.model.codec import Envelope, encode
from appliance.model.errors import PrereqError
from appliance.sandbox import Sandbox
from consensus.record import FileSummary, RecordWriter
from ops import registry

NODES = 50
TARGET_INSTANCES = 3000
RECONCILER = "reconciler"
OPERATORS = ("alice", "bob", "carol")
MEMORY_CHOICES_MIB = (512, 1024, 2048, 4096, 8192)
DISK_CHOICES_MIB = (2048, 5120, 10240, 20480, 51200)
TEMPLATES = ("replicated", "replicated", "file", "diskless")
JOB_FRACTION = 0.1


class Demo:
    """Drives a sandbox through a long, plausible life of a cluster."""

    def __init__(self, seed: int, sink: Callable[[Envelope], None] | None = None) -> None:
        self.box = Sandbox(seed=seed, keep=False, sink=sink)
        self.rng = self.box.rng
        self.count = 0
        self.serial = 0
        self.refused = 0
        self.names: list[str] = []

    # --- set-up ---------------------------------------------------------

    def setup(self) -> None:
        self.box.run("cluster_init", name="demo.example.com", reason="new cluster for the demo")
        for user in OPERATORS:
            self._run("user_add", actor="admin", reason="team member", name=user, role="operator")
        self._run("user_add", actor="admin", reason="node daemons report observations", name=RECONCILER,
                  role="operator")
        for n in range(1, NODES + 1):
            self.box.run("node_add", name=f"node{n:02d}.demo.example.com", address=f"10.0.{n // 250}.{n % 250}:7800",
                         memory_mib=self.rng.choice((65536, 131072, 262144)),
                         disk_mib=self.rng.choice((2_000_000, 4_000_000, 8_000_000)),
                         cpus=self.rng.choice((16, 32, 64)), reason="rack installation")

    # --- the life of instances -------------------------------------------

    def node_names(self) -> list[str]:
        return [node.name for node in self.box.state.nodes.values()]

    def add_instance(self) -> None:
        self.serial += 1
        template = self.rng.choice(TEMPLATES)
        nodes = self.rng.sample(self.node_names(), 2)
        fields = dict(name=f"vm{self.serial:06d}.demo.example.com", primary=nodes[0], disk_template=template,
                      os=self.rng.choice(("debian-12", "ubuntu-24.04", "alpine-3.20")),
                      memory_mib=self.rng.choice(MEMORY_CHOICES_MIB), vcpus=self.rng.randint(1, 4),
                      start=self.rng.random() < 0.9)
        if template != "diskless":
            fields["disks"] = tuple(self.rng.choice(DISK_CHOICES_MIB) for _ in range(self.rng.randint(1, 2)))
        if template == "replicated":
            fields["secondary"] = nodes[1]
        if self._run("instance_add", reason="customer order", **fields) and fields["start"]:
            self.observe(fields["name"], running=True)

    def observe(self, name: str, running: bool) -> None:
        """What the primary's reconciler reports after acting."""
        instance = self.box.state.instance_by_name(name)
        if instance is None:
            return
        cls = ev.InstanceObservedRunning if running else ev.InstanceObservedStopped
        self.box.commit(cls(instance.id, instance.primary), RECONCILER, f"reconciled on {instance.primary}")

    def act_on_instance(self) -> None:
        if not self.names:
            return
        name = self.rng.choice(self.names)
        action = self.rng.choices(
            ("startup", "shutdown", "reboot", "migrate", "modify", "rename", "remove"),
            weights=(20, 20, 10, 15, 15, 3, 12))[0]
        getattr(self, f"_{action}")(name)

    def _startup(self, name: str) -> None:
        if self._run("instance_startup", reason="customer request", instance=name):
            self.observe(name, running=True)

    def _shutdown(self, name: str) -> None:
        if self._run("instance_shutdown", reason="customer request", instance=name):
            self.observe(name, running=False)

    def _reboot(self, name: str) -> None:
        if self._run("instance_reboot", reason="kernel update", instance=name):
            self.observe(name, running=True)

    def _migrate(self, name: str) -> None:
        if self._run("instance_migrate", reason="rebalancing", instance=name):
            self.observe(name, running=True)

    def _modify(self, name: str) -> None:
        change = self.rng.choice(("memory", "vcpus", "disk_add", "disk_grow", "nic_add", "tags"))
        instance = self.box.state.instance_by_name(name)
        if change == "memory":
            self._run("instance_modify", reason="resize", instance=name, memory_mib=self.rng.choice(MEMORY_CHOICES_MIB))
        elif change == "vcpus":
            self._run("instance_modify", reason="resize", instance=name, vcpus=self.rng.randint(1, 4))
        elif change == "disk_add" and instance.disk_template != "diskless":
            self._run("instance_modify", reason="more space", instance=name, disk_add=(self.rng.choice(DISK_CHOICES_MIB),))
        elif change == "disk_grow" and instance.disks:
            self._run("instance_modify", reason="more space", instance=name,
                      disk_grow=((0, instance.disks[0].size_mib + 1024),))
        elif change == "nic_add":
            self._run("instance_modify", reason="second network", instance=name,
                      nic_add=({"mode": "bridged", "link": "br1", "mac": ""},))
        elif change == "tags":
            self._run("tags_add", reason="inventory", kind="instance", target=name,
                      tags=(self.rng.choice(("prod", "staging", "db", "web", "backup")),))

    def _rename(self, name: str) -> None:
        self.serial += 1
        if self._run("instance_shutdown", reason="rename needs it down", instance=name):
            self.observe(name, running=False)
        self._run("instance_rename", reason="customer rename", instance=name,
                  new_name=f"vm{self.serial:06d}r.demo.example.com")

    def _remove(self, name: str) -> None:
        self._run("instance_remove", reason="contract ended", instance=name)

    # --- jobs ---------------------------------------------------------------

    def _run(self, operation: str, actor: str | None = None, reason: str = "", **fields) -> bool:
        """Run an operation if this build has it, sometimes as a job; True when it committed events.

        A refusal is counted, not recorded (except as a failed job).
        """
        if operation not in registry.OPERATIONS:
            return False
        actor = actor or self.rng.choice(OPERATORS)
        as_job = self.box.state.cluster is not None and self.rng.random() < JOB_FRACTION
        job_id = self.box.state.next_job_id
        if as_job:
            self.box.commit(ev.JobSubmitted(({"op": operation, "params": fields},),
                                            f"req-{self.rng.getrandbits(32):08x}"), actor, reason)
        try:
            plan = self.box.plan(operation, actor=actor, **fields)
        except PrereqError as error:
            self.refused += 1
            if as_job:
                self.box.commit(ev.JobFailed(job_id, error.code, error.message), actor, "prerequisites not met")
            return False
        if as_job:
            self.box.commit(ev.JobAdmitted(job_id, tuple(r.as_payload() for r in plan.reservations), plan.macs),
                            actor, "no conflicting claims")
        for index, step in enumerate(plan.steps):
            if as_job:
                self.box.commit(ev.JobProgressed(job_id, 0, index, step.message), actor, reason)
            for event in step.events:
                self.box.commit(event, actor, reason)
        if as_job:
            self.box.commit(ev.JobSucceeded(job_id, plan.result), actor, "done")
        self._track(operation, fields)
        return bool(plan.steps)

    def _track(self, operation: str, fields: dict) -> None:
        """Keep the list of instance names that random picks draw from (the state's map is not indexable)."""
        if operation == "instance_add":
            self.names.append(fields["name"])
        elif operation in ("instance_remove", "instance_rename"):
            position = self.names.index(fields["instance"])
            if operation == "instance_remove":
                self.names[position] = self.names[-1]
                self.names.pop()
            else:
                self.names[position] = fields["new_name"]

    def step(self) -> None:
        self.box.tick(self.rng.uniform(0.5, 30.0))
        instances = len(self.box.state.instances)
        if instances < TARGET_INSTANCES and self.rng.random() < 0.6:
            self.add_instance()
        else:
            self.act_on_instance()


def write_demo(path: str | os.PathLike, events: int, seed: int = 1,
               progress: Callable[[int], None] | None = None) -> FileSummary:
    """Write a demo history of at least `events` events (it stops at the first step past the count)."""
    if os.path.exists(path):
        os.unlink(path)
    writer = RecordWriter(path)

    def sink(envelope: Envelope) -> None:
        writer.append_payload(encode(envelope))

    demo = Demo(seed, sink)
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
