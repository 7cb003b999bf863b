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

Neither happens while recovery is disarmed, nor for a node in maintenance
(its daemon may be stopped on purpose). Request ids make a repeat harmless:
the fence's names the node and its previous fence, and a fence job finds an
already fenced node fenced.
"""

from __future__ import annotations

from appliance.core.io import Proposal
from appliance.core.plans import event_id
from appliance.model import events as ev
from appliance.model.codec import Envelope

HEALER_ACTOR = "cairn-healer"
RESEND_S = 5.0


class Healer:
    """The leader's fencing decisions; fed by the shell's liveness tracking."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.lapses: dict[str, str] = {}       # node name -> what the shell said of its lapse
        self.returns: set[str] = set()         # fenced nodes that asked for a lease again
        self.sent: dict[str, float] = {}       # request id -> when proposed

    def lapsed(self, node: str, detail: str, now: float) -> None:
        self.lapses[node] = detail

    def returned(self, node: str, now: float) -> None:
        self.returns.add(node)

    def decide(self, state, now: float, active: bool) -> list[Proposal]:
        """Jobs to submit: only while this node leads (its own LeaderElected applied)."""
        out: list[Proposal] = []
        if not active or state.cluster is None:
            self.lapses.clear()
            self.returns.clear()
            return out
        disarmed = state.mode_active("recovery_disarmed", now)
        for name, detail in list(self.lapses.items()):
            node = state.node_by_name(name)
            if node is None or node.fenced or disarmed or state.mode_active("maintenance", now, node.id):
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
        return out

    def _submit(self, out: list, state, now: float, request: str, operation: dict, reason: str) -> None:
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
