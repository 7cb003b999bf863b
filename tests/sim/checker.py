"""The simulator's invariants, checked after every commit and every machine change.

- Every node holds the same record at the same seq, and nodes at the same seq
  have the same state digest (checked every DIGEST_EVERY seqs and at the end).
- No instance runs on two machines at once.
- Every acknowledged job reaches exactly one end state.
- No step's events are applied twice, and a job applies only events of the
  plan it committed (a re-planned job would apply others).
- Reservations and instances never take more memory or disk than a node has.
- A fence proof commits only once the fenced node's machine runs no instance
  (its watchdog killed them, or it lost power), so a recovered copy never
  starts while the old one still runs.
- A recovery fails an instance over only to a copy whose committed disk state
  is UPTODATE, and that copy really holds every acknowledged write.
- Once faults heal, every node returns (the healer brings back a node fenced
  by its lease) and every replicated instance whose two nodes are online has
  its secondary copy UPTODATE again within N_PLUS_ONE_S.
"""

from __future__ import annotations

from collections import Counter

from appliance.core.plans import decode_steps
from appliance.model import events as ev
from appliance.model import replay
from appliance.model.codec import decode
from appliance.model.state import ClusterState

DIGEST_EVERY = 100
N_PLUS_ONE_S = 60.0
HEALER = "cairn-healer"
JOB_EVENTS = (ev.JobSubmitted, ev.JobAdmitted, ev.JobOperationPlanned, ev.JobProgressed, ev.JobSucceeded,
              ev.JobFailed, ev.JobCanceled, ev.JobCancelRequested)
END_EVENTS = (ev.JobSucceeded, ev.JobFailed, ev.JobCanceled)
CAPACITY_EVENTS = (ev.InstanceAdded, ev.InstanceMigrated, ev.InstanceFailedOver, ev.JobOperationPlanned,
                   ev.InstanceModified, ev.InstanceDiskAdded, ev.InstanceDiskGrown)


class Violation(AssertionError):
    """An invariant did not hold."""


class Checker:
    """Folds the committed log once more, as a reference, and checks every node and machine against it."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.records: list = []
        self.state = ClusterState()
        self.digests: dict[int, str] = {}
        self.used: Counter = Counter()
        self.ends: Counter = Counter()
        self.acked: set[int] = set()
        self.keys: dict[bytes, tuple] = {}
        self.sim = None
        self.died_at: dict[str, float] = {}
        self.fences = self.recoveries = self.returns = 0
        self.healed_at: float | None = None
        self.degraded_since: dict[str, float] = {}

    def attach(self, sim) -> None:
        """The simulation whose machines and disks the fencing invariants look at."""
        self.sim = sim

    def died(self, name: str, now: float) -> None:
        """Every instance of this machine died now (a power loss or its watchdog)."""
        self.died_at[name] = now

    # --- the log ----------------------------------------------------------------

    def proposed(self, proposal) -> None:
        self.keys[proposal.envelope.event_id] = proposal.key

    def record(self, name: str, record) -> None:
        """A node applies a record: it must be the record every other node has at that seq."""
        if record.seq <= len(self.records):
            if self.records[record.seq - 1].hash != record.hash:
                raise Violation(f"{name} has another record at seq {record.seq} than the others")
            return
        if record.seq != len(self.records) + 1:
            raise Violation(f"{name} applied seq {record.seq} after {len(self.records)}")
        self.records.append(record)
        self._apply(record)

    def _apply(self, record) -> None:
        envelope = decode(record.payload, record.seq)
        effective = envelope.event_id not in self.state.recent_events
        before = self.state
        self.state = replay.apply(self.state, envelope, record.seq)
        if not effective:
            return
        event = envelope.event
        if isinstance(event, END_EVENTS):
            self.ends[event.job] += 1
            if self.ends[event.job] > 1:
                raise Violation(f"job {event.job} ended twice (again with {type(event).__name__} at {record.seq})")
        elif envelope.job and not isinstance(event, (*JOB_EVENTS, ev.LeaderElected)):
            self._in_plan(before, envelope, record.seq)
        if isinstance(event, ev.NodeFenced):
            self._fenced(before, event, record.seq)
        elif isinstance(event, (ev.InstanceFailedOver, ev.InstanceRecovered)):
            self._recovered(before, envelope, record.seq)
        elif isinstance(event, ev.NodeModified) and event.offline is False and self._job_is(before, envelope,
                                                                                          "node_modify", HEALER):
            self.returns += 1
        if isinstance(event, CAPACITY_EVENTS):
            self._capacity(record.seq, with_reservations=isinstance(event, ev.JobOperationPlanned))
        if record.seq % DIGEST_EVERY == 0:
            self.digests[record.seq] = self.state.digest()

    def _in_plan(self, before: ClusterState, envelope, seq: int) -> None:
        """A job's event must be one its committed plan holds, applied no more often than the plan has it."""
        job = before.jobs.get(envelope.job)
        event = envelope.event
        if job is None or job.planned < 0:
            raise Violation(f"seq {seq}: {type(event).__name__} of job {envelope.job}, which has no plan")
        allowed = Counter()
        for number, step in enumerate(decode_steps(job.plan)):
            # A step whose wait says "retry" may run once more after each time it was marked done.
            retries = any(w.on_timeout == "retry" for w in step.waits)
            runs = 1 + (sum(1 for p in job.progress if tuple(p) == (job.operation_index, number)) if retries else 0)
            for planned in step.events:
                allowed[repr(planned)] += runs
            allowed.update(repr(e) for e in step.compensation)
        key = (job.id, job.operation_index, repr(event))
        self.used[key] += 1
        if self.used[key] > allowed[repr(event)]:
            what = "is not in its committed plan" if not allowed[repr(event)] else "was applied twice"
            raise Violation(f"seq {seq}: {type(event).__name__} of job {job.id} {what} "
                            f"(proposed as {self.keys.get(envelope.event_id)})")

    @staticmethod
    def _job_is(state: ClusterState, envelope, operation: str, actor: str = "") -> bool:
        job = state.jobs.get(envelope.job)
        if job is None or job.operation_index >= len(job.operations):
            return False
        return job.operations[job.operation_index]["op"] == operation and (not actor or job.actor == actor)

    def _fenced(self, before: ClusterState, event, seq: int) -> None:
        """A fence proof says the node's instances are dead: its machine must run none."""
        node = before.nodes.get(event.node)
        if node is None or self.sim is None:
            return
        self.fences += 1
        running = sorted(self.sim.world.hosts[node.name].running())
        if running:
            raise Violation(f"seq {seq}: node {node.name} fenced (proof {event.proof}) while its machine still "
                            f"runs {', '.join(running)}")

    def _recovered(self, before: ClusterState, envelope, seq: int) -> None:
        """A recovery places an instance only on a copy the log calls UPTODATE, and that copy is current."""
        if not self._job_is(before, envelope, "instance_recover"):
            return
        event = envelope.event
        instance = before.instances.get(event.instance)
        if instance is None or instance.primary == event.primary:
            return
        self.recoveries += 1
        if not isinstance(event, ev.InstanceFailedOver) or self.sim is None:
            return
        name = before.nodes[event.primary].name
        states = {disk: state for disk, node, state, _ in instance.disk_states if node == event.primary}
        stale = [index for index in range(len(instance.disks)) if states.get(index) != "UPTODATE"]
        if stale:
            raise Violation(f"seq {seq}: recovery failed {instance.name} over to {name}, whose copy of disk(s) "
                            f"{stale} is not UPTODATE in the state ({instance.disk_states})")
        if not self.sim.disks.current(instance.id, name):
            raise Violation(f"seq {seq}: recovery failed {instance.name} over to {name}, whose copy misses "
                            f"acknowledged writes although the state calls it UPTODATE")

    def _capacity(self, seq: int, with_reservations: bool) -> None:
        """No node holds more than it has; right after a plan commits, counting what running jobs reserve.

        A reservation and the instance it is for are both counted between the
        step that places the instance and the job's end, so reservations are
        counted only where they are taken.
        """
        state = self.state
        for node_id, node in state.nodes.items():
            usage = state.usage.get(node_id)
            if usage is None or not node.memory_mib:
                continue
            memory, disk = state.reserved(node_id) if with_reservations else (0, 0)
            if usage.memory_mib + memory > node.memory_mib or usage.disk_mib + disk > node.disk_mib:
                raise Violation(f"seq {seq}: node {node.name} is committed past its capacity: memory "
                                f"{usage.memory_mib}+{memory} of {node.memory_mib} MiB, disk "
                                f"{usage.disk_mib}+{disk} of {node.disk_mib} MiB")

    def after_apply(self, name: str, state: ClusterState) -> None:
        """A node's state after a record: at a sampled seq its digest must equal the reference's."""
        expected = self.digests.get(state.seq)
        if expected is not None and state.digest() != expected:
            raise Violation(f"{name} has another state digest than the reference at seq {state.seq}")

    # --- jobs -----------------------------------------------------------------------

    def acknowledged(self, job_id: int) -> None:
        self.acked.add(job_id)

    def all_ended(self) -> bool:
        return self.state.cluster is not None and not self.state.active_jobs

    def nodes_known(self, count: int) -> bool:
        return len(self.state.nodes) == count

    # --- machines ---------------------------------------------------------------------

    def machines(self, world, now: float) -> None:
        """No instance runs on two machines."""
        seen: dict[str, str] = {}
        for host in world.hosts.values():
            for instance_id in host.running():
                if instance_id in seen:
                    raise Violation(f"instance {instance_id} runs on {seen[instance_id]} and {host.name} at once")
                seen[instance_id] = host.name

    # --- the end ------------------------------------------------------------------------

    def converged(self, sim) -> bool:
        return self.why_not_converged(sim) is None

    def why_not_converged(self, sim) -> str | None:
        state = self.state
        if state.active_jobs:
            return f"jobs still active: {sorted(state.active_jobs)[:10]}"
        for name in sim.names:
            core = sim.cores[name]
            if core is None:
                return f"{name} is down"
            if core.state.seq != len(self.records):
                return f"{name} is at seq {core.state.seq}, the log at {len(self.records)}"
        for node in state.nodes.values():
            if node.offline or node.fenced:
                return f"node {node.name} has not come back (offline {node.offline}, fenced {node.fenced})"
        lacking = self.n_plus_one(sim)
        if lacking:
            return lacking
        for instance in state.instances.values():
            running = [host.name for host in sim.world.hosts.values() if instance.id in host.running()]
            primary = state.nodes[instance.primary].name
            wanted = (instance.admin_state == "up" and instance.observed_state not in ("user_down", "error")
                      and not state.nodes[instance.primary].offline)
            if running != ([primary] if wanted else []):
                return f"instance {instance.name} runs on {running}, should on {[primary] if wanted else []}"
            if wanted and (instance.observed_state, instance.observed_node) != ("running", instance.primary):
                return f"instance {instance.name} is not yet seen running on {primary}"
        return None

    def n_plus_one(self, sim) -> str | None:
        """The first replicated instance whose secondary copy is not UPTODATE (in the state, and really equal),
        though both its nodes are online; after N_PLUS_ONE_S of that, a violation."""
        state, lacking = self.state, None
        for instance in sorted(state.instances.values(), key=lambda i: i.id):
            if instance.disk_template != "replicated" or instance.secondary not in state.nodes:
                continue
            primary, secondary = state.nodes[instance.primary], state.nodes[instance.secondary]
            if primary.offline or secondary.offline:
                self.degraded_since.pop(instance.id, None)
                continue
            states = {disk: s for disk, node, s, _ in instance.disk_states if node == secondary.id}
            equal = sim.disks.copy(instance.id, primary.name) == sim.disks.copy(instance.id, secondary.name)
            if equal and all(states.get(i) == "UPTODATE" for i in range(len(instance.disks))):
                self.degraded_since.pop(instance.id, None)
                continue
            since = self.degraded_since.setdefault(instance.id, sim.now)
            if sim.now - since > N_PLUS_ONE_S:
                raise Violation(f"instance {instance.name}'s copy on {secondary.name} is still not UPTODATE "
                                f"{N_PLUS_ONE_S:g} s after both its nodes were online and faults had healed "
                                f"({instance.disk_states})")
            lacking = lacking or f"instance {instance.name} has no UPTODATE copy on {secondary.name} yet"
        return lacking

    def final(self, sim) -> None:
        """Every acknowledged job ended exactly once, and every node has the reference digest."""
        for job_id in sorted(self.acked):
            if self.ends[job_id] != 1 and job_id in self.state.jobs:
                raise Violation(f"acknowledged job {job_id} ended {self.ends[job_id]} times")
        digest = self.state.digest()
        for name in sim.names:
            if sim.cores[name].state.digest() != digest:
                raise Violation(f"{name} ends with another state digest than the reference")
