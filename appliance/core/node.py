"""`NodeCore`: one node's whole decision logic, `step(input) -> Ready`, with no I/O.

It holds the state folded from committed records, the job engine (which acts
only while this node leads) and the reconciler (which acts only on this
node's machine). The shell feeds it committed records, submissions, cancel
requests, driver results, ticks and leadership changes, and performs exactly
what the returned Ready says: propose these events, run these driver
actions, answer these callers, wake me at this time.
"""

from __future__ import annotations

from typing import Any

from appliance.core import engine as engine_module
from appliance.core.engine import JobEngine
from appliance.core.healer import Healer
from appliance.core.io import (
    CancelRequested, Committed, CommittedBatch, DriverDone, LeaderCommit, LeadershipChanged, LeaseLost, NodeLapsed,
    NodeReturned, Proposal, ProposalLost, Ready, Reply, Submitted, Tick, WaitForJob, WaitForSeq, WatchdogArmed,
)
from appliance.core.plans import event_id
from appliance.core.reconciler import Reconciler
from appliance.model import events as ev
from appliance.model import replay
from appliance.model.codec import Envelope, decode
from appliance.model.errors import UNKNOWN_ENTITY, WRONG_INPUT, WRONG_STATE, PrereqError
from appliance.model.state import JOB_FINISHED, ClusterState
from ops import base


class NodeCore:
    """The decision logic of one node; `step` is its only entry point."""

    def __init__(self, node_name: str, state: ClusterState | None = None, bugs: frozenset = frozenset(),
                 reconcile: bool = True) -> None:
        self.node_name = node_name
        self.state = state if state is not None else ClusterState()
        self.engine = JobEngine(node_name, bugs)
        self.reconciler = Reconciler(node_name, bugs) if reconcile else None
        self.healer = Healer(node_name)
        self.now = 0.0
        self.submissions: dict[bytes, Any] = {}     # event id of a JobSubmitted -> caller token
        self.cancels: dict[bytes, Any] = {}
        self.outstanding: dict[bytes, list] = {}    # callers' proposals until they commit: [proposal, sent at]
        self.seq_waiters: list[tuple[int, Any]] = []    # (seq, token): callers waiting for this node to apply seq
        self.job_waiters: dict[int, list] = {}          # job id -> tokens of callers waiting for it to end
        self.submit_count = 0

    def step(self, message: Any) -> Ready:
        """Take one input; return what the shell must do."""
        ready = Ready()
        kind = type(message)
        if kind is Committed:
            self._committed(ready, message)
        elif kind is CommittedBatch:
            for record in message.records:
                self._committed(ready, record)
        elif kind is Tick:
            self.now = max(self.now, message.now)
        elif kind is Submitted:
            self._submitted(ready, message)
        elif kind is CancelRequested:
            self._cancel(ready, message)
        elif kind is DriverDone:
            self._driver_done(message)
        elif kind is WaitForSeq:
            self.seq_waiters.append((message.seq, message.token))
        elif kind is WaitForJob:
            self._wait_for_job(ready, message)
        elif kind is LeaderCommit:
            if self.reconciler is not None:
                self.reconciler.heard(message.seq, self.now, message.lease_until)
        elif kind is LeaseLost:
            if self.reconciler is not None:
                self.reconciler.lease_lost()
        elif kind is NodeLapsed:
            self.healer.lapsed(message.node, message.detail, self.now)
        elif kind is NodeReturned:
            self.healer.returned(message.node, self.now)
        elif kind is WatchdogArmed:
            self.healer.armed(message.node)
        elif kind is LeadershipChanged:
            self.engine.on_leadership(message.leader, message.term)
        elif kind is ProposalLost:
            self.engine.forget(message.event_id)
            if self.reconciler is not None:
                self.reconciler.lost(message.event_id)
            if message.event_id in self.outstanding:
                self.outstanding[message.event_id][1] = float("-inf")
        else:
            raise TypeError(f"NodeCore.step takes no {kind.__name__}")
        self._decide(ready)
        return ready

    # --- inputs ---------------------------------------------------------------

    def _committed(self, ready: Ready, record: Committed) -> None:
        envelope = decode(record.payload, record.seq)
        self.state = replay.apply(self.state, envelope, record.seq)
        self.engine.forget(envelope.event_id)
        if self.reconciler is not None and self.reconciler.report_ids:
            self.reconciler.committed(envelope.event_id)
        self.outstanding.pop(envelope.event_id, None)
        token = self.submissions.pop(envelope.event_id, None)
        if token is not None and type(envelope.event) is ev.JobSubmitted:
            job_id = self.state.job_requests.get(envelope.event.request_id) if envelope.event.request_id else None
            ready.replies.append(Reply(token, True, job_id if job_id is not None else self.state.next_job_id - 1))
        token = self.cancels.pop(envelope.event_id, None)
        if token is not None:
            ready.replies.append(Reply(token, True, envelope.event.job))

    def _submitted(self, ready: Ready, message: Submitted) -> None:
        """Check the job's shape and queue mode, then propose JobSubmitted; the reply comes when it commits."""
        try:
            operations = tuple(message.operations)
            if not operations:
                raise PrereqError(WRONG_INPUT, "A job needs at least one operation")
            for entry in operations:
                base.check_queue(self.state, engine_module.operation(entry), self.now)
        except PrereqError as error:
            ready.replies.append(Reply(message.token, False, code=error.code, message=error.message))
            return
        existing = self.state.job_requests.get(message.request_id) if message.request_id else None
        if existing is not None:
            ready.replies.append(Reply(message.token, True, existing))
            return
        self.submit_count += 1
        key = ("submit", message.request_id) if message.request_id else ("submit", self.node_name, self.submit_count,
                                                                          self.now)
        eid = event_id(*key)
        self.submissions[eid] = message.token
        envelope = Envelope(eid, ev.JobSubmitted(operations, message.request_id), message.actor,
                            message.reason, self.now, 0)
        self._send(ready, Proposal(envelope, key))

    def _cancel(self, ready: Ready, message: CancelRequested) -> None:
        job = self.state.jobs.get(message.job)
        if job is None:
            ready.replies.append(unknown_job(message.token, message.job))
            return
        if job.status not in ("queued", "waiting", "running"):
            ready.replies.append(Reply(message.token, False, code=WRONG_STATE,
                                       message=f"Job {message.job} has already ended ({job.status})"))
            return
        key = ("cancel", message.job)
        eid = event_id(*key)
        self.cancels[eid] = message.token
        self._send(ready, Proposal(Envelope(eid, ev.JobCancelRequested(message.job), message.actor,
                                            "cancel requested", self.now, message.job), key))

    def _send(self, ready: Ready, proposal: Proposal) -> None:
        """Propose a caller's event, and again after a loss or RETRY_S until it commits (same id)."""
        self.outstanding[proposal.envelope.event_id] = [proposal, self.now]
        ready.proposals.append(proposal)

    def _driver_done(self, message: DriverDone) -> None:
        if self.reconciler is None:
            return
        action = self.reconciler.find(message.action_id)
        if action is not None:
            self.reconciler.done(action, message.ok, message.value if message.ok else message.message)

    # --- decisions --------------------------------------------------------------

    def _wait_for_job(self, ready: Ready, message: WaitForJob) -> None:
        job = self.state.jobs.get(message.job)
        if job is None:
            ready.replies.append(unknown_job(message.token, message.job))
        elif job.status in JOB_FINISHED:
            ready.replies.append(Reply(message.token, True, job_summary(job)))
        else:
            self.job_waiters.setdefault(message.job, []).append(message.token)

    def _answer_waiters(self, ready: Ready) -> None:
        """Answer callers whose seq is applied, or whose job has ended."""
        if self.seq_waiters:
            due = [token for seq, token in self.seq_waiters if seq <= self.state.seq]
            if due:
                self.seq_waiters = [(seq, token) for seq, token in self.seq_waiters if seq > self.state.seq]
                ready.replies += [Reply(token, True, self.state.seq) for token in due]
        for job_id in [j for j in self.job_waiters if j not in self.state.active_jobs]:
            job = self.state.jobs.get(job_id)
            for token in self.job_waiters.pop(job_id):
                ready.replies.append(Reply(token, True, job_summary(job)) if job is not None else
                                     unknown_job(token, job_id))

    def _decide(self, ready: Ready) -> None:
        self._answer_waiters(ready)
        for entry in self.outstanding.values():
            if self.now - entry[1] >= engine_module.RETRY_S:
                entry[1] = self.now
                ready.proposals.append(entry[0])
        proposals, wake = self.engine.drive(self.state, self.now)
        ready.proposals += proposals
        ready.proposals += self.healer.decide(self.state, self.now, self.engine.active(self.state))
        if wake is not None:
            ready.wake_at = wake
        if self.reconciler is not None:
            reports, actions, again = self.reconciler.decide(self.state, self.now)
            ready.proposals += reports
            ready.actions += actions
            ready.wake_at = again if ready.wake_at is None else min(ready.wake_at, again)


def unknown_job(token: Any, job_id: int) -> Reply:
    return Reply(token, False, code=UNKNOWN_ENTITY, message=f"Job {job_id} not known; 'cairn job list' shows the jobs")


def job_summary(job) -> dict:
    """What a caller waiting on a job is told when it ends."""
    return {"job": job.id, "status": job.status, "result": job.result, "error_code": job.error_code,
            "error_message": job.error_message}
