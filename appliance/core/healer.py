"""The healer: on the leader, turns lapsed leases into fence jobs, and fenced nodes that come back into online jobs.

Liveness is not in the log: the leader's shell knows when it last granted
each node a lease, and tells the core `NodeLapsed` once a node has gone a
whole recovery interval without one (by then the node's watchdog has killed
its instances). The healer decides, and every decision is a job with a
reason, so `cairn job list` and `cairn events` show why a node was fenced and
where each instance went:

- `node_fence` (proof "lease", with the times) marks the node offline and
  records the fence proof; its follow-up jobs recover the instances;
- `node_modify --offline no` brings back a node fenced by its lease once it
  asks for a lease again having applied its fence and running nothing
  (`NodeReturned`). A node an operator marked offline stays offline.
- `instance_replace_disks -I hail` (Ganeti's harep, built in) gives a
  replicated instance whose secondary node is fenced a new secondary chosen
  by the placement engine; the new copy resyncs before it counts. At most
  REPAIRS_AT_ONCE repairs run at a time, cluster-wide; an instance tagged
  `cairn:repair:off` is left alone (its per-instance policy).

Neither happens while recovery is disarmed, nor for a node in maintenance
(its daemon may be stopped on purpose). Request ids make a repeat harmless:
the fence's names the node and its previous fence, and a fence job finds an
already fenced node fenced. A job of the healer's that ended without success
(an operator canceled it, or it failed) does not block the next decision: the
healer submits again under the next attempt's request id, up to
MAX_ATTEMPTS times per fence.
"""

from __future__ import annotations

from appliance.core.io import Proposal
from appliance.core.plans import event_id
from appliance.model import events as ev
from appliance.model.codec import Envelope

HEALER_ACTOR = "cairn-healer"
RESEND_S = 5.0
REPAIRS_AT_ONCE = 2
REPAIR_OFF_TAG = "cairn:repair:off"
REPAIR_PREFIX = "heal-repair-"
MAX_ATTEMPTS = 5


class Healer:
    """The leader's fencing decisions; fed by the shell's liveness tracking."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.lapses: dict[str, str] = {}       # node name -> what the shell said of its lapse
        self.returns: set[str] = set()         # fenced nodes that asked for a lease again
        self.arming: set[str] = set()          # nodes that reported their watchdog armed
        self.sent: dict[str, float] = {}       # request id -> when proposed

    def lapsed(self, node: str, detail: str, now: float) -> None:
        self.lapses[node] = detail

    def returned(self, node: str, now: float) -> None:
        self.returns.add(node)

    def armed(self, node: str) -> None:
        self.arming.add(node)

    def decide(self, state, now: float, active: bool) -> list[Proposal]:
        """Jobs to submit: only while this node leads (its own LeaderElected applied)."""
        out: list[Proposal] = []
        if not active or state.cluster is None:
            self.lapses.clear()
            self.returns.clear()
            self.arming.clear()
            return out
        for name in sorted(self.arming):
            node = state.node_by_name(name)
            key = f"armed-{name}"
            if node is None or not node.watchdog_down:
                self.arming.discard(name)
                self.sent.pop(key, None)
                continue
            sent = self.sent.get(key)
            if sent is None or now - sent >= RESEND_S:
                self.sent[key] = now
                proposal_key = ("heal", "armed", node.id, state.seq)
                out.append(Proposal(Envelope(event_id(*proposal_key), ev.NodeWatchdogArmed(node.id), HEALER_ACTOR,
                                             f"node {name} reports its watchdog armed", now, 0), proposal_key))
        disarmed = state.mode_active("recovery_disarmed", now)
        for name, detail in list(self.lapses.items()):
            node = state.node_by_name(name)
            if node is None or node.fenced or node.watchdog_down or disarmed \
                    or state.mode_active("maintenance", now, node.id):
                del self.lapses[name]
                continue
            request = f"heal-fence-{node.id}-{node.fenced_seq}"
            self._submit(out, state, now, request, {"op": "node_fence", "params": {
                "node": name, "proof": "lease", "detail": detail}}, f"node {name}: {detail}")
        for name in list(self.returns):
            node = state.node_by_name(name)
            self.returns.discard(name)
            if node is None or not node.fenced or not node.offline or node.fence_proof != "lease":
                continue
            request = f"heal-online-{node.id}-{node.fenced_seq}"
            self._submit(out, state, now, request, {"op": "node_modify", "params": {"node": name, "offline": False}},
                         f"node {name} came back after its fence: it has applied the fence, runs no instance and "
                         "asks for a lease")
        if not disarmed:
            self._repairs(out, state, now)
        return out

    def _repairs(self, out: list, state, now: float) -> None:
        """A new secondary for each replicated instance whose secondary is fenced, a few at a time."""
        running = sum(1 for job_id in state.active_jobs
                      if state.jobs[job_id].request_id.startswith(REPAIR_PREFIX))
        for instance in sorted(state.instances.values(), key=lambda i: (-i.ha_priority, i.name)):
            if running >= REPAIRS_AT_ONCE:
                return
            secondary = state.nodes.get(instance.secondary) if instance.secondary else None
            if instance.disk_template != "replicated" or secondary is None or not secondary.fenced \
                    or REPAIR_OFF_TAG in instance.tags or instance.migration_status == "running":
                continue
            primary = state.nodes.get(instance.primary)
            if primary is None or primary.offline or primary.fenced:
                continue        # the instance itself is down with its primary: recovery comes first
            request = f"{REPAIR_PREFIX}{instance.id}-{secondary.id}-{secondary.fenced_seq}"
            if request in state.job_requests:
                continue
            running += 1
            self._submit(out, state, now, request, {"op": "instance_replace_disks", "params": {
                "instance": instance.name, "iallocator": "hail"}},
                f"repair: instance {instance.name}'s secondary {secondary.name} is fenced; a new secondary chosen "
                "by hail gets a copy, resynced from the primary")

    def _submit(self, out: list, state, now: float, request: str, operation: dict, reason: str) -> None:
        request = _attempt(state, request)
        if request is None:
            return
        if request in state.job_requests:
            self.sent.pop(request, None)
            return
        sent = self.sent.get(request)
        if sent is not None and now - sent < RESEND_S:
            return
        self.sent[request] = now
        key = ("heal", request)
        envelope = Envelope(event_id(*key), ev.JobSubmitted((operation,), request), HEALER_ACTOR, reason, now, 0)
        out.append(Proposal(envelope, key))


def _attempt(state, request: str) -> str | None:
    """The request id to use: the first attempt whose job does not exist yet or has not ended without success
    (a canceled or failed job must not stop the healer for good); None once MAX_ATTEMPTS have ended so."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        candidate = request if attempt == 1 else f"{request}-attempt{attempt}"
        job = state.jobs.get(state.job_requests.get(candidate, -1))
        if job is None or job.status not in ("canceled", "error"):
            return candidate
    return None
