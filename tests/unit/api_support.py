"""Shared builders for the API tests: a sandboxed cluster with users, a FakeBackend over it, TLS files, an HTTP caller.

No tests here. The backend holds a real ClusterState built by running
operations through `Sandbox`, and every event committed through it also
becomes a chained record, so history, tail and export see what the state saw.
"""

from __future__ import annotations

import http.client
import json
import ssl
import socket
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from appliance import clock, pki
from appliance.api.auth import node_token
from appliance.api.backend import Refused, Unavailable
from appliance.model import codec, replay
from appliance.model import events as ev
from appliance.model.errors import UNKNOWN_ENTITY, WRONG_INPUT
from appliance.model.state import JOB_FINISHED
from appliance.sandbox import Sandbox
from consensus.record import ChainHead, next_record

RAFT_PASSWORD = "raft-password-for-tests"
NODES = ("n1.example.com", "n2.example.com", "n3.example.com")


@dataclass
class Tokens:
    """One bearer token per role of the test cluster, and the node token."""

    admin: str = field(default_factory=pki.new_credential)
    operator: str = field(default_factory=pki.new_credential)
    reader: str = field(default_factory=pki.new_credential)
    node: str = node_token(RAFT_PASSWORD)
    unknown: str = field(default_factory=pki.new_credential)


def sandbox_cluster(tokens: Tokens) -> Sandbox:
    """Three nodes (n1 leads), users admin/oper/viewer with tokens, web1 running on n1 (replicated to n2), web2 down."""
    box = Sandbox(1)
    box.run("cluster_init", name="c.example.com", admin_credential_hash=pki.credential_hash(tokens.admin))
    for name in NODES:
        box.run("node_add", name=name, memory_mib=4096, disk_mib=100_000, cpus=4)
    box.run("user_add", name="oper", role="operator", credential_hash=pki.credential_hash(tokens.operator))
    box.run("user_add", name="viewer", role="read-only", credential_hash=pki.credential_hash(tokens.reader))
    box.run("instance_add", name="web1", primary=NODES[0], secondary=NODES[1], disk_template="replicated",
            os="debian-12", memory_mib=1024, disks=(2048,))
    web1 = box.state.instance_by_name("web1")
    box.commit(ev.InstanceObservedRunning(web1.id, web1.primary))
    box.run("instance_add", name="web2", primary=NODES[2], disk_template="diskless", os="debian-12",
            memory_mib=512, start=False)
    box.commit(ev.LeaderElected(NODES[0], 1))
    return box


class FakeBackend:
    """The Backend protocol over a Sandbox: commits go to the state and to a chained record history."""

    node_name = NODES[0]

    def __init__(self, box: Sandbox) -> None:
        self.box = box
        self.history: list = []
        for envelope in box.envelopes:
            self._append(envelope)
        box.sink = self._committed
        self._change = trio.Event()
        self.submitted: list[dict] = []
        self.canceled: list[tuple[int, str]] = []
        self.barriers = 0
        self.unavailable: str | None = None
        self.refusal: Refused | None = None

    def _append(self, envelope) -> None:
        head = self.history[-1] if self.history else ChainHead()
        self.history.append(next_record(head, codec.encode(envelope)))

    def _committed(self, envelope) -> None:
        self._append(envelope)
        self._change.set()
        self._change = trio.Event()

    def commit(self, event, actor: str = "admin", reason: str = ""):
        """Commit one event as the cluster would (state and history)."""
        return self.box.commit(event, actor, reason)

    # --- the Backend protocol -----------------------------------------------------

    def state(self):
        return self.box.state

    def log_status(self) -> dict:
        seq = self.box.state.seq
        return {"node": self.node_name, "leader": NODES[0], "term": 1, "commit_seq": seq, "applied_seq": seq,
                "is_leader": True, "voters": list(NODES)}

    async def accept_incoming(self, instance: str, hypervisor: str, runtime: dict) -> dict:
        if hypervisor != "kvm":
            raise Refused("wrong_state", f"hypervisor {hypervisor!r} takes no incoming migration")
        self.incoming = getattr(self, "incoming", []) + [("accept", instance, hypervisor, runtime)]
        return {"uri": "tcp:127.0.0.1:4444"}

    async def abort_incoming(self, instance: str, hypervisor: str) -> None:
        self.incoming = getattr(self, "incoming", []) + [("abort", instance, hypervisor, None)]

    async def console_path(self, instance: str) -> str:
        path = getattr(self, "console_sockets", {}).get(instance)
        if path is None:
            raise Refused("wrong_state", f"instance {instance} has no console on node {self.node_name}")
        return path

    def grant_lease(self, node: str, request: dict) -> dict:
        self.leases = getattr(self, "leases", []) + [(node, request)]
        return {"granted": True, "lease_s": 5, "armed": True, "commit_seq": self.box.state.seq, "term": 1,
                "liveness": self.liveness()}

    def liveness(self) -> dict:
        return {name: {"liveness": "alive", "lease_age_s": 0.2} for name in NODES}

    def lease_status(self) -> dict:
        return {"held": True, "remaining_s": 4.5, "note": "held"}

    async def barrier(self) -> int:
        self.barriers += 1
        if self.unavailable:
            raise Unavailable(self.unavailable)
        return self.box.state.seq

    async def wait_applied(self, seq: int) -> None:
        while self.box.state.seq < seq:
            await self._change.wait()

    async def changed(self, after_seq: int) -> int:
        while self.box.state.seq <= after_seq:
            await self._change.wait()
        return self.box.state.seq

    async def submit(self, operations: list, actor: str, reason: str = "", request_id: str = "") -> int:
        self.submitted.append({"operations": operations, "actor": actor, "reason": reason, "request_id": request_id})
        if self.refusal is not None:
            raise self.refusal
        known = self.box.state.job_requests.get(request_id) if request_id else None
        if known is not None:
            return known
        self.commit(ev.JobSubmitted(tuple(operations), request_id), actor, reason)
        return self.box.state.next_job_id - 1

    async def cancel(self, job: int, actor: str) -> None:
        if job not in self.box.state.jobs:
            raise Refused(UNKNOWN_ENTITY, f"Job {job} not known")
        self.canceled.append((job, actor))
        self.commit(ev.JobCancelRequested(job), actor)

    async def wait_job(self, job: int) -> Any:
        while True:
            found = self.box.state.jobs.get(job)
            if found is None:
                raise Refused(UNKNOWN_ENTITY, f"Job {job} not known")
            if found.status in JOB_FINISHED:
                return found
            await self._change.wait()

    def records(self, first_seq: int, last_seq: int | None = None):
        last = len(self.history) if last_seq is None else last_seq
        return iter(self.history[first_seq - 1:last])

    async def committed(self, after_seq: int):
        seq = after_seq
        while True:
            while seq < len(self.history):
                seq += 1
                yield self.history[seq - 1]
            await self._change.wait()

    def state_at(self, seq: int):
        if not 0 <= seq <= len(self.history):
            raise Refused(WRONG_INPUT, f"seq {seq} is not in this node's history (0..{len(self.history)})")
        return replay.fold(self.history[:seq])

    def node_token_hash(self) -> str:
        return pki.credential_hash(node_token(RAFT_PASSWORD))

    async def issue_join_token(self, node: str, address: str, ttl_s: int, actor: str) -> dict:
        raise Refused(WRONG_INPUT, "not in these tests")

    def join_ca(self, token_hash: str) -> str:
        raise Refused("unauthenticated", "this cluster issued no such join token")

    async def join(self, request: dict) -> dict:
        raise Refused("unauthenticated", "this cluster issued no such join token")


# --- TLS and HTTP --------------------------------------------------------------------

@dataclass(frozen=True)
class TlsFiles:
    ca_pem: bytes
    cert: Path
    key: Path

    def server_context(self):
        # As the daemon serves: a client certificate is asked for, not required (the CLI has none).
        context = pki.server_context(self.ca_pem, self.cert, self.key, require_client_cert=False)
        context.verify_mode = ssl.CERT_OPTIONAL
        return context

    def client_context(self, node: bool = True):
        """The CLI's context, or (node=True) a member's, which presents its node certificate."""
        return pki.client_context(self.ca_pem, self.cert, self.key) if node else pki.client_context(self.ca_pem)


def tls_files(directory: Path) -> TlsFiles:
    """A cluster CA and a certificate for n1 at 127.0.0.1, written as the daemon keeps them."""
    now = clock.now()
    ca = pki.create_ca("c.example.com", now)
    issued = pki.issue_node_certificate(ca, NODES[0], ["127.0.0.1"], now)
    cert, key = directory / "node.crt", directory / "node.key"
    pki.write_public_file(cert, issued.cert_pem)
    pki.write_secret_file(key, issued.key_pem)
    return TlsFiles(ca.cert_pem, cert, key)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def lines(self) -> list:
        return [json.loads(line) for line in self.body.splitlines() if line.strip()]


class UnixConnection(http.client.HTTPConnection):
    """Plain HTTP over a unix socket."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class Caller:
    """Calls the served API with the standard library, as the CLI does, from a worker thread."""

    def __init__(self, port: int | None = None, client_context=None, unix_path: str | None = None) -> None:
        self.port = port
        self.client_context = client_context
        self.unix_path = unix_path

    def connection(self, timeout: float = 5.0) -> http.client.HTTPConnection:
        if self.unix_path is not None:
            return UnixConnection(self.unix_path, timeout)
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.client_context, timeout=timeout)

    def request(self, method: str, path: str, token: str | None = None, body: Any = None,
                raw: bytes | None = None) -> Answer:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is not None:
            headers["Content-Type"] = "application/json"
        connection = self.connection()
        try:
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            connection.close()

    async def __call__(self, method: str, path: str, token: str | None = None, body: Any = None,
                       raw: bytes | None = None) -> Answer:
        return await trio.to_thread.run_sync(partial(self.request, method, path, token, body, raw))


# --- fixtures the API test modules share (import them by name: pytest finds them in the module) ---------

@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tokens():
    return Tokens()


@pytest.fixture
def backend(tokens):
    return FakeBackend(sandbox_cluster(tokens))
