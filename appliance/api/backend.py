"""What the API needs from the daemon it runs in: `Backend`, implemented by `appliance.daemon.shell.NodeShell`.

The API never touches the log, the core or a driver itself; it reads the
state the backend hands it and asks the backend to submit, cancel and wait.
Tests serve the app over a small in-process backend with the same methods.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, Protocol

from appliance.model.state import ClusterState


class Unavailable(Exception):
    """The node cannot answer now (no leader, no quorum, still catching up): HTTP 503 with this message."""


class Refused(Exception):
    """The backend refused a request: `code` is a model error code, `message` says what to do."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Backend(Protocol):
    """One node's daemon, as the API sees it."""

    node_name: str

    def state(self) -> ClusterState:
        """The state this node has applied (a persistent snapshot: safe to read while the node goes on)."""

    def log_status(self) -> dict:
        """This member's view of the log: node, leader (node name or None), term, commit_seq, applied_seq,
        is_leader, voters (node names)."""

    async def barrier(self) -> int:
        """ReadIndex: learn the leader's commit seq, wait until this node applied it; return that seq.
        Raises Unavailable when no leader answers or the node does not catch up in time."""

    async def wait_applied(self, seq: int) -> None:
        """Wait until this node has applied `seq`."""

    async def changed(self, after_seq: int) -> int:
        """Wait until this node has applied something after `after_seq`; return the new applied seq."""

    async def submit(self, operations: list, actor: str, reason: str = "", request_id: str = "") -> int:
        """Propose a job; return its id once JobSubmitted is committed. Refused / Unavailable."""

    async def cancel(self, job: int, actor: str) -> None:
        """Propose a job's cancel request; return once committed. Refused / Unavailable."""

    async def wait_job(self, job: int) -> Any:
        """Wait until a job has ended; Refused(unknown_entity) for a job not known."""

    def records(self, first_seq: int, last_seq: int | None = None) -> Iterator:
        """Committed records (consensus.record.Record: seq, prev_hash, hash, payload) from this node's history."""

    def committed(self, after_seq: int) -> AsyncIterator:
        """Every committed record after `after_seq`, following the live log."""

    def state_at(self, seq: int) -> ClusterState:
        """The state as it was at `seq` (replayed from history); Refused(wrong_input) beyond the head."""

    def node_token_hash(self) -> str:
        """SHA-256 (hex) of the token members use to call each other (read-only, actor 'cairn-node')."""

    async def issue_join_token(self, node: str, address: str, ttl_s: int, actor: str) -> dict:
        """A one-time join token for `node` at `address`: {"token", "node", "address", "expires_at"}."""

    def join_ca(self, token_hash: str) -> str:
        """The CA certificate (PEM) for a caller naming an open join token by its hash; Refused(unauthenticated)."""

    def grant_lease(self, node: str, request: dict) -> dict:
        """(Leader.) A lease for `node`: {"granted", "lease_s", "armed", "commit_seq", "term", "liveness"}, or
        granted false with the reason; Unavailable on a member that is not (or not surely) the leader."""

    def liveness(self) -> dict:
        """Each node's liveness as the leader sees it: {name: {"liveness", "lease_age_s"}} ({} if not known)."""

    def lease_status(self) -> dict:
        """This node's own lease: {"held", "remaining_s", "note"}."""

    async def accept_incoming(self, instance: str, hypervisor: str, runtime: dict) -> dict:
        """(Migration target.) Start the destination of a live migration from the source's runtime description;
        {"uri": where the source sends the machine}; Refused(wrong_state) when it cannot, with the reason."""

    async def export_disk(self, instance: str, index: int) -> dict:
        """(Secondary.) Export this node's copy of disk `index` of a replicated kvm instance; {"address":
        HOST:PORT}; Refused(wrong_state) with the reason when it cannot."""

    async def abort_incoming(self, instance: str, hypervisor: str) -> None:
        """(Migration target.) End the destination of a migration that failed or was cancelled."""

    async def console_path(self, instance: str) -> str:
        """(The instance's primary.) The unix socket of the instance's serial console on this node;
        Refused(wrong_state) when its hypervisor has no console or the instance does not run here."""

    async def join(self, request: dict) -> dict:
        """Admit a new node presenting a join token (docs/api.md); Refused(unauthenticated) for a bad token,
        Unavailable on a member that is not the leader."""
