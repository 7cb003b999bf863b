"""Real member processes on 127.0.0.1 for the consensus integration tests and the benchmark.

Each member is `python -m consensus.node` in its own OS process. Members are
killed by pid only, and `ProcessCluster.close` (run from fixtures' finally)
kills every process it started, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import trio

from consensus.client import NodeClient, open_client
from consensus.wire import read_secret

ROOT = Path(__file__).resolve().parents[2]


def shifted_port(node: str, offset: int) -> int:
    """The port PORT+offset of a node address HOST:PORT."""
    return int(node.rpartition(":")[2]) + offset


def free_base_ports(count: int) -> list[str]:
    """`count` node addresses whose three ports each are free right now."""
    from tests.contract.log_contract import free_node_address

    addresses: list[str] = []
    while len(addresses) < count:
        candidate = free_node_address()
        port = int(candidate.rpartition(":")[2])
        if all(abs(port - int(a.rpartition(":")[2])) > 3 for a in addresses):
            addresses.append(candidate)
    return addresses


class ProcessCluster:
    """A set of member processes sharing one secret, each with its own data directory."""

    def __init__(self, root: Path, voters: int = 3, non_voters: int = 0, fsync: str = "batch",
                 extra_args: tuple[str, ...] = ()) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.secret_file = self.root / "secret"
        self.secret_file.write_bytes(os.urandom(24).hex().encode())
        self.secret = read_secret(self.secret_file)
        addresses = free_base_ports(voters + non_voters)
        self.voters = addresses[:voters]
        self.non_voters = addresses[voters:]
        self.fsync = fsync
        self.extra_args = extra_args
        self.processes: dict[str, subprocess.Popen] = {}

    @property
    def nodes(self) -> list[str]:
        return self.voters + self.non_voters

    def data_dir(self, node: str) -> Path:
        return self.root / node.replace(":", "_")

    def start(self, node: str) -> None:
        """Start (or restart) one member process."""
        peers = [v for v in self.voters if v != node]
        command = [sys.executable, "-m", "consensus.node", "--self", node, "--peers", ",".join(peers),
                   "--data", str(self.data_dir(node)), "--secret-file", str(self.secret_file),
                   "--fsync", self.fsync, "--log-level", "INFO", *self.extra_args]
        if node in self.non_voters:
            command.append("--non-voter")
        log_file = open(self.root / (node.replace(":", "_") + ".log"), "ab")
        self.processes[node] = subprocess.Popen(command, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)
        log_file.close()

    def start_all(self) -> None:
        for node in self.nodes:
            self.start(node)

    def kill(self, node: str) -> None:
        """SIGKILL one member by its pid and reap it."""
        process = self.processes.pop(node, None)
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def stop(self, node: str) -> None:
        """SIGTERM one member and wait for it to exit (SIGKILL after 10 s)."""
        process = self.processes.pop(node, None)
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def alive(self) -> list[str]:
        return [n for n, p in self.processes.items() if p.poll() is None]

    def check_none_failed(self) -> None:
        """Raise, with its log's last lines, if a member exited on its own (not killed by the test)."""
        for node, process in self.processes.items():
            if process.poll() not in (None, -signal.SIGKILL):
                tail = " | ".join(self.log_text(node).splitlines()[-4:])
                raise RuntimeError(f"member {node} exited with status {process.returncode}: {tail}")

    def close(self) -> None:
        for node in list(self.processes):
            self.kill(node)

    def log_text(self, node: str) -> str:
        path = self.root / (node.replace(":", "_") + ".log")
        return path.read_text(errors="replace") if path.exists() else ""

    # -- asking members ----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def client(self, node: str):
        async with open_client(node, self.secret) as client:
            yield client

    async def status(self, node: str, timeout_s: float = 2.0) -> dict | None:
        """A member's status, or None when it does not answer."""
        try:
            with trio.fail_after(timeout_s):
                async with self.client(node) as client:
                    return await client.status()
        except (OSError, ConnectionError, trio.TooSlowError, TimeoutError):
            return None

    async def wait_leader(self, among: list[str] | None = None, timeout_s: float = 30.0,
                          not_in: tuple[str, ...] = ()) -> tuple[str, int]:
        """The leader (and its term) once a live member reports itself leader with quorum."""
        with trio.move_on_after(timeout_s):
            while True:
                for node in among or self.alive():
                    status = await self.status(node)
                    if status and status["is_leader"] and node not in not_in:
                        return node, status["term"]
                await trio.sleep(0.05)
        raise TimeoutError(f"no leader (other than {list(not_in)}) within {timeout_s} s; "
                           f"members now: {await self.describe()}")

    async def describe(self) -> str:
        """Each live member's view (state, term, leader, connections) and its log's last lines, for a failure message."""
        parts = []
        for node in self.alive():
            status = await self.status(node)
            view = {k: status.get(k) for k in ("raft_state", "term", "leader", "connected_voters", "has_quorum",
                                               "commit_idx", "log_len")} if status else "no answer"
            tail = " | ".join(self.log_text(node).splitlines()[-6:])
            parts.append(f"{node}: {view}; log: {tail}")
        return "; ".join(parts)

    async def wait_all_know_leader(self, timeout_s: float = 30.0) -> str:
        """Every live member names the same connected leader (and none has exited on its own)."""
        with trio.fail_after(timeout_s):
            while True:
                self.check_none_failed()
                leaders = set()
                for node in self.alive():
                    status = await self.status(node)
                    leaders.add(status["leader"] if status else None)
                if len(leaders) == 1 and None not in leaders:
                    return leaders.pop()
                await trio.sleep(0.05)

    async def wait_full_mesh(self, timeout_s: float = 30.0) -> None:
        """Every live voter is connected to every other voter (a steady state to start a failure from)."""
        with trio.fail_after(timeout_s):
            while True:
                statuses = [await self.status(node) for node in self.alive() if node in self.voters]
                if all(s and s["connected_voters"] == len(self.voters) - 1 and s["leader"] for s in statuses):
                    return
                await trio.sleep(0.05)

    async def wait_same_head(self, nodes: list[str] | None = None, timeout_s: float = 60.0) -> tuple[int, bytes]:
        """Every given member reaches the same head; returns it."""
        with trio.fail_after(timeout_s):
            while True:
                heads = set()
                for node in nodes or self.alive():
                    try:
                        async with self.client(node) as client:
                            head = await client.head()
                        heads.add((head.seq, head.hash))
                    except (OSError, ConnectionError, TimeoutError):
                        heads.add(None)
                if len(heads) == 1 and None not in heads:
                    return heads.pop()
                await trio.sleep(0.1)


async def propose_with_retry(client: NodeClient, payload: bytes, attempts: int = 100) -> int:
    """Propose until it commits, retrying the same payload on every failure kind."""
    from consensus.log import LogError

    last: Exception | None = None
    for _attempt in range(attempts):
        try:
            return await client.propose(payload, timeout_s=2.0)
        except (LogError, TimeoutError) as error:
            last = error
            await trio.sleep(0.05)
    raise AssertionError(f"payload never committed: {last}")
