"""The reconciler: makes this node's hypervisor and storage match what the committed state says about it.

It compares the desired state of the instances and disks that concern this
node with what the drivers last reported, and returns driver actions and
observation events; it never changes anything because of anything but
committed state. Rules it keeps:
- It never starts an instance while the state names a node that must still
  confirm the instance stopped there (`pending_stop`); a fence proof
  (NodeFenced) or that node's own report clears it.
- An instance marked up that crashes is restarted with back-off and a limit;
  each decision is an event with a reason, and a paused watcher restarts
  nothing. A guest's own shutdown is recorded (Ganeti's USER_down) and not fought.
- A node marked offline stops everything it still runs: others may have
  taken its instances over.
- An instance running here that the state does not place here is stopped,
  unless it is arriving by live migration.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from appliance.core.io import Action, Proposal
from appliance.core.plans import event_id
from appliance.model import events as ev
from appliance.model.codec import Envelope

RECONCILER_ACTOR = "reconciler"
LIST_EVERY_S = 2.0
START_RETRY_S = 2.0             # after a start the driver refused, before it is tried again
REMIRROR_EVERY_S = 5.0          # how often a DEGRADED kvm copy on a reachable node is mirrored again
LIST_ARRIVING_S = 0.05         # while a job waits on this node's listing (an instance arriving, a confirmation)
ACTION_TIMEOUT_S = 120.0
REPORT_RETRY_S = 5.0
# Without a lease (the simulator's nodes, tests): how long a commit seq heard counts for starting or migrating.
FRESH_S = 2.0
RESTART_LIMIT = 5
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0)
RUNNING, CRASHED, SHUTDOWN = "running", "crashed", "shutdown"


@dataclass
class _Pending:
    action: Action
    deadline: float


@dataclass
class Reconciler:
    """One node's reconciler: its last driver reports, its actions in flight, its reports in flight."""

    node_name: str
    bugs: frozenset = frozenset()
    listing: dict | None = None           # instance id -> running | crashed | shutdown
    disks: set | None = None              # (instance id, disk index)
    listed_at: float = float("-inf")
    listing_seq: int = -1                 # the applied seq when the listing in hand was asked for
    disks_listed_at: float = float("-inf")
    copies: dict | None = None            # (instance id, disk index) -> (state, sync_percent) of this node's copy
    copies_listed_at: float = float("-inf")
    paired: dict = field(default_factory=dict)       # (instance id, disk index) -> (peer node name, role) set
    resync_at: dict = field(default_factory=dict)    # (instance id, disk index) -> when a resync was last asked
    mirrors: dict | None = None           # (instance id, disk index) -> (state, percent, held) of mirrors run here
    mirrors_listed_at: float = float("-inf")
    start_failed: dict = field(default_factory=dict)   # instance id -> earliest retry of a start that failed
    pending: dict = field(default_factory=dict)      # instance id (or "" for listings) -> _Pending
    reports: dict = field(default_factory=dict)      # (instance, kind) -> time proposed
    report_ids: dict = field(default_factory=dict)   # event id of a report in flight -> (instance, kind)
    restart_at: dict = field(default_factory=dict)   # instance id -> (attempt, earliest start)
    migrations: dict = field(default_factory=dict)   # instance id -> (ok, message) of a migration run here
    leader_commit: int = -1                          # the leader's commit seq, as last heard
    lease_until: float = float("-inf")               # until when this node may start or migrate (core time)
    changes: int = 0                                 # local actions finished, to spot stale listings
    next_action: int = 1

    # --- reports in flight ----------------------------------------------------

    def committed(self, eid: bytes) -> None:
        """A report of ours committed: nothing more to track."""
        self.report_ids.pop(eid, None)

    def lost(self, eid: bytes) -> None:
        """A report did not commit (or may not have): report again at the next decision, not after
        REPORT_RETRY_S (a job may be waiting for it, and a new leader is there to take it)."""
        key = self.report_ids.pop(eid, None)
        if key is not None:
            self.reports.pop(key, None)

    # --- driver results ------------------------------------------------------

    def done(self, action: Action, ok: bool, value) -> None:
        """Fold a driver result into what this node knows of its machine."""
        self._drop(action)
        if action.kind == "list":
            if ok and action.args.get("changes") == self.changes:
                self.listing = dict(value)
                self.listing_seq = action.args["seq"]
            return
        if action.kind == "disk_list":
            if ok and action.args.get("changes") == self.changes:
                self.disks = set(map(tuple, value))
            return
        if action.kind == "disk_states":
            if ok:
                self.copies = {(i, index): (state, percent) for i, index, state, percent in value or ()}
            return
        if action.kind == "disk_set_peer":
            if ok:
                self.paired[(action.instance, action.args["index"])] = (action.args["peer"], action.args["role"])
            return
        if action.kind == "disk_resync":
            if ok:
                self.copies_listed_at = float("-inf")   # look at the copy again at once
            return
        if action.kind == "peer_states":
            if ok:
                self.mirrors = {(i, index): (state, percent, held) for i, index, state, percent, held in value or ()}
            return
        if action.kind in ("disk_release", "disk_remirror"):
            self.mirrors_listed_at = float("-inf")      # look at the mirror again at once
            return
        self.changes += 1
        if action.kind == "migrate":
            self.migrations[action.instance] = (ok, (f"migrated {value}" if value else "migrated") if ok
                                                else f"migration failed: {value or 'driver error'}")
        if not ok:
            self.listed_at = self.disks_listed_at = float("-inf")
            if action.kind == "start":
                # Look again at once, but try the start again only after a pause: a start the driver refuses
                # (a missing bridge, an unreachable secondary) would otherwise be retried in a tight loop.
                self.start_failed[action.instance] = action.args.get("at", 0.0) + START_RETRY_S
            return
        if self.listing is not None:
            if action.kind == "start":
                self.listing[action.instance] = RUNNING
            elif action.kind in ("stop", "migrate"):
                self.listing.pop(action.instance, None)
        if self.disks is not None:
            if action.kind == "disk_create":
                self.disks.add((action.instance, action.args["index"]))
            elif action.kind == "disk_remove":
                self.disks.discard((action.instance, action.args["index"]))
                self.paired.pop((action.instance, action.args["index"]), None)

    def heard(self, seq: int, now: float, lease_until: float | None = None) -> None:
        """The leader's commit seq, as just heard, with the lease granted with it (None: FRESH_S from now)."""
        self.leader_commit = seq
        self.lease_until = now + FRESH_S if lease_until is None else lease_until

    def lease_lost(self) -> None:
        self.lease_until = float("-inf")

    def fresh(self, state, now: float) -> bool:
        """True while this node holds a lease and has applied what the leader committed when it granted it.

        Starting or migrating an instance on a state the log has moved past could
        run a second copy; stopping one never can, so only those two wait for this.
        """
        return state.seq >= self.leader_commit >= 0 and now < self.lease_until

    def _drop(self, action: Action) -> None:
        for key, pending in list(self.pending.items()):
            if pending.action.id == action.id:
                del self.pending[key]

    def find(self, action_id: int) -> Action | None:
        for pending in self.pending.values():
            if pending.action.id == action_id:
                return pending.action
        return None

    # --- decisions -------------------------------------------------------------

    def decide(self, state, now: float) -> tuple[list[Proposal], list[Action], float]:
        """Observation events to propose and driver actions to run; and when to look again."""
        proposals: list[Proposal] = []
        actions: list[Action] = []
        for key, pending in list(self.pending.items()):
            if now >= pending.deadline:
                del self.pending[key]
                self.changes += 1
        me = state.node_names.get(self.node_name)
        if me is None:
            return proposals, actions, now + LIST_EVERY_S
        expecting = self._expecting(state, me)
        self._listings(actions, now, state.seq, expecting)
        if self.listing is None:
            return proposals, actions, now + LIST_EVERY_S
        offline = state.nodes[me].offline
        for instance_id in [i for i in self.migrations if getattr(state.instances.get(i), "migration_status", "")
                            != "running"]:
            del self.migrations[instance_id]
        for instance_id in self._concerned(state, me):
            if instance_id in self.pending:
                continue
            instance = state.instances.get(instance_id)
            status = self.listing.get(instance_id)
            if instance is None or offline:
                # An instance this node does not know may be one a migration just brought in while this node
                # lags the log: it is stopped only once the node is caught up (an offline node stops all).
                if status is not None and (offline or self.fresh(state, now)):
                    self._act(actions, now, "stop", instance_id, timeout_s=0)
                continue
            if instance.primary == me:
                self._as_primary(proposals, actions, state, me, instance, status, now)
            else:
                self._elsewhere(proposals, actions, state, me, instance, status, now)
        if not offline:
            self._reconcile_disks(actions, state, me, now)
            self._replicated(proposals, actions, state, me, now)
            self._mirrored(proposals, actions, state, me, now)
        return proposals, actions, now + (LIST_ARRIVING_S if expecting else LIST_EVERY_S)

    def _expecting(self, state, me: str) -> bool:
        """Whether a job waits on what this node's hypervisor holds: an instance arriving here by live migration
        (to be seen running), or one whose start elsewhere waits for this node to confirm it is not here."""
        return any((instance.migration_target == me and instance.migration_status in ("running", "done"))
                   or (me in instance.pending_stop and self.listing_seq < instance.moved_at_seq)
                   for instance in state.instances.values())

    def _listings(self, actions: list, now: float, seq: int, expecting: bool = False) -> None:
        every = LIST_ARRIVING_S if expecting else LIST_EVERY_S
        if "" not in self.pending and now - self.listed_at >= every:
            self.listed_at = now
            self._act(actions, now, "list", "", key="", changes=self.changes, seq=seq)
        if "/disks" not in self.pending and now - self.disks_listed_at >= LIST_EVERY_S:
            self.disks_listed_at = now
            self._act(actions, now, "disk_list", "", key="/disks", changes=self.changes)
        if "/copies" not in self.pending and now - self.copies_listed_at >= LIST_EVERY_S:
            self.copies_listed_at = now
            self._act(actions, now, "disk_states", "", key="/copies")

    def _concerned(self, state, me: str) -> list[str]:
        """Every instance that touches this node in the state, and every one its hypervisor runs."""
        ids = set(self.listing)
        for instance in state.instances.values():
            if me in (instance.primary, instance.secondary, instance.migration_target) or me in instance.pending_stop:
                ids.add(instance.id)
        return sorted(ids)

    def _as_primary(self, proposals, actions, state, me, instance, status, now) -> None:
        if instance.migration_target:
            self._migrate_out(proposals, actions, state, me, instance, status, now)
            return
        seen = (instance.observed_state, instance.observed_node)
        if instance.admin_state != "up":
            if status is not None:
                self._act(actions, now, "stop", instance.id,
                          timeout_s=instance.stop_timeout_s if status == RUNNING else 0)
            elif seen == (RUNNING, me):
                self._report(proposals, state, me, instance, "shutdown", now)
            return
        if status == RUNNING:
            if seen != (RUNNING, me):
                self._report(proposals, state, me, instance, RUNNING, now)
            return
        if status is not None:
            # A dead instance: report how it ended once, then clear it from the hypervisor.
            recorded = ("crashed", me) if status == CRASHED else ("user_down", me)
            if seen != recorded:
                self._report(proposals, state, me, instance, "crashed" if status == CRASHED else "guest", now)
            else:
                self._act(actions, now, "stop", instance.id, timeout_s=0)
            return
        if instance.observed_state in ("user_down", "error") and instance.observed_node == me:
            return
        if seen == (RUNNING, me):
            self._report(proposals, state, me, instance, "crashed", now)
        elif seen == ("crashed", me):
            self._restart(proposals, actions, state, me, instance, now)
        else:
            self._start(actions, state, me, instance, now)

    def _start(self, actions, state, me, instance, now) -> None:
        """Start the instance here, only once no other node may still run it and its disks are here."""
        waiting_for = [n for n in instance.pending_stop if n != me]
        if waiting_for and "start_before_stop" not in self.bugs:
            return
        if not self.fresh(state, now):
            return
        if instance.disk_template != "diskless":
            if self.disks is None or any((instance.id, i) not in self.disks for i in range(len(instance.disks))):
                return
        if instance.disk_template == "replicated" and any(
                self.paired.get((instance.id, i)) != self._pairing(state, me, instance)
                for i in range(len(instance.disks))):
            return          # the copies must know which one is written to before the guest writes
        if instance.disk_template == "replicated" and instance.hypervisor == "kvm":
            secondary = state.nodes.get(instance.secondary)
            if secondary is not None and secondary.offline and any(
                    (disk, instance.secondary) not in {(d, n) for d, n, st, _ in instance.disk_states
                                                       if st == "DEGRADED"} for disk in range(len(instance.disks))):
                return      # first the copies on the offline secondary are recorded DEGRADED (_mirrored)
        spec = {"name": instance.name, "memory_mib": instance.memory_mib, "vcpus": instance.vcpus,
                "disks": tuple(d.size_mib for d in instance.disks),
                "nics": tuple({"mac": n.mac, "mode": n.mode, "link": n.link} for n in instance.nics),
                "hypervisor": instance.hypervisor, "disk_template": instance.disk_template,
                "hvparams": dict(instance.hvparams)}
        if instance.disk_template == "replicated":
            secondary = state.nodes.get(instance.secondary)
            spec["secondary"] = secondary.name if secondary is not None else ""
            spec["peer_degraded"] = tuple(sorted(
                disk for disk, node, disk_state, _ in instance.disk_states
                if node == instance.secondary and disk_state == "DEGRADED"))
        if now < self.start_failed.get(instance.id, float("-inf")):
            return
        self.start_failed.pop(instance.id, None)
        self.restart_at.pop(instance.id, None)
        self._act(actions, now, "start", instance.id, spec=spec, at=now)

    def _restart(self, proposals, actions, state, me, instance, now) -> None:
        """A crashed instance marked up: decide a restart (an event), wait out its back-off, then start it."""
        if state.mode_active("watcher_paused", now):
            return
        decided = self.restart_at.get(instance.id)
        if decided is not None and decided[0] == instance.restarts:
            if now >= decided[1]:
                self._start(actions, state, me, instance, now)
            return
        if decided is not None and decided[0] == instance.restarts + 1 and self._reported(instance, "restart", now):
            return
        attempt = instance.restarts + 1
        if attempt > RESTART_LIMIT:
            if not self._reported(instance, "exhausted", now):
                self._propose(proposals, state, instance, "exhausted", now,
                              ev.InstanceRestartsExhausted(instance.id, me, instance.restarts),
                              f"instance crashed {instance.restarts} times in a row; not restarting it again")
            return
        delay = BACKOFF_S[min(attempt, len(BACKOFF_S)) - 1]
        self.restart_at[instance.id] = (attempt, now + delay)
        self._propose(proposals, state, instance, "restart", now,
                      ev.InstanceRestartDecided(instance.id, me, attempt, delay),
                      f"instance crashed; restart {attempt} of {RESTART_LIMIT} after {delay:g} s")

    def _migrate_out(self, proposals, actions, state, me, instance, status, now) -> None:
        """This node is the source of a live migration: run it, then report how it went."""
        if instance.migration_status != "running":
            return
        outcome = self.migrations.get(instance.id)
        if outcome is None:
            target = state.nodes.get(instance.migration_target)
            if status == RUNNING and target is not None:
                if self.fresh(state, now):
                    self._act(actions, now, "migrate", instance.id, target=target.name)
                return
            outcome = (False, f"instance {instance.name} is not running on its primary")
        if not self._reported(instance, "migration", now):
            ok, message = outcome
            self._propose(proposals, state, instance, "migration", now,
                          ev.InstanceMigrationFinished(instance.id, me, instance.migration_target, ok, message,
                                                       state.seq), message)

    def _elsewhere(self, proposals, actions, state, me, instance, status, now) -> None:
        """The state does not place this instance's run here: stop it, and confirm when asked to."""
        incoming = instance.migration_target == me and instance.migration_status in ("running", "done")
        if status is not None and not incoming:
            self._act(actions, now, "stop", instance.id, timeout_s=0 if status != RUNNING else 120)
            return
        if status is None and (me in instance.pending_stop
                               or (instance.observed_state, instance.observed_node) == (RUNNING, me)):
            # A confirmation that lets another node start the instance rests only on a listing asked for
            # after this node knew it had to confirm: an older one may predate a migration that landed here.
            if self.listing_seq >= instance.moved_at_seq:
                self._report(proposals, state, me, instance, "absent", now)

    # --- disks -------------------------------------------------------------------

    def _reconcile_disks(self, actions, state, me, now) -> None:
        if self.disks is None:
            return
        wanted = {}
        for instance in state.instances.values():
            if me in (instance.primary, instance.secondary) and instance.disk_template != "diskless":
                for index, disk in enumerate(instance.disks):
                    wanted[(instance.id, index)] = disk.size_mib
        for (instance_id, index), size in sorted(wanted.items()):
            if (instance_id, index) not in self.disks and f"disk/{instance_id}/{index}" not in self.pending:
                self._act(actions, now, "disk_create", instance_id, key=f"disk/{instance_id}/{index}", index=index,
                          size_mib=size)
        for instance_id, index in sorted(self.disks - set(wanted)):
            if instance_id not in self.listing and f"disk/{instance_id}/{index}" not in self.pending:
                self._act(actions, now, "disk_remove", instance_id, key=f"disk/{instance_id}/{index}", index=index)

    def _replicated(self, proposals, actions, state, me, now) -> None:
        """Replicated copies here: pair each with its peer in its current role, report its state when it
        changes, and resync a secondary copy that is behind (DEGRADED) from the primary's."""
        for instance in state.instances.values():
            if instance.disk_template != "replicated" or me not in (instance.primary, instance.secondary):
                continue
            wanted = self._pairing(state, me, instance)
            if wanted is None:
                continue
            recorded = {(disk, node): (disk_state, percent) for disk, node, disk_state, percent in instance.disk_states}
            for index in range(len(instance.disks)):
                key = (instance.id, index)
                if self.disks is None or key not in self.disks:
                    continue
                if self.paired.get(key) != wanted:
                    if f"pair/{instance.id}/{index}" not in self.pending:
                        self._act(actions, now, "disk_set_peer", instance.id, key=f"pair/{instance.id}/{index}",
                                  index=index, peer=wanted[0], role=wanted[1])
                    continue
                seen = (self.copies or {}).get(key)
                if seen is None or instance.hypervisor == "kvm":
                    continue            # a kvm copy's state is the primary's mirror's: reported by _mirrored
                copy_state, percent = seen
                known = recorded.get((index, me))
                if known is None or known[0] != copy_state or (copy_state == "SYNCING" and percent - known[1] >= 10):
                    kind = f"disk{index}:{copy_state}:{percent // 10 if copy_state == 'SYNCING' else ''}"
                    if not self._reported(instance, kind, now):
                        self._propose(proposals, state, instance, kind, now,
                                      ev.DiskStateObserved(instance.id, index, me, copy_state, float(percent)),
                                      f"disk {index} of {instance.name} on {self.node_name} is {copy_state}"
                                      + (f" ({percent}%)" if copy_state == "SYNCING" else ""))
                if copy_state == "DEGRADED" and wanted[1] == "secondary" \
                        and f"resync/{instance.id}/{index}" not in self.pending \
                        and now - self.resync_at.get(key, float("-inf")) >= LIST_EVERY_S:
                    self.resync_at[key] = now
                    self._act(actions, now, "disk_resync", instance.id, key=f"resync/{instance.id}/{index}",
                              index=index, peer=wanted[0])

    def _mirrored(self, proposals, actions, state, me, now) -> None:
        """Replicated kvm disks this node runs as primary: QEMU mirrors each to the secondary's copy, and this
        node reports that copy's state (SYNCING, UPTODATE, DEGRADED) for it. A mirror cut off from its
        secondary holds the guest's writes until the copy is recorded DEGRADED, then is released (fence-peer);
        a DEGRADED copy on a node that is back is mirrored again (a full copy)."""
        mine = [instance for instance in state.instances.values() if instance.primary == me
                and instance.hypervisor == "kvm" and instance.disk_template == "replicated"]
        if not mine:
            self.mirrors = None
            return
        held = any(entry[2] for entry in (self.mirrors or {}).values())
        if "/mirrors" not in self.pending and now - self.mirrors_listed_at >= (LIST_ARRIVING_S if held
                                                                               else LIST_EVERY_S):
            self.mirrors_listed_at = now
            self._act(actions, now, "peer_states", "", key="/mirrors")
        for instance in mine:
            secondary = state.nodes.get(instance.secondary)
            if secondary is None:
                continue
            recorded = {disk: (disk_state, percent) for disk, node, disk_state, percent in instance.disk_states
                        if node == instance.secondary}
            for index in range(len(instance.disks)):
                known = recorded.get(index)
                if secondary.offline and (known is None or known[0] != "DEGRADED"):
                    # Its node is offline in the log: its copy takes no writes from now on.
                    self._observe_peer(proposals, state, instance, index, secondary, "DEGRADED", 0, now)
                    continue
                seen = (self.mirrors or {}).get((instance.id, index))
                if seen is None:
                    continue
                copy_state, percent, holding = seen
                if known is None or known[0] != copy_state or (copy_state == "SYNCING" and percent - known[1] >= 10):
                    self._observe_peer(proposals, state, instance, index, secondary, copy_state, percent, now)
                elif holding and copy_state == "DEGRADED" and f"release/{instance.id}/{index}" not in self.pending:
                    self._act(actions, now, "disk_release", instance.id, key=f"release/{instance.id}/{index}",
                              index=index)
                elif copy_state == "DEGRADED" and not secondary.offline and (instance.id, index) in (self.mirrors or {}) \
                        and (self.listing or {}).get(instance.id) == RUNNING \
                        and f"remirror/{instance.id}/{index}" not in self.pending \
                        and now - self.resync_at.get((instance.id, index), float("-inf")) >= REMIRROR_EVERY_S:
                    self.resync_at[(instance.id, index)] = now
                    self._act(actions, now, "disk_remirror", instance.id, key=f"remirror/{instance.id}/{index}",
                              index=index, peer=secondary.name)

    def _observe_peer(self, proposals, state, instance, index, secondary, copy_state, percent, now) -> None:
        kind = f"peer{index}:{copy_state}:{percent // 10 if copy_state == 'SYNCING' else ''}"
        if not self._reported(instance, kind, now):
            self._propose(proposals, state, instance, kind, now,
                          ev.DiskStateObserved(instance.id, index, secondary.id, copy_state, float(percent)),
                          f"disk {index} of {instance.name}: the copy on {secondary.name} is {copy_state}"
                          + (f" ({percent}%)" if copy_state == "SYNCING" else ""))

    @staticmethod
    def _pairing(state, me, instance) -> tuple[str, str] | None:
        """(peer node name, role) this node's copies of a replicated instance should have; None if the peer
        is not known."""
        primary = instance.primary == me
        peer = state.nodes.get(instance.secondary if primary else instance.primary)
        if peer is None:
            return None
        return peer.name, "primary" if primary else "secondary"

    # --- helpers ---------------------------------------------------------------

    def _act(self, actions: list, now: float, kind: str, instance_id: str, key: str | None = None, **args) -> None:
        action = Action(self.next_action, kind, instance_id, args)
        self.next_action += 1
        self.pending[instance_id if key is None else key] = _Pending(action, now + ACTION_TIMEOUT_S)
        actions.append(action)

    def _report(self, proposals, state, me, instance, kind: str, now: float) -> None:
        """An observation of this instance on this node, proposed at most once per retry interval."""
        if self._reported(instance, kind, now):
            return
        if kind == RUNNING:
            event = ev.InstanceObservedRunning(instance.id, me, self.listing_seq)
            reason = f"seen running on {self.node_name}"
        else:
            event = ev.InstanceObservedStopped(instance.id, me, self.listing_seq, kind)
            reason = {"shutdown": f"stopped on {self.node_name} as asked",
                      "crashed": f"instance process on {self.node_name} ended unexpectedly",
                      "guest": f"the guest shut itself down on {self.node_name}; not restarting it",
                      "absent": f"not running on {self.node_name}"}[kind]
        self._propose(proposals, state, instance, kind, now, event, reason)

    def _reported(self, instance, kind: str, now: float) -> bool:
        sent = self.reports.get((instance.id, kind))
        return sent is not None and now - sent < REPORT_RETRY_S

    def _propose(self, proposals, state, instance, kind: str, now: float, event, reason: str) -> None:
        self.reports[(instance.id, kind)] = now
        eid = event_id("report", self.node_name, instance.id, kind, state.seq)
        self.report_ids[eid] = (instance.id, kind)
        proposals.append(Proposal(Envelope(eid, event, RECONCILER_ACTOR, reason, now, 0),
                                  ("report", self.node_name, instance.id, kind)))
