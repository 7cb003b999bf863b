"""The simulator's replicated disks: two copies per instance, guest writes, resync, and the nodes' disk-state reports.

The core does not yet report disk states, so this layer stands in for what
the daemon will do (the assumptions, stated for the lead):

- Each replicated instance has one copy on its primary and one on its
  secondary (all its disks share one copy model; each disk index is reported
  alike). A copy is a set of record numbers; a running guest writes the next
  record every WRITE_EVERY_S to its own copy and, while the two machines can
  reach each other (both powered, no partition between them), to its peer's.
- A guest whose peer cannot be reached writes alone only once its node has
  applied a committed report that the peer's copy is not UPTODATE (its daemon
  outdates the peer first; until then the guest's I/O is frozen), as DRBD's
  `fencing resource-and-stonith` with the daemon as fence-peer handler. So a
  copy the log calls UPTODATE never misses an acknowledged write.
- Two copies that can reach each other and differ are resynced, from the copy
  holding every acknowledged record (else from the one on the node running the
  instance, else the primary's): SYNCING for a few seconds, then equal.
- Every REPORT_EVERY_S each live daemon proposes `DiskStateObserved` where the
  state it has applied differs from what it sees: its own copy SYNCING while
  it is resynced, UPTODATE while it reaches its peer and they are equal (it
  says nothing of its own copy while cut off: it cannot know whether the peer
  wrote alone); and its peer's copy DEGRADED when it runs the guest and cannot
  reach the peer.

`current(instance, node)`, the truth the checker holds recoveries to: the copy
holds every acknowledged record.
"""

from __future__ import annotations

from appliance.core.io import Proposal
from appliance.core.plans import event_id
from appliance.model import events as ev
from appliance.model.codec import Envelope

WRITE_EVERY_S = 0.5
REPORT_EVERY_S = 1.0
REPORT_RETRY_S = 2.0
UPTODATE, SYNCING, DEGRADED = "UPTODATE", "SYNCING", "DEGRADED"
REPORTER = "reconciler"


class Disks:
    """Every replicated instance's copies, what was acknowledged, the resyncs in progress and the reports sent."""

    def __init__(self, sim) -> None:
        self.sim = sim
        self.copies: dict[tuple[str, str], set] = {}     # (instance id, node name) -> records held
        self.acked: dict[str, set] = {}                  # instance id -> records acknowledged to the guest
        self.syncing: dict[str, tuple] = {}              # instance id -> (target node, source node, done at)
        self.outdated: set[tuple[str, str]] = set()      # (instance, peer) the writer may leave behind
        self.sent: dict[tuple, float] = {}
        self.next_write = 0.0
        self.next_report = 0.0
        self.lost_by_operator = 0
        self.resyncs = 0

    # --- the machines ------------------------------------------------------------------------

    def connected(self, a: str, b: str) -> bool:
        hosts = self.sim.world.hosts
        return hosts[a].powered and hosts[b].powered and not self.sim.cut(a, b)

    def pairs(self) -> list[tuple[str, str, str]]:
        """(instance id, primary name, secondary name) of every replicated instance, in the committed state."""
        state = self.sim.checker.state
        out = []
        for instance in sorted(state.instances.values(), key=lambda i: i.id):
            if instance.disk_template == "replicated" and instance.secondary in state.nodes:
                out.append((instance.id, state.nodes[instance.primary].name, state.nodes[instance.secondary].name))
        return out

    def copy(self, instance: str, node: str) -> set:
        return self.copies.setdefault((instance, node), set())

    def current(self, instance: str, node: str) -> bool:
        return self.acked.get(instance, set()) <= self.copy(instance, node)

    def tick(self) -> None:
        sim = self.sim
        pairs = self.pairs()
        known = {p[0] for p in pairs}
        for key in [k for k in self.copies if k[0] not in known]:
            del self.copies[key]
        for instance in [i for i in self.acked if i not in known]:
            del self.acked[instance]
        for instance, primary, secondary in pairs:
            self._resync(instance, primary, secondary)
        if sim.now >= self.next_write:
            self.next_write = sim.now + WRITE_EVERY_S
            for instance, primary, secondary in pairs:
                self._write(instance, primary, secondary)
        if sim.now >= self.next_report:
            self.next_report = sim.now + REPORT_EVERY_S
            for name in sim.names:
                if sim.cores[name] is not None and name not in sim.paused:
                    self._report(name)

    def _running_on(self, instance: str) -> str | None:
        for host in self.sim.world.hosts.values():
            if instance in host.running():
                return host.name
        return None

    def _write(self, instance: str, primary: str, secondary: str) -> None:
        """The guest's unit of work, where it runs; frozen while its peer is cut off and not yet outdated."""
        writer = self._running_on(instance)
        if writer not in (primary, secondary):
            return
        peer = secondary if writer == primary else primary
        acked = self.acked.setdefault(instance, set())
        mine = self.copy(instance, writer)
        if not acked <= mine:
            # The guest runs on a copy that misses acknowledged writes: only an operator's failover of a copy
            # not UPTODATE does that (recovery is checked never to); those writes are lost from here on.
            self.lost_by_operator += 1
            acked.intersection_update(mine)
        record = max(acked | mine, default=0) + 1
        if self.connected(writer, peer):
            self.outdated.discard((instance, peer))
            mine.add(record)
            self.copy(instance, peer).add(record)
        elif (instance, peer) in self.outdated or self._peer_outdated(writer, instance, peer):
            self.outdated.add((instance, peer))
            mine.add(record)
        else:
            return
        acked.add(record)

    def _peer_outdated(self, writer: str, instance: str, peer: str) -> bool:
        """True once the writer's daemon has applied a report that the peer's copy is not UPTODATE (a copy never
        reported is not outdated)."""
        core = self.sim.cores[writer]
        if core is None:
            return False
        found = core.state.instances.get(instance)
        if found is None or peer not in (n.name for n in core.state.nodes.values()):
            return False
        peer_id = core.state.node_names.get(peer)
        # A report not yet applied here is not an outdate: the log may already call the peer UPTODATE (a
        # report this node has not applied yet), and recovery would then promote a copy missing these writes.
        states = {disk: state for disk, node, state, _ in found.disk_states if node == peer_id}
        return any(index in states and states[index] != UPTODATE for index in range(len(found.disks)))

    def _resync(self, instance: str, primary: str, secondary: str) -> None:
        sim = self.sim
        going = self.syncing.get(instance)
        if not self.connected(primary, secondary):
            self.syncing.pop(instance, None)
            return
        if going is not None:
            target, source, done_at = going
            if {target, source} != {primary, secondary}:
                self.syncing.pop(instance, None)
            elif sim.now >= done_at:
                self.copies[(instance, target)] = set(self.copy(instance, source))
                self.syncing.pop(instance, None)
            return
        first, second = self.copy(instance, primary), self.copy(instance, secondary)
        if first == second:
            return
        source = self._source(instance, primary, secondary)
        target = secondary if source == primary else primary
        self.syncing[instance] = (target, source, sim.now + sim.rng.uniform(1.0, 4.0))
        self.resyncs += 1

    def _source(self, instance: str, primary: str, secondary: str) -> str:
        current = [n for n in (primary, secondary) if self.current(instance, n)]
        if len(current) == 1:
            return current[0]
        running = self._running_on(instance)
        return running if running in (primary, secondary) else primary

    # --- the daemons' reports ---------------------------------------------------------------------

    def _report(self, name: str) -> None:
        core = self.sim.cores[name]
        state = core.state
        me = state.node_names.get(name)
        if me is None:
            return
        for instance in sorted(state.instances.values(), key=lambda i: i.id):
            if instance.disk_template != "replicated" or me not in (instance.primary, instance.secondary):
                continue
            other = instance.secondary if me == instance.primary else instance.primary
            if other not in state.nodes:
                continue
            peer = state.nodes[other].name
            wanted = {}
            going = self.syncing.get(instance.id)
            if going is not None and going[0] == name:
                wanted[me] = SYNCING
            elif self.connected(name, peer) and self.copy(instance.id, name) == self.copy(instance.id, peer):
                wanted[me] = UPTODATE
            if self._running_on(instance.id) == name and not self.connected(name, peer):
                wanted[other] = DEGRADED
            seen = {(disk, node): disk_state for disk, node, disk_state, _ in instance.disk_states}
            for node_id, disk_state in wanted.items():
                for index in range(len(instance.disks)):
                    if seen.get((index, node_id)) != disk_state:
                        self._propose(name, state, instance.id, index, node_id, disk_state)

    def _propose(self, name: str, state, instance: str, index: int, node_id: str, disk_state: str) -> None:
        key = ("disk", name, instance, index, node_id, disk_state)
        if self.sim.now - self.sent.get(key, float("-inf")) < REPORT_RETRY_S:
            return
        self.sent[key] = self.sim.now
        percent = 100.0 if disk_state == UPTODATE else 0.0
        event = ev.DiskStateObserved(instance, index, node_id, disk_state, percent)
        envelope = Envelope(event_id(*key, state.seq), event, REPORTER, f"disk {index} seen {disk_state} by {name}",
                            self.sim.now + self.sim.offset[name], 0)
        self.sim._propose(name, Proposal(envelope, key))
