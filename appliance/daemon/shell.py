"""`NodeShell`: performs what the node core asks, feeds it what happens, and answers the API (`Backend`).

The core (`appliance.core.node.NodeCore`) decides; this shell does the I/O:
committed records from the log become `CommittedBatch` inputs, leadership
changes `LeadershipChanged`, the leader's commit seq and the lease it
granted `LeaderCommit` (twice a second), the clock `Tick`; each `Ready` it
returns is performed in order:
proposals go to the log (a lost one comes back as `ProposalLost`, and the core
proposes it again with the same event id), driver actions run as tasks (one
at a time per instance) and end as `DriverDone`, replies wake the API request
waiting for them.

`step` is never re-entered: an input that arrives while a step is performed
(a proposal refused at once, say) is queued and stepped right after.

Leases (docs/fencing.md). Every node asks the leader for a lease twice a
second; the lease runs from when it sent the request, on CLOCK_BOOTTIME, for
the cluster's fencing interval less the clock-rate error. While it holds one
it renews the local lease of its watchdog (`appliance.fencing`) and the core
may start and migrate instances. The leader grants only while a majority
has answered it within LEADER_CONFIRM_S and its own LeaderElected is applied,
never to a fenced node, and keeps the time of each grant (liveness, outside
the log). A node with no grant for the recovery interval since the later of
its last grant and the start of this leader's term is reported to the core
(`NodeLapsed`), whose healer fences it with a job.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import http.client
import itertools
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import trio

from appliance import clock, fencing, pki, tokens
from appliance.api.backend import Refused, Unavailable
from appliance.core.io import op
from appliance.core.io import (
    CancelRequested, Committed, CommittedBatch, DriverDone, LeaderCommit, LeadershipChanged, LeaseLost, NodeLapsed,
    NodeReturned, ProposalLost, Ready, Reply, Submitted, Tick, WatchdogArmed,
)
from appliance.core.node import NodeCore
from appliance.drivers.base import DriverError, Hypervisor, Storage
from appliance.model import replay
from appliance.model import events as ev
from appliance.model.codec import decode, encode
from appliance.model.errors import UNKNOWN_ENTITY, WRONG_INPUT, WRONG_STATE
from appliance.model.state import JOB_FINISHED, ClusterState
from consensus.log import EventLog, LogError
from ops.node_add import MAX_VOTERS

log = logging.getLogger("cairn.daemon")

RENEW_EVERY_S = 0.5
CLOCK_RATE_ERROR = 1e-3         # the clock-rate error allowed between nodes (NTP slews by at most 5e-4)
LEADER_CONFIRM_S = 0.25         # a leader grants only while a majority answered it this recently (< min election)
LIVENESS_EVERY_S = 0.25
ALIVE_S = 1.5                   # a node granted a lease this recently is alive; later, suspect
LIVENESS_KEPT_S = 3.0           # a follower shows the leader's liveness table for this long after hearing it
RETRY_LAPSE_S = 5.0             # a lapse not yet fenced is reported again this often
PROPOSAL_TIMEOUT_S = 10.0
SUBMIT_TIMEOUT_S = 30.0
BARRIER_TIMEOUT_S = 5.0
STATUS_TIMEOUT_S = 1.0
DATA_PLANE_TIMEOUT_S = 60.0     # a node-to-node data-plane call (a migration's destination starting)
MAX_IDLE_S = 1.0
BATCH_RECORDS = 1000
MEMBERSHIP_EVERY_S = 1.0
LOST_DELAY_S = 0.1


class NodeShell:
    """One node's core with its log and drivers; the API's `Backend`."""

    def __init__(self, node_name: str, address: str, log_: EventLog, hypervisor: Hypervisor, storage: Storage, *,
                 ca_pem: bytes, node_token: str, addresses: dict[str, str] | None = None,
                 bootstrap: list[dict] | None = None, bootstrap_done=None, client_context=None,
                 raft_password: str = "", ca_key_pem: bytes | None = None) -> None:
        self.node_name = node_name
        self.address = address
        self.log = log_
        self.hypervisor = hypervisor
        self.storage = storage
        self.core = NodeCore(node_name)
        self._node_token = node_token
        self._node_token_hash = hashlib.sha256(node_token.encode()).hexdigest()
        self._ca_pem = ca_pem
        self._client_context = client_context
        self._addresses = dict(addresses or {})           # name -> address, until the state knows the nodes
        self._bootstrap = list(bootstrap or [])
        self._bootstrap_done = bootstrap_done
        self._inputs: collections.deque = collections.deque()
        self._stepping = False
        self._tokens = itertools.count(1)
        self._waiting: dict[int, list] = {}              # token -> [trio.Event, Reply | None]
        self._applied = trio.Event()
        self._wake_at: float | None = None
        self._wake = trio.Event()
        self._sleeping_until = float("-inf")    # while the ticker sleeps: when it wakes by itself
        self._connections: dict[str, list] = {}     # leader address -> idle kept-alive connections
        self.on_removed = lambda: None               # the daemon stops when this node was removed
        self._instance_locks: dict[str, trio.Lock] = {}
        self._nursery: trio.Nursery | None = None
        self._raft_password = raft_password
        self._ca_key_pem = ca_key_pem
        self._ever_addresses: set[str] = set()
        self.watchdog: fencing.WatchdogLink | None = None
        self._lease_until = float("-inf")           # this node's lease, on CLOCK_BOOTTIME
        self._lease_note = "no lease yet"
        self._watchdog_armed = False                # the last renewal reached the watchdog and armed it
        self._granted: dict[str, float] = {}        # (leader) node name -> boottime of its last grant
        self._lapsed: dict[str, list] = {}          # (leader) node name -> [its fenced_seq then, when told]
        self._term_began: float | None = None       # (leader) boottime when its own LeaderElected was applied
        self._down: set[str] = set()                # (leader) nodes not watched: offline, fenced, exempt
        self._liveness: dict = {}                   # (follower) the leader's liveness table, as last heard
        self._liveness_at = float("-inf")

    # --- running -------------------------------------------------------------------------

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The shell's tasks; returns only when cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._input(Tick(clock.now()))
            nursery.start_soon(self._feed_committed)
            nursery.start_soon(self._feed_leadership)
            nursery.start_soon(self._keep_lease)
            nursery.start_soon(self._watch_liveness)
            nursery.start_soon(self._ticker)
            nursery.start_soon(self._reconcile_membership)
            if self._bootstrap:
                nursery.start_soon(self._run_bootstrap)
            task_status.started()

    def _input(self, message: Any) -> None:
        self._inputs.append(message)
        if self._stepping:
            return
        self._stepping = True
        applied = self.core.state.seq
        try:
            while self._inputs:
                self._perform(self.core.step(self._inputs.popleft()))
        finally:
            self._stepping = False
        if self.core.state.seq != applied:
            self._applied.set()
            self._applied = trio.Event()

    def _perform(self, ready: Ready) -> None:
        if ready.proposals:
            with self._together():
                for proposal in ready.proposals:
                    self._propose(proposal)
        for action in ready.actions:
            self._nursery.start_soon(self._run_action, action)
        for reply in ready.replies:
            slot = self._waiting.get(reply.token)
            if slot is not None:
                slot[1] = reply
                slot[0].set()
        self._wake_at = ready.wake_at
        # Wake the ticker only for a time before the one it sleeps until: every step asks for a slightly later
        # wake-up (now + an interval), and waking for each would make the ticker spin.
        if ready.wake_at is not None and ready.wake_at < self._sleeping_until:
            self._wake.set()

    def _together(self):
        together = getattr(self.log, "submitting_together", None)
        return together() if together is not None else contextlib.nullcontext()

    def _propose(self, proposal) -> None:
        eid = proposal.envelope.event_id
        payload = encode(proposal.envelope)

        def on_done(seq, error) -> None:
            if error is not None:
                log.debug("proposal %s lost: %s", eid.hex(), error)
                self._lost_later(eid)

        try:
            if hasattr(self.log, "submit"):
                self.log.submit(payload, PROPOSAL_TIMEOUT_S, on_done)
            else:
                # A log that commits at once (the one-member memory log of tests and one-node clusters).
                self.log.propose_nowait(payload)
        except LogError as error:
            log.debug("proposal %s not sent: %s", eid.hex(), error)
            self._lost_later(eid)

    def _lost_later(self, eid: bytes) -> None:
        """Tell the core a proposal was lost, a moment later: it proposes again at once, and without a leader
        the log refuses at once, so telling it now would spin."""
        async def tell() -> None:
            await trio.sleep(LOST_DELAY_S)
            self._input(ProposalLost(eid))

        self._nursery.start_soon(tell)

    # --- inputs from the log and the clock -------------------------------------------------

    async def _feed_committed(self) -> None:
        """Committed records, as many as are there at once (up to BATCH_RECORDS), one CommittedBatch each."""
        while True:
            changed = self.log._next_change()
            applied = self.core.state.seq
            head = self.log.head().seq
            if head > applied:
                records = tuple(Committed(r.seq, r.payload)
                                for r in self.log.read(applied + 1, min(head, applied + BATCH_RECORDS)))
                self._note_addresses(records)
                self._input(Tick(clock.now()))
                self._input(CommittedBatch(records))
                await trio.sleep(0)
                continue
            await changed.wait()

    async def _feed_leadership(self) -> None:
        async for leadership in self.log.leadership_changes():
            name = self.name_of(leadership.leader) if leadership.leader else None
            log.info("%s: leader is %s in term %d", self.node_name, name, leadership.term)
            self._input(LeadershipChanged(name, leadership.term))

    async def _keep_lease(self) -> None:
        """Twice a second, ask the leader for a lease (it carries the leader's commit seq)."""
        while True:
            sent = clock.boottime()
            try:
                grant = await self.request_lease()
            except Unavailable as error:
                self._lease_note = str(error)
            else:
                self._take_grant(sent, grant)
            await trio.sleep(RENEW_EVERY_S)

    def _take_grant(self, sent: float, grant: dict) -> None:
        if grant.get("liveness") is not None:
            self._liveness, self._liveness_at = grant["liveness"], clock.boottime()
        if not grant.get("granted"):
            self._lease_note = f"refused: {grant.get('reason', 'no reason given')}"
            self._lease_until = float("-inf")
            self._input(LeaseLost())
            return
        self._lease_until = max(self._lease_until, sent + float(grant["lease_s"]) * (1 - CLOCK_RATE_ERROR))
        remaining = self._lease_until - clock.boottime()
        if remaining <= 0:
            self._lease_note = "the grant came back after the lease it gave had run out"
            return
        self._lease_note = "held"
        armed = bool(grant.get("armed", True))
        renewed = self.watchdog is not None and self.watchdog.renew(self._lease_until, armed)
        self._watchdog_armed = renewed and armed
        now = clock.now()
        self._input(Tick(now))
        self._input(LeaderCommit(int(grant["commit_seq"]), now + remaining))

    def lease_status(self) -> dict:
        """This node's own lease: whether it holds one, for how long still, and why not."""
        remaining = self._lease_until - clock.boottime()
        return {"held": remaining > 0, "remaining_s": round(max(remaining, 0.0), 3), "note": self._lease_note}

    async def request_lease(self) -> dict:
        """A lease from the leader (the leader grants its own); Unavailable when no leader answers."""
        leader = self.log.leader()
        if leader is None:
            raise Unavailable("no leader is known: fewer than a majority of voters may be up; retry shortly")
        listing = self.core.reconciler.listing if self.core.reconciler is not None else None
        running = -1 if listing is None else sum(1 for status in listing.values() if status == "running")
        body = {"node": self.node_name, "applied_seq": self.core.state.seq, "running": running,
                "armed": self._watchdog_armed}
        if leader == self.address:
            return self.grant_lease(self.node_name, body)
        try:
            with trio.fail_after(STATUS_TIMEOUT_S + 0.5):
                return await self._call_member(leader, "POST", "/api/v1/lease", body)
        except (OSError, ValueError, KeyError, TypeError, trio.TooSlowError, http.client.HTTPException) as error:
            raise Unavailable(f"the leader {self.name_of(leader)} did not answer: {error}") from None

    # --- leases and liveness, on the leader ----------------------------------------------------

    def grant_lease(self, node: str, request: dict) -> dict:
        """Grant `node` a lease, or say why not. Unavailable unless this node leads, knows it still does, and has
        applied its own LeaderElected (so every fence its predecessors committed is in the state it reads)."""
        state = self.core.state
        if not self.log.is_leader() or not self.core.engine.active(state):
            raise Unavailable("this node is not the leader (or has only just been elected); ask the leader")
        age = self.log.majority_heard_age()
        if age > LEADER_CONFIRM_S:
            raise Unavailable(f"this leader has not heard from a majority for {age:.2f} s and may have been replaced")
        answer = {"commit_seq": self.log.head().seq, "term": self.log.status().term, "liveness": self.liveness()}
        found = state.node_by_name(node)
        if found is None:
            return {**answer, "granted": False, "reason": f"node {node} is not a member of the cluster"}
        if found.fenced or node in self._lapsed or _fence_pending(state, node):
            applied, running = int(request.get("applied_seq", -1)), int(request.get("running", -1))
            if found.fenced and found.fence_proof == "lease" and applied >= found.fenced_seq and running == 0:
                self._input(NodeReturned(node))
            why = "it is fenced" if found.fenced else "its lease lapsed and a fence job for it is under way"
            return {**answer, "granted": False, "reason": f"node {node}: {why}; it gets a lease again once it has "
                                                         "applied its fence and runs no instance"}
        now = clock.now()
        armed = state.cluster is not None and not state.mode_active("recovery_disarmed", now) \
            and not state.mode_active("maintenance", now, found.id)
        self._granted[node] = clock.boottime()
        if armed and found.watchdog_down and request.get("armed"):
            self._input(WatchdogArmed(node))        # recorded in the log: its lease proves something again
        lease_s = state.cluster.fencing_interval_s if state.cluster is not None else 5
        return {**answer, "granted": True, "lease_s": lease_s, "armed": armed}

    def liveness(self) -> dict:
        """Each node's liveness as the leader sees it: alive, suspect, fenced, offline or unknown, with the
        seconds since its last lease. A follower answers with the leader's table as last heard."""
        if not self.log.is_leader():
            fresh = clock.boottime() - self._liveness_at <= LIVENESS_KEPT_S
            return dict(self._liveness) if fresh else {}
        now = clock.boottime()
        table = {}
        for found in self.core.state.nodes.values():
            granted = self._granted.get(found.name)
            age = None if granted is None else round(now - granted, 2)
            if found.fenced:
                status = "fenced"
            elif found.offline:
                status = "offline"
            elif age is None:
                status = "unknown"
            else:
                status = "alive" if age <= ALIVE_S else "suspect"
            table[found.name] = {"liveness": status, "lease_age_s": age}
        return table

    async def _watch_liveness(self) -> None:
        """On the leader: report each node that has had no lease for the recovery interval."""
        while True:
            await trio.sleep(LIVENESS_EVERY_S)
            state = self.core.state
            if not self.log.is_leader() or not self.core.engine.active(state) or state.cluster is None:
                self._granted.clear()
                self._lapsed.clear()
                self._down.clear()
                self._term_began = None
                continue
            now = clock.boottime()
            if self._term_began is None:
                self._term_began = now
            wall = clock.now()
            quiet = state.mode_active("recovery_disarmed", wall)
            for found in state.nodes.values():
                # Not watched: offline or fenced already; recovery disarmed or the node in maintenance; or its
                # watchdog may still stand down since then (`watchdog_down`, in the log, so a new leader knows
                # too): cut off, such a node kills nothing, so its lease running out proves nothing.
                watched = not (found.offline or found.fenced or found.watchdog_down or quiet
                               or state.mode_active("maintenance", wall, found.id))
                if not watched:
                    self._down.add(found.name)
                elif found.name in self._down:
                    # Watched again (back online, recovery armed, out of maintenance): its wait for a lease
                    # starts now, not at a grant before the pause.
                    self._down.discard(found.name)
                    self._granted[found.name] = now
                lapsed = self._lapsed.get(found.name)
                if lapsed is not None and (quiet or (not found.fenced and not found.offline
                                                     and found.fenced_seq > lapsed[0])):
                    del self._lapsed[found.name]      # disarmed before its fence, or fenced and back since
                    lapsed = None
                if not watched or found.name == self.node_name:
                    continue
                granted = self._granted.get(found.name)
                since = max(granted if granted is not None else self._term_began, self._term_began)
                waited = now - since
                interval = state.cluster.recovery_interval_s
                if waited < interval or (lapsed is not None and now - lapsed[1] < RETRY_LAPSE_S):
                    continue
                self._lapsed[found.name] = [found.fenced_seq, now]
                last = (f"its last lease was granted {now - granted:.1f} s ago" if granted is not None else
                        f"it got no lease in the {now - self._term_began:.1f} s since {self.node_name} began to lead")
                detail = (f"no lease for {waited:.1f} s ({last}); fencing interval {state.cluster.fencing_interval_s}"
                          f" s, recovery interval {interval} s: its watchdog has killed its instances")
                log.warning("%s: node %s lapsed: %s", self.node_name, found.name, detail)
                self._input(Tick(wall))
                self._input(NodeLapsed(found.name, detail))

    async def _ticker(self) -> None:
        while True:
            now = clock.now()
            delay = MAX_IDLE_S if self._wake_at is None else min(MAX_IDLE_S, max(0.0, self._wake_at - now))
            self._sleeping_until = now + delay
            with trio.move_on_after(delay):
                await self._wake.wait()
            self._sleeping_until = float("-inf")
            self._wake = trio.Event()
            self._input(Tick(clock.now()))

    # --- driver actions -------------------------------------------------------------------

    async def _run_action(self, action) -> None:
        lock = self._instance_locks.setdefault(action.instance, trio.Lock()) if action.instance else None
        ok, message, value = True, "", None
        try:
            if lock is not None:
                async with lock:
                    value = await self._act(action)
            else:
                value = await self._act(action)
        except DriverError as error:
            ok, message = False, str(error)
            log.warning("node %s: %s of %s failed: %s", self.node_name, action.kind, action.instance or "-", error)
        except Exception as error:   # a driver bug must not take the node down; the core retries
            log.exception("driver action %s %s failed", action.kind, action.instance)
            ok, message = False, f"driver error: {error}"
        self._input(Tick(clock.now()))
        self._input(DriverDone(action.id, ok, message, value))

    async def _act(self, action):
        kind, instance, args = action.kind, action.instance, action.args
        if kind == "list":
            return await self.hypervisor.list()
        if kind == "disk_list":
            return sorted(await self.storage.list())
        if kind == "disk_states":
            return await self.storage.states()
        if kind == "start":
            await self.hypervisor.start(instance, args["spec"])
        elif kind == "stop":
            await self.hypervisor.stop(instance, float(args.get("timeout_s", 30.0)))
        elif kind == "migrate":
            summary = await self.hypervisor.migrate(instance, args["target"])
            return summary if isinstance(summary, str) else None
        elif kind == "disk_create":
            await self.storage.create(instance, args["index"], args["size_mib"])
        elif kind == "disk_remove":
            await self.storage.remove(instance, args["index"])
        elif kind == "disk_set_peer":
            await self.storage.set_peer(instance, args["index"], args["peer"], args["role"])
        elif kind == "disk_resync":
            await self.storage.resync(instance, args["index"], args["peer"])
        elif kind == "peer_states":
            return await self._kvm().replication_states()
        elif kind == "disk_release":
            await self._kvm().release_peer(instance, args["index"])
        elif kind == "disk_remirror":
            await self._kvm().remirror(instance, args["index"], args["peer"])
        else:
            raise DriverError(f"unknown driver action {kind!r}")
        return None

    # --- the data plane between nodes --------------------------------------------------------

    async def call_node(self, node: str, method: str, path: str, body: dict | None = None,
                        timeout_s: float = DATA_PLANE_TIMEOUT_S) -> dict:
        """Call node `node`'s API with the node certificate and token, on a connection of its own (a data-plane
        call such as preparing a migration's destination may take seconds); ValueError for a refusal, OSError
        when the node cannot be reached."""
        found = self.core.state.node_names.get(node)
        address = self.core.state.nodes[found].address if found is not None else self._addresses.get(node)
        if address is None:
            raise ValueError(f"node {node} is not in the cluster")
        host, _, port = address.rpartition(":")
        connection = http.client.HTTPSConnection(host, int(port), timeout=timeout_s, context=self._client_context)
        payload = None if body is None else json.dumps(body).encode()
        try:
            return await trio.to_thread.run_sync(self._member_call, connection, method, path, payload,
                                                 abandon_on_cancel=True)
        finally:
            connection.close()

    def _kvm(self):
        """The QEMU driver (replicated kvm disks are mirrored by it); DriverError where there is none."""
        driver = self._incoming_driver("kvm")
        if not hasattr(driver, "replication_states"):
            raise DriverError(f"node {self.node_name} has no QEMU driver with replicated disks")
        return driver

    def _incoming_driver(self, hypervisor: str):
        pick = getattr(self.hypervisor, "driver", None)
        driver = pick(hypervisor) if pick is not None else self.hypervisor
        if not hasattr(driver, "accept_incoming"):
            raise DriverError(f"hypervisor {hypervisor!r} on node {self.node_name} takes no incoming migration "
                              "over the network")
        return driver

    async def accept_incoming(self, instance: str, hypervisor: str, runtime: dict) -> dict:
        """(Migration target.) Start the destination of a live migration; {"uri": where the source sends to}."""
        try:
            return {"uri": await self._incoming_driver(hypervisor).accept_incoming(instance, runtime)}
        except DriverError as error:
            raise Refused(WRONG_STATE, f"node {self.node_name} cannot receive instance {instance}: {error}") from None

    async def export_disk(self, instance: str, index: int) -> dict:
        """(Secondary.) Export this node's copy of a replicated kvm disk to the instance's primary."""
        replication = getattr(self._incoming_driver("kvm"), "replication", None)
        if replication is None:
            raise Refused(WRONG_STATE, f"node {self.node_name} keeps no replicated kvm disks")
        try:
            return {"address": await replication.export(instance, index)}
        except DriverError as error:
            raise Refused(WRONG_STATE, f"node {self.node_name} cannot export disk {index} of {instance}: "
                                       f"{error}") from None

    async def abort_incoming(self, instance: str, hypervisor: str) -> None:
        """(Migration target.) End the destination of a migration that failed or was cancelled."""
        try:
            await self._incoming_driver(hypervisor).abort_incoming(instance)
        except DriverError as error:
            raise Refused(WRONG_STATE, str(error)) from None

    async def console_path(self, instance: str) -> str:
        """(The instance's primary.) The unix socket of the instance's serial console here, from the driver of its
        hypervisor; Refused(wrong_state) when that driver has none or the instance does not run here."""
        found = self.core.state.instance_by_name(instance)
        if found is None:
            raise Refused(UNKNOWN_ENTITY, f"instance {instance} is not known; 'cairn instance list' shows them")
        pick = getattr(self.hypervisor, "driver", None)
        try:
            driver = pick(found.hypervisor) if pick is not None else self.hypervisor
            if not hasattr(driver, "console_path"):
                raise DriverError(f"its hypervisor {found.hypervisor} has no serial console (kvm instances have one)")
            return str(await driver.console_path(found.id))
        except DriverError as error:
            raise Refused(WRONG_STATE, f"instance {instance} has no console on node {self.node_name}: "
                                       f"{error}") from None

    # --- the leader and its commit seq ---------------------------------------------------------

    def name_of(self, address: str) -> str:
        for node in self.core.state.nodes.values():
            if node.address == address:
                return node.name
        for name, known in self._addresses.items():
            if known == address:
                return name
        return address

    async def leader_commit(self) -> int:
        """The leader's commit seq, asked of the leader (Raft's ReadIndex); Unavailable without a leader."""
        leader = self.log.leader()
        if leader is None:
            raise Unavailable("no leader is known: fewer than a majority of voters may be up; retry shortly")
        if leader == self.address:
            seq = self.log.head().seq
        else:
            try:
                with trio.fail_after(STATUS_TIMEOUT_S + 0.5):
                    status = await self._ask_status(leader)
                seq = int(status["commit_seq"])
            except (OSError, ValueError, KeyError, TypeError, trio.TooSlowError, http.client.HTTPException) as error:
                raise Unavailable(f"the leader {self.name_of(leader)} did not answer: {error}") from None
        return seq

    async def _ask_status(self, address: str) -> dict:
        return await self._call_member(address, "GET", "/api/v1/status?stale=1")

    async def _call_member(self, address: str, method: str, path: str, body: dict | None = None) -> dict:
        """Call another member's API over a kept-alive connection (a new TLS handshake costs ~10 ms), with the
        node certificate and the node token; the JSON answer, or ValueError for another status than 200."""
        idle = self._connections.setdefault(address, [])
        connection = idle.pop() if idle else None
        if connection is None:
            host, _, port = address.rpartition(":")
            connection = http.client.HTTPSConnection(host, int(port), timeout=STATUS_TIMEOUT_S,
                                                     context=self._client_context)
        payload = None if body is None else json.dumps(body).encode()
        try:
            answer = await trio.to_thread.run_sync(self._member_call, connection, method, path, payload,
                                                   abandon_on_cancel=True)
        except BaseException:
            connection.close()
            raise
        idle.append(connection)
        return answer

    def _member_call(self, connection: http.client.HTTPSConnection, method: str, path: str,
                     payload: bytes | None) -> dict:
        headers = {"Authorization": f"Bearer {self._node_token}"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        try:
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            # The member closed the kept-alive connection while it was idle: once more on a new one.
            connection.close()
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise ValueError(f"HTTP {response.status}: {data[:200].decode(errors='replace')}")
        return json.loads(data)

    # --- bootstrap -----------------------------------------------------------------------------

    async def _run_bootstrap(self) -> None:
        """Submit the first jobs of a new cluster, one after the other, once there is a leader (each once: fixed
        request ids)."""
        for job in self._bootstrap:
            while True:
                state = self.core.state
                ended = _ended(state, job["request_id"])
                if ended is not None:
                    if ended.status != "success":
                        log.error("%s: bootstrap job %s ended %s: %s", self.node_name, job["request_id"],
                                  ended.status, ended.error_message)
                    break
                if self.log.leader() is not None:      # any member may submit: the log forwards to the leader
                    with contextlib.suppress(Refused, Unavailable):
                        await self.submit(job["operations"], job.get("actor", "admin"), "cluster bootstrap",
                                          job["request_id"])
                await trio.sleep(0.2)
        log.info("%s: cluster bootstrap done", self.node_name)
        self._bootstrap = []
        if self._bootstrap_done is not None:
            self._bootstrap_done()

    # --- the Backend the API uses ------------------------------------------------------------------

    def state(self) -> ClusterState:
        return self.core.state

    def log_status(self) -> dict:
        status = self.log.status()
        return {"node": self.node_name, "leader": self.name_of(status.leader) if status.leader else None,
                "leader_address": status.leader, "term": status.term, "commit_seq": status.commit_seq,
                "applied_seq": self.core.state.seq, "is_leader": self.log.is_leader(),
                "voters": sorted(self.name_of(v) for v in status.voters)}

    async def barrier(self) -> int:
        deadline = trio.current_time() + BARRIER_TIMEOUT_S
        while True:
            try:
                seq = await self.leader_commit()
                break
            except Unavailable:
                # The leader may have just changed (a silent one is only replaced by an election): ask again.
                if trio.current_time() + 0.1 >= deadline:
                    raise
                await trio.sleep(0.1)
        with trio.move_on_at(deadline):
            await self.wait_applied(seq)
            return seq
        raise Unavailable(f"this node has applied seq {self.core.state.seq} of the leader's {seq} and did not "
                          f"catch up within {BARRIER_TIMEOUT_S:g} s; ask another node or use --stale")

    async def wait_applied(self, seq: int) -> None:
        while self.core.state.seq < seq:
            await self._applied.wait()

    async def changed(self, after_seq: int) -> int:
        while self.core.state.seq <= after_seq:
            await self._applied.wait()
        return self.core.state.seq

    async def _ask(self, message_of_token, timeout_s: float, what: str) -> Reply:
        token = next(self._tokens)
        slot = [trio.Event(), None]
        self._waiting[token] = slot
        try:
            self._input(Tick(clock.now()))
            self._input(message_of_token(token))
            with trio.move_on_after(timeout_s):
                await slot[0].wait()
        finally:
            self._waiting.pop(token, None)
        if slot[1] is None:
            raise Unavailable(f"{what} was not committed within {timeout_s:g} s (is there a leader?); retry "
                              "with the same request id, which never submits twice")
        return slot[1]

    async def submit(self, operations: list, actor: str, reason: str = "", request_id: str = "") -> int:
        reply = await self._ask(lambda token: Submitted(token, tuple(operations), actor, reason, request_id),
                                SUBMIT_TIMEOUT_S, "the job")
        if not reply.ok:
            raise Refused(reply.code, reply.message)
        return reply.value

    async def cancel(self, job: int, actor: str) -> None:
        reply = await self._ask(lambda token: CancelRequested(token, job, actor), SUBMIT_TIMEOUT_S,
                                "the cancel request")
        if not reply.ok:
            raise Refused(reply.code, reply.message)

    async def wait_job(self, job: int) -> Any:
        while True:
            found = self.core.state.jobs.get(job)
            if found is None:
                raise Refused(UNKNOWN_ENTITY, f"Job {job} not known; 'cairn job list' shows the jobs")
            if found.status in JOB_FINISHED:
                return found
            await self._applied.wait()

    def records(self, first_seq: int, last_seq: int | None = None) -> Iterator:
        return self.log.read(first_seq, last_seq)

    def committed(self, after_seq: int) -> AsyncIterator:
        return self.log.committed(after_seq)

    def state_at(self, seq: int) -> ClusterState:
        head = self.log.head().seq
        if seq < 0 or seq > head:
            raise Refused(WRONG_INPUT, f"seq {seq} is not in this node's history (0..{head})")
        return replay.fold(self.log.read(1, seq))

    def node_token_hash(self) -> str:
        return self._node_token_hash

    # --- joining: tokens, the CA, admission -------------------------------------------------------------

    async def _run_job(self, operations: list, actor: str, reason: str) -> Any:
        """Submit a job and wait for its end; Refused with the job's own error when it did not succeed."""
        job = await self.submit(operations, actor, reason)
        with trio.move_on_after(SUBMIT_TIMEOUT_S):
            ended = await self.wait_job(job)
            if ended.status != "success":
                raise Refused(ended.error_code or WRONG_STATE, ended.error_message or f"job {job} {ended.status}")
            return ended
        raise Unavailable(f"job {job} did not end within {SUBMIT_TIMEOUT_S:g} s; 'cairn job info {job}' says why")

    async def issue_join_token(self, node: str, address: str, ttl_s: int, actor: str) -> dict:
        """A one-time join token for `node` at `address`; only its hash goes into the log."""
        state = self.core.state
        members = sorted(n.address for n in state.nodes.values() if n.role == "voter") or [self.address]
        try:
            token, record = tokens.issue_token(pki.ca_fingerprint(self._ca_pem), node, address, ttl_s,
                                               now=clock.now(), members=tuple(members))
        except ValueError as error:
            raise Refused(WRONG_INPUT, str(error)) from None
        await self._run_job([op("node_token_issue", node=node, address=address, token_hash=record.secret_hash,
                                expires_at=record.expires_at)], actor, f"join token for node {node}")
        return {"token": token, "node": node, "address": address, "expires_at": record.expires_at}

    def _join_entry(self, token_hash: str):
        entry = self.core.state.join_tokens.get(token_hash)
        if entry is None:
            raise Refused("unauthenticated", "this cluster issued no such join token; ask an admin for one with "
                                             "'cairn node add NODE --address HOST:PORT'")
        if entry.used:
            raise Refused("unauthenticated", f"the join token for node {entry.node} was used already; ask for a "
                                             f"new one with 'cairn node add {entry.node} --address {entry.address}'")
        if clock.now() >= entry.expires_at:
            raise Refused("unauthenticated", f"the join token for node {entry.node} has expired; ask for a new one "
                                             f"with 'cairn node add {entry.node} --address {entry.address}'")
        return entry

    def join_ca(self, token_hash: str) -> str:
        """The CA certificate (public), to a caller that names an open join token by its hash."""
        self._join_entry(token_hash)
        return self._ca_pem.decode()

    async def join(self, request: dict) -> dict:
        """Admit a node presenting its join token: certify its key, add it (consuming the token), hand it the
        cluster's secrets. Only the leader admits (it holds the CA key and changes membership)."""
        try:
            parsed = tokens.parse_token(request["token"])
        except tokens.JoinTokenError as error:
            raise Refused("unauthenticated", str(error)) from None
        entry = self._join_entry(parsed.secret_hash)
        record = tokens.JoinTokenRecord(entry.node, entry.address, entry.expires_at, parsed.secret_hash,
                                        pki.ca_fingerprint(self._ca_pem))
        try:
            tokens.check_token(request["token"], record, now=clock.now())
        except tokens.JoinTokenError as error:
            raise Refused("unauthenticated", str(error)) from None
        if request["address"] != entry.address:
            raise Refused(WRONG_INPUT, f"the token admits node {entry.node} at {entry.address}, not at "
                                       f"{request['address']}; join with --address {entry.address}")
        leader = self.log.leader()
        if not self.log.is_leader() or self._ca_key_pem is None:
            raise Unavailable(f"only the leader admits new nodes; ask {leader or 'the leader, once elected'}")
        state = self.core.state
        voters = sum(1 for n in state.nodes.values() if n.role == "voter")
        role = "voter" if request.get("master_capable", True) and voters < MAX_VOTERS else "non-voter"
        host = entry.address.rpartition(":")[0]
        ca = pki.CertificateAuthority(self._ca_pem, self._ca_key_pem)
        try:
            cert = pki.issue_node_certificate(ca, entry.node, [host], clock.now(),
                                              public_key_pem=request["public_key_pem"].encode())
        except (ValueError, TypeError) as error:
            raise Refused(WRONG_INPUT, f"the public key could not be certified: {error}; send a PEM EC public "
                                       "key") from None
        await self._run_job([op("node_add", name=entry.node, address=entry.address, role=role,
                                memory_mib=request["memory_mib"], disk_mib=request["disk_mib"],
                                cpus=request["cpus"], master_capable=request.get("master_capable", True),
                                join_token_hash=parsed.secret_hash, certificate_serial=f"{cert.serial:x}")],
                            entry.issued_by, f"node {entry.node} joined with its token")
        state = self.core.state
        voters_now = {n.name: n.address for n in state.nodes.values() if n.role == "voter"}
        answer = {"cluster": state.cluster.name, "node": entry.node, "role": role, "voters": voters_now,
                  "ca_pem": self._ca_pem.decode(), "cert_pem": cert.cert_pem.decode(),
                  "raft_password": self._raft_password}
        if role == "voter":
            answer["ca_key_pem"] = self._ca_key_pem.decode()
        return answer

    # --- membership follows the state (leader only) ----------------------------------------------------------

    async def _answers(self, address: str) -> bool:
        try:
            with trio.fail_after(STATUS_TIMEOUT_S + 0.5):
                await self._ask_status(address)
        except (OSError, ValueError, KeyError, TypeError, trio.TooSlowError, http.client.HTTPException):
            return False
        return True

    def _removed(self) -> bool:
        """True once this node has applied its own removal (it was added at its address, and is gone)."""
        nodes = self.core.state.nodes
        return (self.address in self._ever_addresses and bool(nodes)
                and all(n.address != self.address for n in nodes.values()))

    def _note_addresses(self, records) -> None:
        """Remember every address a node was ever added at (a removed voter is known by it)."""
        for record in records:
            envelope = decode(record.payload, record.seq)
            if type(envelope.event) is ev.NodeAdded:
                self._ever_addresses.add(envelope.event.address)

    async def _reconcile_membership(self) -> None:
        """On the leader: make the log's voters the state's voters, one change at a time.

        A voter is added once its node is in the state as a voter (a join), and
        removed once a node the state knew at that address is gone (a node
        remove). An address the state never held (the voters of a cluster still
        in its bootstrap) is left alone. A leader that was removed itself hands
        leadership over first; the next leader removes it.
        """
        while True:
            await trio.sleep(MEMBERSHIP_EVERY_S)
            # A removed node stops once it no longer leads, or once it leads a log of no one but itself (the
            # others took it out of their voters before it could hand over: it would lead that forever).
            if self._removed() and (not self.log.is_leader() or len(self.log.status().voters) <= 1):
                log.warning("%s: this node was removed from the cluster; its daemon stops and its watchdog stands "
                            "down (wipe its data dir and join it again with a new token to bring it back)",
                            self.node_name)
                if self.watchdog is not None:
                    self.watchdog.renew(0.0, False)
                self.on_removed()
                return
            if not self.log.is_leader() or not self.core.state.nodes or not hasattr(self.log, "add_voter"):
                continue
            nodes = self.core.state.nodes.values()
            wanted = {n.address for n in nodes if n.role == "voter"}
            known = {n.address for n in nodes}
            voters = set(self.log.status().voters)
            try:
                for address in sorted(wanted - voters):
                    # Only once its daemon answers: a voter counts in the majority from the moment it is added,
                    # and a cluster of one waiting for a second voter that has not started could not commit.
                    if not await self._answers(address):
                        continue
                    log.info("%s: adding voter %s", self.node_name, address)
                    await self.log.add_voter(address)
                    break
                else:
                    if self.address not in known and self.address in self._ever_addresses and len(voters) > 1:
                        # This node was removed while it led: hand over, and the next leader removes it.
                        log.info("%s: removed from the cluster; handing leadership over", self.node_name)
                        await self.log.transfer_leadership()
                        continue
                    for address in sorted(voters - known - {self.address}):
                        if address in self._ever_addresses:
                            log.info("%s: removing voter %s", self.node_name, address)
                            await self.log.remove_voter(address)
                            break
            except LogError as error:
                log.warning("%s: membership change failed (retrying): %s", self.node_name, error)


def _fence_pending(state: ClusterState, node: str) -> bool:
    """True while a node_fence job for `node` is queued or running: no lease for it until it has ended (a new
    leader does not know its predecessor reported the lapse, but the job is in the log)."""
    for job_id in state.active_jobs:
        for entry in state.jobs[job_id].operations:
            if entry.get("op") == "node_fence" and entry.get("params", {}).get("node") == node:
                return True
    return False


def _ended(state: ClusterState, request_id: str):
    """The job a request id made, once it has ended; None before."""
    job_id = state.job_requests.get(request_id)
    job = state.jobs.get(job_id) if job_id is not None else None
    return job if job is not None and job.status in JOB_FINISHED else None
