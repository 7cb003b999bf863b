"""The seeded whole-cluster simulator: N real node cores on the simulated Raft log, with in-memory machines.

Everything is derived from one `random.Random(seed)`: the log's timing and
faults, driver latencies and failures, the operators' workload. The daemon's
lease code and each machine's watchdog run in `leases.py`, the replicated
disks and their reports in `disks.py`. Phase one runs jobs while faults land
(a leader's or another daemon's crash, a machine's power loss, partitions,
lost messages, proposals whose outcome is unknown, failing and hanging
drivers, guest crashes and shutdowns, clock jumps), nodes whose leases lapse
are fenced and their instances recovered by the leader's healer, and the
invariants are checked after every commit and every machine change. Phase two
heals everything and requires every job to end, every node to converge and
return, and every replicated instance to have its second copy again. The same
seed gives the same run.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field

from appliance.core.io import Committed, DriverDone, LeadershipChanged, ProposalLost, Ready, Submitted, Tick
from appliance.core.node import NodeCore
from appliance.drivers.base import DriverError
from appliance.drivers.memory import MemoryWorld
from consensus.log import NotLeader
from consensus.sim_log import LEADER, SimCluster
from tests.sim import faults
from tests.sim.checker import Checker, Violation
from tests.sim.disks import Disks
from tests.sim.leases import Leases

TICK_S = 0.05
START = 1_764_633_600.0
ADMIN = "admin"


@dataclass(frozen=True)
class Config:
    """The shape of one run; every seed runs at least 3 nodes, 50 jobs and 3 faults."""

    nodes: int = 3
    jobs: int = 60
    faults: int = 4
    bugs: frozenset = frozenset()
    phase_one_s: float = 90.0
    phase_two_s: float = 600.0


@dataclass
class Outcome:
    """What one seed did."""

    seed: int
    ok: bool
    jobs: int
    faults: int
    commits: int
    sim_seconds: float
    violation: str = ""
    fault_log: list = field(default_factory=list)
    fences: int = 0          # fence proofs recorded by the healer (lease) and by the operator
    recoveries: int = 0      # instances the healer's jobs placed on another node
    returns: int = 0         # fenced nodes brought back by the healer
    kills: int = 0           # watchdogs that fired


class Simulation:
    """One seeded run of a whole cluster."""

    def __init__(self, seed: int, config: Config = Config()) -> None:
        self.seed, self.config = seed, config
        self.rng = random.Random(seed)
        self.names = [f"node{i}" for i in range(1, config.nodes + 1)]
        self.log = SimCluster(self.names, seed=self.rng.getrandbits(32))
        self.world = MemoryWorld(self.names)
        self.cores: dict[str, NodeCore | None] = {name: self._new_core(name) for name in self.names}
        self.incarnation = {name: 0 for name in self.names}
        self.fed = {name: 0 for name in self.names}
        self.told = {name: None for name in self.names}
        self.wake = {name: 0.0 for name in self.names}
        self.offset = {name: 0.0 for name in self.names}
        self.failing: dict[str, float] = {}
        self.hanging: set[str] = set()
        self.hung: list = []
        self.now = START
        self.events: list = []
        self.order = itertools.count()
        self.waiters: list = []
        self.checker = Checker(self.names)
        self.tokens = itertools.count(1)
        self.requests: list[tuple[str, tuple]] = []
        self.submitted = 0
        self.faults: list[str] = []
        self.powered_off: set[str] = set()
        self.fenced: set[str] = set()
        self.fences: dict[str, str] = {}
        self.paused: set[str] = set()
        self.story: list[str] = []
        self.leases = Leases(self)
        self.disks = Disks(self)
        self.checker.attach(self)

    def _new_core(self, name: str) -> NodeCore:
        return NodeCore(name, bugs=self.config.bugs)

    # --- the loop -----------------------------------------------------------------

    def run(self) -> Outcome:
        try:
            self._bootstrap()
            self._phase_one()
            self._phase_two()
        except Violation as violation:
            return self._outcome(False, str(violation))
        return self._outcome(True)

    def _outcome(self, ok: bool, violation: str = "") -> Outcome:
        checker = self.checker
        return Outcome(self.seed, ok, self.submitted, len(self.faults), len(checker.records),
                       round(self.now - START, 2), violation, list(self.story), checker.fences, checker.recoveries,
                       checker.returns, self.leases.kills)

    def note(self, text: str) -> None:
        """A line of the run's story (printed with --seed): faults and what the cluster did about them."""
        self.story.append(f"{self.now - START:.2f}s {text}")

    def tick(self) -> None:
        """One tick of the whole world: the log, every node's inputs, the machines, the checks."""
        self.log.tick()
        self.now += TICK_S
        while self.events and self.events[0][0] <= self.now:
            _at, _order, kind, data = heapq.heappop(self.events)
            getattr(self, f"_on_{kind}")(*data)
        self._resolve_waiters()
        for name in self.names:
            core = self.cores[name]
            if core is None or name in self.paused:
                continue
            self._feed(name, core)
            if self.now >= self.wake[name]:
                self._step(name, Tick(self.now + self.offset[name]))
        self.leases.tick()
        self.disks.tick()

    def _feed(self, name: str, core: NodeCore) -> None:
        member = self.log.nodes[name]
        seen = (name if member.role == LEADER else member.leader, member.term)
        if seen != self.told[name]:
            self.told[name] = seen
            self._step(name, LeadershipChanged(*seen))
        records = member.records
        while self.fed[name] < len(records):
            record = records[self.fed[name]]
            self.fed[name] += 1
            self.checker.record(name, record)
            self._step(name, Committed(record.seq, record.payload))
            self.checker.after_apply(name, core.state)

    def _step(self, name: str, message) -> None:
        core = self.cores[name]
        if core is None:
            return
        ready = core.step(message)
        self._perform(name, ready)

    def _perform(self, name: str, ready: Ready) -> None:
        for proposal in ready.proposals:
            self._propose(name, proposal)
        for action in ready.actions:
            self._schedule_action(name, action)
        for reply in ready.replies:
            if reply.ok and isinstance(reply.value, int):
                self.checker.acknowledged(reply.value)
        wake = ready.wake_at - self.offset[name] if ready.wake_at is not None else self.now + 1.0
        self.wake[name] = min(wake, self.now + 1.0)

    # --- the log and the network ---------------------------------------------------

    def cut(self, a: str, b: str) -> bool:
        """True while a partition separates the two nodes (either way)."""
        blocked = self.log._blocked
        return (a, b) in blocked or (b, a) in blocked

    def delivered(self, source: str, target: str) -> bool:
        """Whether a message sent now gets through: no partition between, and not one of the lost ones."""
        return not self.cut(source, target) and self.rng.random() >= self.log.settings.drop_rate

    def _on_lease_request(self, *data) -> None:
        self.leases.on_request(*data)

    def _on_lease_grant(self, *data) -> None:
        self.leases.on_grant(*data)

    def _propose(self, name: str, proposal) -> None:
        """Forward a proposal to the leader, as pysyncobj does; lost when the network says so."""
        eid = proposal.envelope.event_id
        leader = self.log.leader()
        blocked = leader is not None and leader != name and (name, leader) in self.log._blocked
        if leader is None or blocked or self.rng.random() < self.log.settings.drop_rate:
            self._later(self.rng.uniform(0.05, 0.5), "lost", name, eid)
            return
        from appliance.model.codec import encode

        try:
            waiter = self.log.propose_nowait(leader, encode(proposal.envelope))
        except NotLeader:
            self._later(0.05, "lost", name, eid)
            return
        self.checker.proposed(proposal)
        self.waiters.append((name, eid, waiter))

    def _resolve_waiters(self) -> None:
        still = []
        for name, eid, waiter in self.waiters:
            if waiter.done.is_set():
                if waiter.error is not None:
                    self._on_lost(name, eid)
            else:
                still.append((name, eid, waiter))
        self.waiters = still

    def _on_lost(self, name: str, eid: bytes) -> None:
        self._step(name, ProposalLost(eid))

    def _later(self, delay_s: float, kind: str, *data) -> None:
        heapq.heappush(self.events, (self.now + delay_s, next(self.order), kind, data))

    # --- machines ---------------------------------------------------------------------

    def _schedule_action(self, name: str, action) -> None:
        if name in self.hanging and action.kind != "list" and self.rng.random() < 0.5:
            self.hung.append((name, self.incarnation[name], action))
            return
        latency = self.rng.uniform(0.5, 3.0) if action.kind == "migrate" else self.rng.uniform(0.02, 0.6)
        self._later(latency, "action", name, self.incarnation[name], action)

    def _on_action(self, name: str, incarnation: int, action, forced_fail: bool = False) -> None:
        host = self.world.hosts[name]
        ok, message, value = True, "", None
        try:
            if forced_fail or self.rng.random() < self.failing.get(name, 0.0):
                raise DriverError(f"injected driver failure on {name}")
            value = self._perform_action(name, host, action)
        except DriverError as error:
            ok, message = False, str(error)
        self.checker.machines(self.world, self.now)
        if incarnation == self.incarnation[name] and name not in self.paused:
            self._step(name, DriverDone(action.id, ok, message, value))

    def _perform_action(self, name: str, host, action):
        kind, instance = action.kind, action.instance
        if kind == "list":
            host._powered()
            return dict(host.instances)
        if kind == "disk_list":
            host._powered()
            return sorted(host.disks)
        if kind == "start":
            host.start(instance, action.args["spec"])
        elif kind == "stop":
            host.stop(instance)
        elif kind == "migrate":
            target = action.args["target"]
            if (name, target) in self.log._blocked:
                raise DriverError(f"{target} cannot be reached from {name}")
            host.migrate(instance, target)
        elif kind == "disk_create":
            host.create_disk(instance, action.args["index"], action.args["size_mib"])
        elif kind == "disk_remove":
            host.remove_disk(instance, action.args["index"])
        return None

    def machine_cleared(self, name: str, what: str) -> None:
        """Every instance of a machine died at once (a power loss, its watchdog): check, and tell the story."""
        self.checker.machines(self.world, self.now)
        self.checker.died(name, self.now)
        self.note(f"{name}: {what}")

    # --- workload -----------------------------------------------------------------------

    def submit(self, operations: tuple, node: str | None = None, request_id: str = "") -> None:
        live = [n for n in self.names if self.cores[n] is not None]
        if not live:
            return
        name = node if node in live else self.rng.choice(live)
        self.submitted += 1
        self._step(name, Submitted(next(self.tokens), operations, ADMIN, "simulated operator", request_id))

    def _bootstrap(self) -> None:
        from tests.sim import workload

        workload.initialise(self)
        self.run_until(lambda: self.checker.all_ended(), 120.0, "the cluster to be initialised")
        workload.add_nodes(self)
        self.run_until(lambda: self.checker.all_ended() and self.checker.nodes_known(len(self.names)), 120.0,
                       "every node to be added")

    def _phase_one(self) -> None:
        from tests.sim import workload

        end = self.now + self.config.phase_one_s
        plan = workload.schedule(self, end)
        while self.now < end or plan:
            while plan and plan[0][0] <= self.now:
                _at, _order, action = heapq.heappop(plan)
                action()
            self.tick()

    def _phase_two(self) -> None:
        faults.heal_all(self)
        self.checker.healed_at = self.now
        self.run_until(self.checker_converged, self.config.phase_two_s, "every job to end and every node to converge")
        self.checker.final(self)

    def checker_converged(self) -> bool:
        return self.checker.converged(self)

    def run_until(self, condition, limit_s: float, what: str) -> None:
        deadline = self.now + limit_s
        while not condition():
            if self.now >= deadline:
                raise Violation(f"timed out after {limit_s:g} simulated s waiting for {what}: "
                                f"{self.checker.why_not_converged(self)}")
            self.tick()


def run_seed(seed: int, config: Config = Config()) -> Outcome:
    """Run one seed; the outcome says whether every invariant held."""
    return Simulation(seed, config).run()


def replay_command(seed: int, config: Config) -> str:
    """The one-line command that runs a seed again."""
    bugs = "".join(f" --bug {bug}" for bug in sorted(config.bugs))
    return f".venv/bin/python bench/sim.py --seed {seed} --nodes {config.nodes}{bugs}"


faults.install(Simulation)
