"""Benchmark the replicated log: 3 pysyncobj members (production settings) against a 3-member etcd, same harness.

    .venv/bin/python bench/consensus.py [--seconds 4] [--failovers 10] [--no-etcd]

Each member runs as its own process (consensus.node, password on, fsync
policy `batch` unless --fsync always). One client process (this one) drives
the leader with 1, 16 and 128 concurrent Trio tasks over one authenticated
connection, for 200-byte and 2 KB payloads, and measures records/s and
p50/p99 commit latency. Failover: kill -9 of the leader (its sockets close,
as when a daemon crashes) to the first acknowledged proposal, probes every
20 ms through the survivors; and a silent loss (SIGSTOP of the leader: its
sockets stay open and it says nothing, as a dead machine or a partition),
which only the election timeout detects. When etcd is
installed, a 3-member etcd cluster on loopback is driven through its v3
HTTP/JSON gateway (POST /v3/kv/put, 200-byte values) by the same harness,
one keep-alive connection per task. Both clusters run at once and the
200-byte runs alternate between them (3 rounds, median), so load from other
processes on the machine hits both alike. The last line is the RESULT line.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from consensus.log import LogError  # noqa: E402
from tests.integration.consensus_cluster import ProcessCluster, free_base_ports  # noqa: E402

CONCURRENCY = (1, 16, 128)
SIZES = (200, 2048)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


async def drive(propose, concurrency: int, seconds: float) -> dict:
    """Run `concurrency` tasks calling `propose(task, n)` for `seconds`; rate and latencies."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker(task: int) -> None:
        nonlocal errors
        n = 0
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                await propose(task, n)
                latencies.append(time.perf_counter() - started)
            except (LogError, OSError, ConnectionError, TimeoutError):
                errors += 1
            n += 1

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for task in range(concurrency):
            nursery.start_soon(worker, task)
    elapsed = time.perf_counter() - started
    return {"rate": len(latencies) / elapsed, "p50_ms": percentile(latencies, 0.5) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000, "ops": len(latencies), "errors": errors}


# -- pysyncobj ------------------------------------------------------------------------------


def cairn_driver(client, size: int):
    def propose(task, n):
        return client.propose(f"{task}:{n}:".encode().ljust(size, b"x"), timeout_s=10.0)
    return propose


def report(system: str, size: int, concurrency: int, row: dict) -> None:
    print(f"{system:6s} {size:5d} B  conc {concurrency:4d}: {row['rate']:9.0f} /s  p50 {row['p50_ms']:7.2f} ms  "
          f"p99 {row['p99_ms']:7.2f} ms  errors {row['errors']}", flush=True)


def median_row(rows: list[dict]) -> dict:
    """The run with the median rate (its latencies come with it)."""
    return sorted(rows, key=lambda r: r["rate"])[len(rows) // 2]


async def measure(system: str, propose, size: int, concurrency: int, seconds: float) -> dict:
    await drive(propose, concurrency, min(1.0, seconds / 4))  # warm-up
    row = await drive(propose, concurrency, seconds)
    report(system, size, concurrency, row)
    return row


async def one_failover(cluster: ProcessCluster, silent: bool = False) -> float:
    """kill -9 (or with `silent` SIGSTOP) the leader; seconds until a survivor acknowledges a proposal."""
    await cluster.wait_full_mesh()
    await trio.sleep(0.5)
    leader, _term = await cluster.wait_leader()
    survivors = [n for n in cluster.voters if n != leader]
    acknowledged = trio.Event()
    killed_at: list[float] = []
    first_ack: list[float] = []

    async def probe(client, number):
        try:
            await client.propose(f"probe {number}".encode(), timeout_s=1.0)
        except (LogError, OSError, ConnectionError, TimeoutError):
            return
        if killed_at and not first_ack:
            first_ack.append(time.perf_counter())
            acknowledged.set()

    async with cluster.client(survivors[0]) as first, cluster.client(survivors[1]) as second:
        async with trio.open_nursery() as nursery:
            number = 0
            killed_at.append(time.perf_counter())  # before the signal: the process's exit is part of the failover
            if silent:
                os.kill(cluster.processes[leader].pid, signal.SIGSTOP)
            else:
                cluster.kill(leader)
            with trio.move_on_after(15):
                while not acknowledged.is_set():
                    for client in (first, second):
                        number += 1
                        nursery.start_soon(probe, client, number)
                    await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
    cluster.kill(leader)  # a stopped process too
    cluster.start(leader)
    await cluster.wait_all_know_leader()
    await cluster.wait_same_head(cluster.voters)
    return first_ack[0] - killed_at[0] if first_ack else float("inf")


# -- etcd -----------------------------------------------------------------------------------


class EtcdCluster:
    """Three etcd members on loopback with default flags."""

    def __init__(self, root: Path) -> None:
        self.root = root
        ports = [int(a.rpartition(":")[2]) for a in free_base_ports(3)]
        self.client_ports = ports
        self.peer_ports = [p + 1 for p in ports]
        self.processes: list[subprocess.Popen] = []

    def start(self) -> None:
        initial = ",".join(f"e{i}=http://127.0.0.1:{p}" for i, p in enumerate(self.peer_ports))
        for i, (client, peer) in enumerate(zip(self.client_ports, self.peer_ports)):
            log = open(self.root / f"etcd{i}.log", "ab")
            self.processes.append(subprocess.Popen(
                ["etcd", "--name", f"e{i}", "--data-dir", str(self.root / f"etcd{i}"),
                 "--listen-client-urls", f"http://127.0.0.1:{client}",
                 "--advertise-client-urls", f"http://127.0.0.1:{client}",
                 "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-cluster", initial, "--initial-cluster-state", "new",
                 "--initial-cluster-token", "cairn-bench"], stdout=log, stderr=subprocess.STDOUT))
            log.close()

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


class HttpConnection:
    """One keep-alive HTTP/1.1 connection speaking JSON."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stream: trio.SocketStream | None = None
        self.buffer = b""

    async def post(self, path: str, document: dict) -> dict:
        if self.stream is None:
            self.stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        body = json.dumps(document).encode()
        await self.stream.send_all(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        while b"\r\n\r\n" not in self.buffer:
            await self._more()
        header, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = header.decode("latin-1").split("\r\n")
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if fields.get("transfer-encoding") == "chunked":
            payload = await self._chunked()
        else:
            length = int(fields.get("content-length", "0"))
            while len(self.buffer) < length:
                await self._more()
            payload, self.buffer = self.buffer[:length], self.buffer[length:]
        if not lines[0].split()[1].startswith("2"):
            raise ConnectionError(f"etcd answered {lines[0]}: {payload[:200]!r}")
        return json.loads(payload or b"{}")

    async def _chunked(self) -> bytes:
        payload = b""
        while True:
            while b"\r\n" not in self.buffer:
                await self._more()
            size_line, self.buffer = self.buffer.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(self.buffer) < size + 2:
                await self._more()
            payload, self.buffer = payload + self.buffer[:size], self.buffer[size + 2:]
            if size == 0:
                return payload

    async def _more(self) -> None:
        chunk = await self.stream.receive_some(65536)
        if not chunk:
            raise ConnectionError("etcd closed the connection")
        self.buffer += chunk


async def etcd_leader_port(etcd: EtcdCluster) -> int:
    with trio.fail_after(60):
        while True:
            for port in etcd.client_ports:
                try:
                    status = await HttpConnection(port).post("/v3/maintenance/status", {})
                    if status.get("leader") and status["leader"] == status["header"]["member_id"]:
                        return port
                except (OSError, ConnectionError, ValueError, KeyError):
                    pass
            await trio.sleep(0.2)


class EtcdDriver:
    """Puts of 200-byte values over one keep-alive connection per task."""

    def __init__(self, port: int, concurrency: int) -> None:
        self.connections = [HttpConnection(port) for _ in range(concurrency)]
        self.value = base64.b64encode(b"v" * 200).decode()

    def put(self, task, n):
        key = base64.b64encode(f"bench/{task}/{n}".encode()).decode()
        return self.connections[task].post("/v3/kv/put", {"key": key, "value": self.value})

    async def aclose(self) -> None:
        for connection in self.connections:
            if connection.stream is not None:
                await connection.stream.aclose()


async def bench_side_by_side(cluster: ProcessCluster, etcd: EtcdCluster | None, seconds: float,
                             rounds: int) -> tuple[dict, dict | None]:
    """200-byte runs alternate between the two systems, `rounds` times, so load from elsewhere hits both alike."""
    cairn: dict = {}
    etcd_rows: dict | None = {} if etcd is not None else None
    leader, _term = await cluster.wait_leader()
    etcd_port = await etcd_leader_port(etcd) if etcd is not None else None
    async with cluster.client(leader) as client:
        for concurrency in CONCURRENCY:
            cairn_runs, etcd_runs = [], []
            for _round in range(rounds):
                cairn_runs.append(await measure("cairn", cairn_driver(client, 200), 200, concurrency, seconds))
                if etcd is not None:
                    driver = EtcdDriver(etcd_port, concurrency)
                    etcd_runs.append(await measure("etcd", driver.put, 200, concurrency, seconds))
                    await driver.aclose()
            cairn[(200, concurrency)] = median_row(cairn_runs)
            if etcd_rows is not None:
                etcd_rows[(200, concurrency)] = median_row(etcd_runs)
        for concurrency in CONCURRENCY:
            cairn[(2048, concurrency)] = await measure("cairn", cairn_driver(client, 2048), 2048, concurrency,
                                                       seconds)
    return cairn, etcd_rows


def etcd_available(install: bool) -> bool:
    if shutil.which("etcd"):
        return True
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "etcd-server", "etcd-client"],
                       check=False, capture_output=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return shutil.which("etcd") is not None


# -- main -------------------------------------------------------------------------------------


def result_line(cairn: dict, etcd: dict | None, failovers: list[float], silent: list[float]) -> str:
    fields = {"events_per_s_16": cairn[(200, 16)]["rate"], "events_per_s_128": cairn[(200, 128)]["rate"]}
    if etcd:
        fields.update({"etcd_events_per_s_16": etcd[(200, 16)]["rate"],
                       "etcd_events_per_s_128": etcd[(200, 128)]["rate"],
                       "ratio_16": cairn[(200, 16)]["rate"] / etcd[(200, 16)]["rate"],
                       "ratio_128": cairn[(200, 128)]["rate"] / etcd[(200, 128)]["rate"]})
    fields["failover_median_s"] = statistics.median(failovers) if failovers else float("nan")
    fields["failover_silent_median_s"] = statistics.median(silent) if silent else float("nan")
    fields["p99_ms_16"] = cairn[(200, 16)]["p99_ms"]
    formatted = {k: (f"{v:.0f}" if k.startswith(("events", "etcd")) else f"{v:.3g}" if "ratio" not in k
                     else f"{v:.2f}") for k, v in fields.items()}
    return "RESULT " + " ".join(f"{k}={v}" for k, v in formatted.items())


async def restart_with_history(cluster: ProcessCluster, records: int) -> tuple[float, float]:
    """Fill the log to `records`, kill -9 a follower, restart it: seconds until it answers and until it is caught up."""
    leader, _term = await cluster.wait_leader()
    async with cluster.client(leader) as client:
        head = (await client.head()).seq
        propose = cairn_driver(client, 200)
        remaining = max(0, records - head)

        async def worker(task: int) -> None:
            for n in range(task, remaining, 128):
                await propose(task, n)
        async with trio.open_nursery() as nursery:
            for task in range(128):
                nursery.start_soon(worker, task)
    await cluster.wait_same_head(cluster.voters, timeout_s=120)
    follower = next(n for n in cluster.voters if n != leader)
    cluster.kill(follower)
    started = time.perf_counter()
    cluster.start(follower)
    while await cluster.status(follower, timeout_s=0.5) is None:
        await trio.sleep(0.02)
    serving = time.perf_counter() - started
    await cluster.wait_same_head(cluster.voters, timeout_s=120)
    return serving, time.perf_counter() - started


def print_summary(cairn: dict, etcd: dict | None) -> None:
    print("\nmedian runs (records/s, p50 ms, p99 ms):", flush=True)
    for (size, concurrency), row in sorted(cairn.items()):
        line = f"  {size:5d} B conc {concurrency:4d}: cairn {row['rate']:7.0f} {row['p50_ms']:6.2f} {row['p99_ms']:6.2f}"
        if etcd and (size, concurrency) in etcd:
            other = etcd[(size, concurrency)]
            line += (f" | etcd {other['rate']:7.0f} {other['p50_ms']:6.2f} {other['p99_ms']:6.2f}"
                     f" | ratio {row['rate'] / other['rate']:.2f}")
        print(line, flush=True)


async def run(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="cairn-bench-consensus-"))
    cluster = ProcessCluster(root / "cairn", fsync=args.fsync, extra_args=tuple(args.node_args.split()))
    etcd = None
    try:
        cluster.start_all()
        if not args.no_etcd and etcd_available(install=True):
            (root / "etcd").mkdir()
            etcd = EtcdCluster(root / "etcd")
            etcd.start()
        await cluster.wait_all_know_leader()
        print(f"cairn: 3 members, password on, fsync={args.fsync}, group commit; "
              f"etcd: {'3 members, default flags' if etcd else 'not installed'}", flush=True)
        cairn, etcd_results = await bench_side_by_side(cluster, etcd, args.seconds, args.rounds)
        if etcd is not None:
            etcd.close()
        failovers = []
        for trial in range(args.failovers):
            failovers.append(await one_failover(cluster))
            print(f"failover {trial + 1}: {failovers[-1]:.3f} s", flush=True)
        silent = []
        for trial in range(args.failovers):
            silent.append(await one_failover(cluster, silent=True))
            print(f"silent failover {trial + 1}: {silent[-1]:.3f} s", flush=True)
        if args.restart_records:
            serving, caught_up = await restart_with_history(cluster, args.restart_records)
            print(f"restart of a follower holding {args.restart_records} records: serving after {serving:.2f} s, "
                  f"caught up after {caught_up:.2f} s", flush=True)
        print_summary(cairn, etcd_results)
        print(result_line(cairn, etcd_results, failovers, silent), flush=True)
    finally:
        cluster.close()
        if etcd is not None:
            etcd.close()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time per configuration")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per 200-byte configuration")
    parser.add_argument("--failovers", type=int, default=10,
                        help="leader kills for the failover median (and as many silent losses)")
    parser.add_argument("--fsync", choices=("batch", "always"), default="batch")
    parser.add_argument("--no-etcd", action="store_true", help="skip the etcd side")
    parser.add_argument("--restart-records", type=int, default=100_000,
                        help="history length for the follower-restart figure (0 skips it)")
    parser.add_argument("--node-args", default="", help="extra arguments for every member process")
    trio.run(run, parser.parse_args())


if __name__ == "__main__":
    main()
