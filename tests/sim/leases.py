"""The simulator's stand-in for the daemon's lease code and for each machine's watchdog.

It does what `appliance/daemon/shell.py` (`_keep_lease`, `_take_grant`,
`grant_lease`, `_watch_liveness`) and `appliance/fencing.py` (`Watchdog`) do,
on the simulated network and clock:

- Every RENEW_EVERY_S each live daemon asks the leader it knows for a lease
  (the request and the answer each cross the network: they can be cut by a
  partition or lost). The leader grants only while it leads in its own view,
  its own LeaderElected is applied, and followers of its term that make a
  majority answered it within LEADER_CONFIRM_S; never to a fenced node nor to
  one it reported lapsed. The lease runs from when the request was sent, for
  the fencing interval less the clock-rate error, on the monotonic clock (the
  simulation's own time; a clock jump moves only the wall clock the cores see).
- A grant renews the machine's watchdog and gives the core
  `LeaderCommit(seq, lease_until)`; a refusal gives it `LeaseLost`.
- Every LIVENESS_EVERY_S the leader's daemon reports `NodeLapsed` for each node
  with no grant for the recovery interval since the later of its last grant and
  the start of this leader's term, and `NodeReturned` for a fenced node that
  asks again having applied its fence and running nothing. Unlike the daemon
  today, it never reports a node whose last grant from it said "disarmed": that
  node's watchdog is stood down until an armed grant reaches it, so a lapse
  after the re-arm proves nothing; and a grant made during a timed disarm says
  how long it lasts, so the watchdog arms itself again when it ends, and the
  leader counts a lapse at the earliest from then (the planted bug
  `fence_after_disarm` is the daemon's behaviour, which the simulator finds).
- Each machine's watchdog kills every instance the machine runs once the local
  lease has lapsed, unless the last renewal said disarmed. It outlives the
  daemon (a crash leaves it counting down) but not a power loss.

Daemon state (`Shell`) is lost when the daemon crashes; a watchdog's when the
machine loses power.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from appliance.core.io import LeaderCommit, LeaseLost, NodeLapsed, NodeReturned, Tick, WatchdogArmed
from consensus.sim_log import LEADER

RENEW_EVERY_S = 0.5
CLOCK_RATE_ERROR = 1e-3
LEADER_CONFIRM_S = 0.25
LIVENESS_EVERY_S = 0.25
RETRY_LAPSE_S = 5.0
DEFAULT_LEASE_S = 5
# The planted bug `fence_without_wait`: a leader that reports a node lapsed after this, not the recovery interval.
HASTY_LAPSE_S = 1.0


@dataclass
class Shell:
    """One daemon's lease bookkeeping (volatile: a crash loses it)."""

    lease_until: float = float("-inf")                  # its own lease, monotonic
    next_request: float = 0.0
    next_watch: float = 0.0
    granted: dict = field(default_factory=dict)         # (leader) node name -> time of its last grant
    armed: dict = field(default_factory=dict)           # (leader) node name -> whether that grant armed its watchdog
    lapsed: dict = field(default_factory=dict)          # (leader) node name -> [its fenced_seq then, when told]
    term_began: float | None = None                     # (leader) when its own LeaderElected was seen applied
    down: set = field(default_factory=set)              # (leader) nodes seen offline or fenced


@dataclass
class Watchdog:
    """One machine's watchdog, as `appliance.fencing.Watchdog`."""

    until: float | None = None
    armed: bool = False
    rearm_at: float | None = None       # a timed disarm: stood down only until then
    fenced: bool = False

    def renew(self, until: float, armed: bool, rearm_at: float | None, now: float) -> None:
        if self.until is None or until > self.until:
            self.until = until
        self.armed, self.rearm_at = armed, None if armed else rearm_at
        if self.until > now:
            self.fenced = False

    def is_armed(self, now: float) -> bool:
        return self.armed or (self.rearm_at is not None and now >= self.rearm_at)


class Leases:
    """Every node's lease requests, the leaders' grants and liveness, and every machine's watchdog."""

    def __init__(self, sim) -> None:
        self.sim = sim
        self.shells: dict[str, Shell] = {name: Shell() for name in sim.names}
        self.watchdogs: dict[str, Watchdog] = {name: Watchdog() for name in sim.names}
        self.confirmed: dict[str, float] = {name: float("-inf") for name in sim.names}
        self.hasty = "fence_without_wait" in sim.config.bugs
        self.lapses = 0
        self.kills = 0

    # --- daemons and machines coming and going -----------------------------------------

    def daemon_started(self, name: str) -> None:
        self.shells[name] = Shell(next_request=self.sim.now, next_watch=self.sim.now)

    def power_lost(self, name: str) -> None:
        self.watchdogs[name] = Watchdog()

    # --- the loop ------------------------------------------------------------------------

    def tick(self) -> None:
        sim = self.sim
        self._confirm_leaders()
        for name in sim.names:
            if sim.cores[name] is None or name in sim.paused:
                continue
            shell = self.shells[name]
            if sim.now >= shell.next_request:
                shell.next_request = sim.now + RENEW_EVERY_S
                self._request(name)
            if sim.now >= shell.next_watch:
                shell.next_watch = sim.now + LIVENESS_EVERY_S
                self._watch_liveness(name, shell)
        for name in sim.names:
            self._watchdog(name)

    def _confirm_leaders(self) -> None:
        """A leader is confirmed while nodes of its term that make a majority can reach it (its heartbeats'
        answers, as `majority_heard_age` measures them)."""
        log = self.sim.log
        majority = len(log.nodes) // 2 + 1
        for name, member in log.nodes.items():
            if not member.up or member.role != LEADER:
                continue
            followers = sum(1 for other, peer in log.nodes.items()
                            if peer.up and peer.term == member.term
                            and (other == name or not self.sim.cut(name, other)))
            if followers >= majority:
                self.confirmed[name] = self.sim.now

    # --- a node asks ---------------------------------------------------------------------

    def _request(self, name: str) -> None:
        sim = self.sim
        member = sim.log.nodes[name]
        leader = name if member.role == LEADER else member.leader
        if leader is None:
            return
        core = sim.cores[name]
        listing = core.reconciler.listing if core.reconciler is not None else None
        running = -1 if listing is None else sum(1 for status in listing.values() if status == "running")
        body = (core.state.seq, running, self.watchdogs[name].is_armed(sim.now))
        sent = sim.now
        if leader == name:
            self._answer(name, name, sent, body, sim.incarnation[name])
        elif sim.delivered(name, leader):
            sim._later(sim.rng.uniform(0.01, 0.1), "lease_request", name, leader, sent, body, sim.incarnation[name])

    def on_request(self, name: str, leader: str, sent: float, body: tuple, incarnation: int) -> None:
        """The request reaches the leader (if it is still up and reachable)."""
        if self.sim.cores[leader] is None or leader in self.sim.paused or self.sim.cut(name, leader):
            return
        self._answer(name, leader, sent, body, incarnation)

    def _answer(self, name: str, leader: str, sent: float, body: tuple, incarnation: int) -> None:
        grant = self.grant(leader, name, body)
        if grant is None:
            return
        if leader == name:
            self.take_grant(name, sent, grant, incarnation)
        elif self.sim.delivered(leader, name):
            self.sim._later(self.sim.rng.uniform(0.01, 0.1), "lease_grant", name, leader, sent, grant, incarnation)

    def on_grant(self, name: str, leader: str, sent: float, grant: dict, incarnation: int) -> None:
        if not self.sim.cut(name, leader):
            self.take_grant(name, sent, grant, incarnation)

    # --- the leader grants -----------------------------------------------------------------

    def grant(self, leader: str, node: str, body: tuple) -> dict | None:
        """A grant or a refusal, as `grant_lease`; None where the daemon answers Unavailable."""
        sim = self.sim
        core = sim.cores[leader]
        state = core.state
        if sim.log.nodes[leader].role != LEADER or not core.engine.active(state):
            return None
        if sim.now - self.confirmed[leader] > LEADER_CONFIRM_S:
            return None
        shell = self.shells[leader]
        answer = {"commit_seq": len(sim.log.nodes[leader].records)}
        found = state.node_by_name(node)
        if found is None:
            return {**answer, "granted": False}
        applied, running, watchdog_armed = body
        if found.fenced or node in shell.lapsed or self._fence_pending(state, found.name):
            if found.fenced and found.fence_proof == "lease" and applied >= found.fenced_seq and running == 0:
                sim._step(leader, NodeReturned(node))
            return {**answer, "granted": False}
        wall = sim.now + sim.offset[leader]
        armed = state.cluster is not None and not state.mode_active("recovery_disarmed", wall) \
            and not state.mode_active("maintenance", wall, found.id)
        shell.granted[node] = sim.now
        shell.armed[node] = armed
        if armed and found.watchdog_down and watchdog_armed:
            sim._step(leader, WatchdogArmed(node))
        lease_s = state.cluster.fencing_interval_s if state.cluster is not None else DEFAULT_LEASE_S
        # A timed disarm travels as a duration (as the lease does): the watchdog stands down only that long.
        until = state.modes.get(("recovery_disarmed", ""))
        disarmed_s = None if armed or until is None or state.mode_active("maintenance", wall, found.id) \
            else max(0.0, until - wall)
        return {**answer, "granted": True, "lease_s": lease_s, "armed": armed, "disarmed_s": disarmed_s}

    def _fence_pending(self, state, node: str) -> bool:
        """True while a node_fence job for the node is queued or running in the state the leader applied.

        The daemon keeps "reported lapsed" only in memory (`_lapsed`), lost when
        its leadership ends or it restarts, while the fence job it caused is in
        the log and will still run: a grant in between lets the node start its
        instances again just before the proof that they are dead commits. After
        its own LeaderElected, a leader has applied every fence job that can
        still commit, so this check closes the gap (the planted bug
        `grant_during_fence` is the daemon's behaviour without it).
        """
        if "grant_during_fence" in self.sim.config.bugs:
            return False
        for job_id in state.active_jobs:
            job = state.jobs[job_id]
            if any(o["op"] == "node_fence" and o["params"].get("node") == node for o in job.operations):
                return True
        return False

    def take_grant(self, name: str, sent: float, grant: dict, incarnation: int) -> None:
        """The node's daemon takes the answer, as `_take_grant`."""
        sim = self.sim
        if incarnation != sim.incarnation[name] or sim.cores[name] is None:
            return
        shell = self.shells[name]
        if not grant["granted"]:
            shell.lease_until = float("-inf")
            sim._step(name, LeaseLost())
            return
        shell.lease_until = max(shell.lease_until, sent + grant["lease_s"] * (1 - CLOCK_RATE_ERROR))
        remaining = shell.lease_until - sim.now
        if remaining <= 0:
            return
        disarmed_s = grant["disarmed_s"]
        rearm_at = None if disarmed_s is None else sent + disarmed_s * (1 - CLOCK_RATE_ERROR)
        self.watchdogs[name].renew(shell.lease_until, grant["armed"], rearm_at, sim.now)
        wall = sim.now + sim.offset[name]
        sim._step(name, Tick(wall))
        sim._step(name, LeaderCommit(grant["commit_seq"], wall + remaining))

    # --- the leader watches ------------------------------------------------------------------

    def _watch_liveness(self, name: str, shell: Shell) -> None:
        """On the leader: report each node with no lease for the recovery interval, as `_watch_liveness`."""
        sim = self.sim
        state = sim.cores[name].state
        if sim.log.nodes[name].role != LEADER or not sim.cores[name].engine.active(state) or state.cluster is None:
            shell.granted.clear()
            shell.armed.clear()
            shell.lapsed.clear()
            shell.down.clear()
            shell.term_began = None
            return
        now = sim.now
        if shell.term_began is None:
            shell.term_began = now
        wall = now + sim.offset[name]
        quiet = state.mode_active("recovery_disarmed", wall)
        interval = HASTY_LAPSE_S if self.hasty else state.cluster.recovery_interval_s
        rearmed = self._rearmed(state, now, wall)
        for found in sorted(state.nodes.values(), key=lambda n: n.name):
            if found.offline or found.fenced or (found.watchdog_down and "fence_after_disarm" not in sim.config.bugs):
                shell.down.add(found.name)
            elif found.name in shell.down:
                shell.down.discard(found.name)
                shell.granted[found.name] = now
            lapsed = shell.lapsed.get(found.name)
            if lapsed is not None and (quiet or (not found.fenced and not found.offline
                                                 and found.fenced_seq > lapsed[0])):
                del shell.lapsed[found.name]
                lapsed = None
            if found.name == name or found.offline or found.fenced or quiet \
                    or state.mode_active("maintenance", wall, found.id):
                continue
            if found.watchdog_down and "fence_after_disarm" not in sim.config.bugs:
                # The log says its watchdog may be stood down since a disarm or its maintenance, and it has not
                # reported it armed since: every leader knows, not only the one that granted.
                continue
            if not shell.armed.get(found.name, True) and "fence_after_disarm" not in sim.config.bugs:
                # Its last grant stood its watchdog down (disarmed, or maintenance): nothing kills its instances
                # until it holds an armed lease again, so running out of lease proves nothing.
                continue
            granted = shell.granted.get(found.name)
            since = max(granted if granted is not None else shell.term_began, shell.term_began, rearmed)
            waited = now - since
            if waited < interval or (lapsed is not None and now - lapsed[1] < RETRY_LAPSE_S):
                continue
            shell.lapsed[found.name] = [found.fenced_seq, now]
            self.lapses += 1
            sim.note(f"leader {name} reports {found.name} lapsed (no lease for {waited:.1f} s)")
            sim._step(name, Tick(wall))
            sim._step(name, NodeLapsed(found.name, f"no lease for {waited:.1f} s"))

    def _rearmed(self, state, now: float, wall: float) -> float:
        """When a timed disarm the state still holds ended, on this clock (-inf: none): a watchdog stood down by
        a grant made while it lasted is armed again only from then, so a lapse counts from then at the earliest.
        (A disarm cleared by ModeCleared leaves no trace in the state: a gap, see docs/node-core.md.)"""
        until = state.modes.get(("recovery_disarmed", ""))
        if until is None or "fence_after_disarm" in self.sim.config.bugs:
            return float("-inf")
        return now - max(0.0, wall - until)

    # --- the watchdogs -------------------------------------------------------------------------

    def _watchdog(self, name: str) -> None:
        """Kill every instance of the machine while its local lease has lapsed (armed).

        It kills at every poll while the lease stays lapsed, not once: an
        instance can still arrive after the first kill (a live migration the
        source drives into this machine, a start issued just before the lease
        ran out), and the fence proof covers everything the machine runs.
        `appliance.fencing.Watchdog` kills once (the planted bug
        `watchdog_kills_once` is that behaviour; the simulator finds it).
        """
        sim = self.sim
        watchdog = self.watchdogs[name]
        host = sim.world.hosts[name]
        if not host.powered or not watchdog.is_armed(sim.now) or watchdog.until is None or sim.now < watchdog.until:
            return
        first = not watchdog.fenced
        if not first and "watchdog_kills_once" in sim.config.bugs:
            return
        watchdog.fenced = True
        if "watchdog_never_kills" in sim.config.bugs or not (first or host.instances):
            return
        victims = sorted(host.instances)
        for instance in victims:
            host.instances.pop(instance, None)
            host.specs.pop(instance, None)
        self.kills += 1
        sim.machine_cleared(name, "its watchdog killed " + (", ".join(victims) if victims else "nothing"))
