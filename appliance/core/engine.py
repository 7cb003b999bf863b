"""The job engine: turns committed jobs into committed steps, on the leader only, from committed data only.

Each call to `drive(state, now)` reads the state and returns what to propose
next; it keeps no progress of its own beyond which proposals are in flight.
It acts only after its own LeaderElected is applied, so every entry an older
leader managed to commit is already in the state it reads: two leaders never
drive one job. A job's life, all of it in the log:

    JobSubmitted -> JobAdmitted (claims, by id) -> per operation:
        JobOperationPlanned (resolved params, generated values, steps) ->
        per step: its events, then JobProgressed once they are applied,
        then its waits (typed predicates with a timeout) ->
    JobSucceeded | JobFailed | JobCanceled

Event ids derive from (job, operation, step, index), so a step proposed again
by a retry or by a new leader is recognised as a repeat by replay's window.
"""

from __future__ import annotations

import random
from typing import Any

from appliance.core import guards, waits
from appliance.core.io import Proposal
from appliance.core.plans import decode_steps, encode_steps, event_id, plain
from appliance.model import events as ev
from appliance.model.codec import Envelope
from appliance.model.errors import WRONG_INPUT, WRONG_STATE, PrereqError
from ops import base, registry

# Why a job fails when a new leader finds its compensation under way and no longer knows the verdict.
UNDONE = waits.Verdict(failed=True, compensate=True, code=waits.FAILED,
                       message="a step did not reach what it waited for, and was undone")
# A proposal not applied after this long is proposed again (same id: a repeat changes nothing).
RETRY_S = 5.0
ENGINE_ACTOR = "cairn"


class JobEngine:
    """The leader's job runner: stateless over the cluster state, except for proposals in flight."""

    def __init__(self, node: str, bugs: frozenset = frozenset()) -> None:
        self.node = node
        self.leader: str | None = None
        self.term = 0
        self.inflight: dict[bytes, float] = {}
        self.bugs = bugs
        self.replans: dict[int, tuple] = {}     # bug switch only: steps planned again after a leader change
        self.replanted = False
        # What this leader has proposed in its term and must stand by: a proposal whose outcome is unknown may
        # still commit, so neither a step once proposed nor a job's end once decided is ever contradicted.
        self.steps_proposed: set[tuple] = set()
        self.endings: dict[int, tuple] = {}
        # Committed data never changes, so what is derived from it is kept while the job is active: the claims
        # a job holds (or asked for in an admission still in flight), and each operation's decoded steps.
        self.claims: dict[int, base.Claims] = {}
        self.verdicts: dict[int, waits.Verdict] = {}
        self.queued: dict[int, tuple] = {}      # a waiting job's claims, and the name maps they were resolved with
        self.steps: dict[tuple, tuple] = {}

    # --- leadership ---------------------------------------------------------

    def on_leadership(self, leader: str | None, term: int) -> None:
        if (leader, term) != (self.leader, self.term):
            self.inflight.clear()
            self.replans.clear()
            self.replanted = False
            self.steps_proposed.clear()
            self.endings.clear()
            self.claims.clear()
            self.steps.clear()
            self.verdicts.clear()
            self.queued.clear()
        self.leader, self.term = leader, term

    @property
    def leading(self) -> bool:
        return self.leader == self.node

    def active(self, state) -> bool:
        """True once this node's own LeaderElected for its current term is applied."""
        return self.leading and state.leader_node == self.node and state.leader_term == self.term

    def forget(self, eid: bytes) -> None:
        """A proposal committed or was lost: it may be proposed again if still needed."""
        self.inflight.pop(eid, None)

    # --- the drive loop -------------------------------------------------------

    def drive(self, state, now: float) -> tuple[list[Proposal], float | None]:
        """What to propose now, and when to look again (the earliest wait deadline)."""
        out: list[Proposal] = []
        if not self.leading:
            return out, None
        if not self.active(state):
            self._propose(out, now, ("leader", self.node, self.term), ev.LeaderElected(self.node, self.term),
                          0, ENGINE_ACTOR, f"{self.node} leads in term {self.term}")
            return out, None
        if "replan_after_leader_change" in self.bugs and not self.replanted:
            self.replanted = True
            self._plant_replans(state, now)
        active = state.active_jobs
        for job_id in [j for j in self.endings if j not in active]:
            del self.endings[job_id]
        if len(self.claims) > len(active) or len(self.queued) > len(active):
            self._forget_ended(active)
        held = base.HeldClaims()
        queued: list = []
        for job_id in sorted(active):
            job = state.jobs[job_id]
            if job.status != "queued":
                claims = self.claims.get(job_id)
                if claims is None:
                    claims = self.claims[job_id] = base.Claims.from_payload(job.claims)
                held.add(claims)
            else:
                queued.append(job)
        wake = None
        for job in queued:
            if job.id in self.endings:
                self._propose(out, now, *self.endings[job.id])
            else:
                self._admit(out, state, job, held, now)
        for job_id in sorted(active):
            job = state.jobs[job_id]
            if job.status != "running":
                continue
            if job_id in self.endings:
                self._propose(out, now, *self.endings[job_id])
            else:
                deadline = self._advance(out, state, job, now)
                if deadline is not None and (wake is None or deadline < wake):
                    wake = deadline
        return out, wake

    def _forget_ended(self, active) -> None:
        for job_id in [j for j in self.claims if j not in active]:
            del self.claims[job_id]
        for key in [k for k in self.steps if k[0] not in active]:
            del self.steps[key]
        for job_id in [j for j in self.verdicts if j not in active]:
            del self.verdicts[job_id]
        for job_id in [j for j in self.queued if j not in active]:
            del self.queued[job_id]

    def _in_flight(self, key: tuple, now: float) -> bool:
        """True while a proposal with this key waits to be applied (and is not yet due again)."""
        sent = self.inflight.get(event_id(*key))
        return sent is not None and now - sent < RETRY_S

    def _propose(self, out: list, now: float, key: tuple, event: Any, job: int, actor: str, reason: str) -> bytes:
        eid = event_id(*key)
        if "step_twice" in self.bugs and key[0] == "step":
            eid = random.Random(repr((key, now))).randbytes(16)
        sent = self.inflight.get(eid)
        if sent is None or now - sent >= RETRY_S:
            self.inflight[eid] = now
            out.append(Proposal(Envelope(eid, event, actor, reason, now, job), key))
        return eid

    def _job_event(self, out, now, job, key: tuple, event: Any, reason: str) -> bytes:
        arguments = (key, event, job.id, job.actor, reason or job.reason)
        if isinstance(event, (ev.JobSucceeded, ev.JobFailed, ev.JobCanceled)):
            self.endings[job.id] = arguments
        return self._propose(out, now, *arguments)

    # --- admission ------------------------------------------------------------

    def _admit(self, out: list, state, job, held: base.HeldClaims, now: float) -> None:
        """Admit a queued job whose claims conflict with no running (or earlier blocked) job."""
        if job.id in self.claims and self._in_flight(("job", job.id, "admitted"), now):
            held.add(self.claims[job.id])
            return
        try:
            claims = self._queued_claims(state, job)
        except PrereqError as error:
            self._fail(out, now, job, error.code, error.message)
            return
        if not base.queue_admits(state, [registry.get(o["op"]) for o in job.operations], now):
            held.add(claims)
            return
        if job.cancel_requested:
            self._job_event(out, now, job, ("job", job.id, "canceled"), ev.JobCanceled(job.id), "canceled while queued")
            return
        conflict = held.conflicts(claims)
        held.add(claims)
        if not conflict:
            self.claims[job.id] = claims
            self._job_event(out, now, job, ("job", job.id, "admitted"), ev.JobAdmitted(job.id, claims.as_payload()),
                            "no conflicting claims")

    def _queued_claims(self, state, job) -> base.Claims:
        """A waiting job's claims, computed again only when an entity name may resolve differently."""
        names = (state.instance_names, state.node_names, state.group_names)
        cached = self.queued.get(job.id)
        if cached is not None and all(a is b for a, b in zip(cached[1], names)):
            return cached[0]
        claims = job_claims(state, job)
        self.queued[job.id] = (claims, names)
        return claims

    # --- running jobs -----------------------------------------------------------

    def _advance(self, out: list, state, job, now: float) -> float | None:
        """Propose the job's next move; return the deadline of a wait it is blocked on."""
        index = job.operation_index
        if job.planned < index:
            if job.cancel_requested:
                self._job_event(out, now, job, ("job", job.id, "canceled"), ev.JobCanceled(job.id),
                                "canceled between operations")
            elif not self._in_flight(("job", job.id, "planned", index), now):
                self._plan(out, state, job, index, now)
            return None
        steps = self.replans.get(job.id) or self._steps(job)
        done = job.step_done
        if done >= 0 and self._compensating(state, job, steps[done]):
            # The undoing has begun: it runs to its end and the job fails, whatever the waits say now.
            self._compensate(out, state, job, steps[done], self.verdicts.get(job.id, UNDONE), now)
            return None
        if done >= 0 and not self._started(state, job, steps, done + 1):
            verdict = waits.verdict(state, steps[done].waits, job.step_done_at, now)
            if verdict.pending:
                return verdict.deadline
            if verdict.failed and verdict.retry and self._attempts(job, done) <= base.STEP_RETRIES:
                self._retry(out, state, job, steps[done], now)
                return None
            if verdict.failed:
                self.verdicts[job.id] = verdict
                self._compensate(out, state, job, steps[done], verdict, now)
                return None
        following = done + 1
        if following < len(steps):
            self._run_step(out, state, job, steps, following, now)
        elif index + 1 < len(job.operations):
            if job.cancel_requested:
                self._job_event(out, now, job, ("job", job.id, "canceled"), ev.JobCanceled(job.id),
                                "canceled between operations")
            elif not self._in_flight(("job", job.id, "planned", index + 1), now):
                self._plan(out, state, job, index + 1, now)
        else:
            self._finish(out, state, job, now)
        return None

    def _steps(self, job) -> tuple:
        """The committed steps of the job's current operation, decoded once."""
        key = (job.id, job.operation_index)
        steps = self.steps.get(key)
        if steps is None:
            steps = self.steps[key] = decode_steps(job.plan)
        return steps

    def _compensating(self, state, job, step) -> bool:
        """True once any compensation event of the step is applied."""
        return any(event_id("compensation", job.id, job.operation_index, job.step_done, position) in state.recent_events
                   for position in range(len(step.compensation)))

    def _started(self, state, job, steps: tuple, number: int) -> bool:
        """True once any event of step `number` is applied: the waits before it held, and stay passed.

        A step's own events may undo what the step before it waited for (making
        the target the primary ends the migration it waited on), so waits are
        judged only until the next step has begun.
        """
        if number >= len(steps):
            return False
        tag = "replan" if job.id in self.replans else "step"
        return any(event_id(tag, job.id, job.operation_index, number, position) in state.recent_events
                   for position in range(len(steps[number].events)))

    def _plan(self, out: list, state, job, index: int, now: float) -> None:
        """Resolve, prepare, check and plan one operation, and commit the result (never planned twice)."""
        entry = job.operations[index]
        try:
            op = operation(entry)
            params = base.resolve(state, op, base.params_from(op, entry["params"]))
            rng = random.Random(f"{job.id}:{index}")
            params = op.prepare(state, params, rng)
            if state.cluster is None and not op.BEFORE_INIT:
                raise PrereqError(WRONG_STATE, "The cluster is not initialised; run 'cairn cluster init' first")
            base.check_role(state, op, job.actor)
            op.check(state, params)
            plan = op.plan(state, params)
            base.check_maintenance(state, plan, now)
        except PrereqError as error:
            self._fail(out, now, job, error.code, error.message)
            return
        result = plan.result
        if isinstance(result, base.ResultWithJobs):
            result = {"follow_up_jobs": result.jobs, "summary": result.summary}
        planned = ev.JobOperationPlanned(
            job.id, index, plain(base.params_payload(params)), encode_steps(plan.steps),
            tuple(r.as_payload() for r in plan.reservations), tuple(plan.macs), plain(result))
        self._job_event(out, now, job, ("job", job.id, "planned", index), planned, f"planning {op.NAME}")

    def _run_step(self, out: list, state, job, steps: tuple, number: int, now: float) -> None:
        """Propose a step's events (guarded); once all are applied, its JobProgressed marker."""
        step = steps[number]
        index = job.operation_index
        tag = "replan" if job.id in self.replans else "step"
        pending = []
        for position, event in enumerate(step.events):
            eid = event_id(tag, job.id, index, number, position)
            if eid not in state.recent_events:
                pending.append((position, event))
        proposed = (job.id, index, number) in self.steps_proposed
        if pending and len(pending) == len(step.events) and not proposed:
            problem = guards.problem(state, step)
            if problem is not None:
                self._fail(out, now, job, WRONG_STATE, f"cannot go on with '{step.message}': {problem}")
                return
        self.steps_proposed.add((job.id, index, number))
        for position, event in pending:
            self._job_event(out, now, job, (tag, job.id, index, number, position), event, step.message)
        if not pending or "step_twice" in self.bugs:
            progressed = ev.JobProgressed(job.id, index, number, step.message)
            self._job_event(out, now, job, ("job", job.id, "progressed", index, number), progressed, step.message)

    @staticmethod
    def _attempts(job, number: int) -> int:
        """How many times step `number` of the current operation has been run (its committed JobProgressed)."""
        return sum(1 for entry in job.progress if tuple(entry) == (job.operation_index, number))

    def _retry(self, out: list, state, job, step, now: float) -> None:
        """Run the step again: its events under the attempt's own ids, then JobProgressed (a new deadline)."""
        index, number, attempt = job.operation_index, job.step_done, self._attempts(job, job.step_done)
        pending = False
        for position, event in enumerate(step.events):
            key = ("retry", job.id, index, number, position, attempt)
            if event_id(*key) not in state.recent_events:
                pending = True
                self._job_event(out, now, job, key, event, f"retrying '{step.message}'")
        if not pending:
            progressed = ev.JobProgressed(job.id, index, number, f"retrying '{step.message}' (attempt {attempt + 1})")
            self._job_event(out, now, job, ("job", job.id, "progressed", index, number, attempt), progressed,
                            progressed.message)

    def _compensate(self, out: list, state, job, step, verdict, now: float) -> None:
        """A wait failed: commit the step's compensation (if the wait asks for it), then fail the job."""
        index, done = job.operation_index, job.step_done
        if verdict.compensate:
            missing = False
            for position, event in enumerate(step.compensation):
                key = ("compensation", job.id, index, done, position)
                if event_id(*key) not in state.recent_events:
                    missing = True
                    self._job_event(out, now, job, key, event, f"undoing '{step.message}'")
            if missing:
                return
        self._fail(out, now, job, verdict.code, verdict.message)

    def _finish(self, out: list, state, job, now: float) -> None:
        """Submit follow-up jobs if the last operation asked for them, then record success."""
        results = tuple(job.results) + (job.op_result,)
        last = job.op_result
        if isinstance(last, dict) and last.get("follow_up_jobs"):
            ids = []
            for number, operations in enumerate(last["follow_up_jobs"]):
                request = f"job-{job.id}-follow-up-{number}"
                child = state.job_requests.get(request)
                if child is None:
                    self._job_event(out, now, job, ("job", job.id, "follow-up", number),
                                    ev.JobSubmitted(tuple(operations), request),
                                    f"follow-up of job {job.id}" + (f": {job.reason}" if job.reason else ""))
                ids.append(child)
            if any(child is None for child in ids):
                return
            results = tuple(job.results) + ({"summary": last.get("summary"), "jobs": tuple(ids)},)
        self._job_event(out, now, job, ("job", job.id, "succeeded"), ev.JobSucceeded(job.id, results), "done")

    def _fail(self, out: list, now: float, job, code: str, message: str) -> None:
        self._job_event(out, now, job, ("job", job.id, "failed"), ev.JobFailed(job.id, code, message), message)

    # --- a planted bug, for proving the simulator ---------------------------------

    def _plant_replans(self, state, now: float) -> None:
        """Bug switch: plan running operations again from the current state after a leader change."""
        for job_id in state.active_jobs:
            job = state.jobs[job_id]
            if job.status != "running" or job.planned < job.operation_index or job.step_done < 0:
                continue
            entry = job.operations[job.operation_index]
            try:
                op = operation(entry)
                params = base.resolve(state, op, base.params_from(op, entry["params"]))
                self.replans[job_id] = op.plan(state, params).steps or decode_steps(job.plan)
            except (PrereqError, KeyError, TypeError):
                continue


def operation(entry: Any):
    """The operation module a job entry names; PrereqError for anything malformed."""
    if not isinstance(entry, dict) or not isinstance(entry.get("op"), str) or not isinstance(entry.get("params"), dict):
        raise PrereqError(WRONG_INPUT, "each operation must be {'op': NAME, 'params': {...}}")
    try:
        return registry.get(entry["op"])
    except KeyError as error:
        raise PrereqError(WRONG_INPUT, str(error.args[0])) from None


def job_claims(state, job) -> base.Claims:
    """The union of the claims of a job's operations, taken on ids (names for what does not exist yet)."""
    claims = base.Claims()
    for entry in job.operations:
        op = operation(entry)
        params = base.params_from(op, entry["params"])
        claims |= op.claims(state, params)
    return claims
