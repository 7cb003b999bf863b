"""Benchmark the replicated log: 3 pysyncobj members (production settings) against a 3-member etcd.

    .venv/bin/python bench/consensus.py [--seconds 3] [--rounds 3] [--failovers 10] [--no-etcd]

Each member runs as its own process (consensus.node, password on). The
figures that make the ratios come from a cluster at `fsync=always` (an
acknowledged record is synced on a majority, as etcd syncs its WAL before it
answers); a second cluster at `fsync=batch` gives a second line. One client
process (this one) drives each leader with 1, 16 and 128 concurrent Trio
tasks over one authenticated connection, 200-byte and 2 KB payloads, and
measures records/s and p50/p99 commit latency.

etcd 3.4.23 (3 members on loopback, default flags) is driven by a Go gRPC
client, bench/etcd_load, which this program builds itself with Debian's Go
and golang-etcd-server-dev (GO111MODULE=off, GOPATH=/usr/share/gocode) and
caches by source hash; it puts 200-byte values to the leader at 16 and 128
clients, over one connection and over one connection per client. If Go or
the package cannot be installed the benchmark says so and exits non-zero.
The older harness (a Python client on etcd's HTTP/JSON gateway) still runs;
its figures are printed, labelled, and make no ratio. Each 200-byte
configuration alternates the systems for --rounds rounds and reports
medians, so load from other processes hits all of them alike.

Failover: kill -9 of the leader (its sockets close, as when a daemon
crashes) to the first acknowledged proposal, probes every 20 ms through the
survivors; and a silent loss (SIGSTOP of the leader: its sockets stay open
and it says nothing, as a dead machine or a partition), which only the
election timeout detects. The last line is the RESULT line.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
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
    print(f"{system:13s} {size:5d} B  conc {concurrency:4d}: {row['rate']:9.0f} /s  p50 {row['p50_ms']:7.2f} ms  "
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


# -- etcd's Go load client (bench/etcd_load) ---------------------------------------------------

GO_SOURCE = Path(__file__).resolve().parent / "etcd_load" / "main.go"
GOCODE = Path("/usr/share/gocode")
# golang-etcd-server-dev ships etcd 3.4.23 under this import path (github.com/coreos/etcd links to it).
CLIENTV3 = GOCODE / "src" / "go.etcd.io" / "etcd" / "clientv3"
GO_PACKAGES = ("golang-go", "golang-etcd-server-dev")
ETCD_PACKAGES = ("etcd-server", "etcd-client")


def apt_install(packages: tuple[str, ...]) -> str:
    """Install Debian packages (apt-get update once if the first try fails); what went wrong, or ''."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "not root or no apt-get, so nothing could be installed"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", *packages]
    if subprocess.run(install, capture_output=True, env=env).returncode == 0:
        return ""
    subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env)
    result = subprocess.run(install, capture_output=True, text=True, env=env)
    return "" if result.returncode == 0 else (result.stderr or result.stdout).strip()[-400:]


def require(condition, packages: tuple[str, ...], what: str) -> None:
    """Install `packages` when `condition()` fails; exit non-zero, saying what is missing, if it still fails."""
    if condition():
        return
    problem = apt_install(packages) or "the packages installed, yet it is still missing"
    if not condition():
        raise SystemExit(f"bench/consensus.py: {what} is missing and could not be installed ({problem}); "
                         f"install it with `apt-get update && apt-get install -y {' '.join(packages)}`, "
                         "or pass --no-etcd to measure Cairn alone")


def build_etcd_load() -> Path:
    """The Go load client, built from bench/etcd_load with Debian's packages only, cached by source hash."""
    require(lambda: shutil.which("go") is not None, GO_PACKAGES, "the Go toolchain (go)")
    require(CLIENTV3.is_dir, GO_PACKAGES, f"etcd's Go client sources ({CLIENTV3})")
    go_version = subprocess.run(["go", "version"], capture_output=True, text=True, check=True).stdout
    digest = hashlib.sha256(GO_SOURCE.read_bytes() + go_version.encode()
                            + (CLIENTV3.parent / "version" / "version.go").read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cairn-bench"
    binary = cache / f"etcd_load-{digest}"
    if binary.exists():
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    partial = cache / f"etcd_load-{digest}.{os.getpid()}.partial"
    # GOPATH mode: the Go module proxy is not reachable here, so everything comes from /usr/share/gocode.
    env = {**os.environ, "GO111MODULE": "off", "GOFLAGS": "", "GOPATH": f"{cache / 'gopath'}:{GOCODE}",
           "GOCACHE": str(cache / "go-build")}
    print(f"building the etcd load client ({GO_SOURCE.relative_to(GO_SOURCE.parents[2])}) with {go_version.strip()}",
          flush=True)
    result = subprocess.run(["go", "build", "-o", str(partial), str(GO_SOURCE)], capture_output=True, text=True,
                            env=env)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise SystemExit(f"bench/consensus.py: building {GO_SOURCE} failed:\n{result.stderr.strip()[-2000:]}\n"
                         f"check that {' '.join(GO_PACKAGES)} are installed (apt-get install -y "
                         f"{' '.join(GO_PACKAGES)})")
    os.replace(partial, binary)
    return binary


async def etcd_go_run(binary: Path, port: int, clients: int, conns: int, seconds: float) -> dict:
    """One run of the Go client against the etcd leader; the same row shape as `drive`."""
    command = [str(binary), "--endpoints", f"127.0.0.1:{port}", "--clients", str(clients), "--conns", str(conns),
               "--seconds", str(seconds), "--warmup", str(min(1.0, seconds / 4)), "--value-size", "200"]
    # run_process kills the client (by its pid) if this task is cancelled.
    result = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    line = next((x for x in result.stdout.decode().splitlines() if x.startswith("ETCD_LOAD ")), None)
    if result.returncode != 0 or line is None:
        raise RuntimeError(f"the etcd load client failed (exit {result.returncode}): "
                           f"{result.stderr.decode().strip()[-500:]}")
    fields = dict(item.split("=", 1) for item in line.split()[1:])
    return {"rate": float(fields["puts_per_s"]), "p50_ms": float(fields["p50_ms"]), "p99_ms": float(fields["p99_ms"]),
            "ops": int(fields["ops"]), "errors": int(fields["errors"])}


# -- the side-by-side runs -------------------------------------------------------------------

GO_CONCURRENCY = (16, 128)


async def round_of_runs(clients: dict, etcd: tuple | None, concurrency: int, seconds: float) -> dict:
    """One run of every system at one concurrency, 200 B; {system: row}."""
    rows = {}
    for system, client in clients.items():
        rows[system] = await measure(system, cairn_driver(client, 200), 200, concurrency, seconds)
    if etcd is not None:
        binary, port = etcd
        connection_counts = (1, concurrency) if concurrency in GO_CONCURRENCY else (1,)
        for conns in connection_counts:
            system = "etcd-go-1conn" if conns == 1 and concurrency > 1 else "etcd-go"
            rows[system] = await etcd_go_run(binary, port, concurrency, conns, seconds)
            report(system, 200, concurrency, rows[system])
        driver = EtcdDriver(port, concurrency)
        rows["etcd-http"] = await measure("etcd-http", driver.put, 200, concurrency, seconds)
        await driver.aclose()
    return rows


async def bench_side_by_side(clusters: dict, etcd: tuple | None, seconds: float, rounds: int) -> dict:
    """{(system, size, concurrency): median row}; 200-byte runs alternate between the systems, `rounds` times."""
    medians: dict = {}
    async with contextlib.AsyncExitStack() as stack:
        clients = {}
        for system, cluster in clusters.items():
            leader, _term = await cluster.wait_leader()
            clients[system] = await stack.enter_async_context(cluster.client(leader))
        for concurrency in CONCURRENCY:
            runs: dict = {}
            for _round in range(rounds):
                for system, row in (await round_of_runs(clients, etcd, concurrency, seconds)).items():
                    runs.setdefault(system, []).append(row)
            for system, rows in runs.items():
                medians[(system, 200, concurrency)] = median_row(rows)
        for system, client in clients.items():
            for concurrency in CONCURRENCY:
                medians[(system, 2048, concurrency)] = await measure(system, cairn_driver(client, 2048), 2048,
                                                                     concurrency, seconds)
    return medians


# -- main -------------------------------------------------------------------------------------


def result_line(rows: dict, mode: str, failovers: dict, conditions: dict) -> str:
    """The RESULT line: Cairn at fsync `mode` against etcd's Go client; the batch line and HTTP figures labelled."""
    primary = f"cairn-{mode}"

    def rate(system: str, concurrency: int) -> float | None:
        row = rows.get((system, 200, concurrency))
        return row["rate"] if row else None

    def ratio(system: str, other: str, concurrency: int) -> float | None:
        mine, theirs = rate(system, concurrency), rate(other, concurrency)
        return mine / theirs if mine and theirs else None

    low, high = GO_CONCURRENCY
    # The older keys keep their names; since 2026-12-07 etcd_events_per_s_* and
    # ratio_* come from the Go client (one connection per client), never from
    # the HTTP gateway, and events_per_s_* from the fsync=always cluster.
    fields: dict = {
        f"events_per_s_{low}": rate(primary, low), f"events_per_s_{high}": rate(primary, high),
        f"etcd_events_per_s_{low}": rate("etcd-go", low), f"etcd_events_per_s_{high}": rate("etcd-go", high),
        f"ratio_{low}": ratio(primary, "etcd-go", low), f"ratio_{high}": ratio(primary, "etcd-go", high),
        f"ratio_go_{low}": ratio(primary, "etcd-go", low), f"ratio_go_{high}": ratio(primary, "etcd-go", high),
        f"ratio_go_1conn_{low}": ratio(primary, "etcd-go-1conn", low),
        f"ratio_go_1conn_{high}": ratio(primary, "etcd-go-1conn", high),
        f"etcd_1conn_events_per_s_{low}": rate("etcd-go-1conn", low),
        f"etcd_1conn_events_per_s_{high}": rate("etcd-go-1conn", high),
        f"events_per_s_batch_{low}": rate("cairn-batch", low), f"events_per_s_batch_{high}": rate("cairn-batch", high),
        f"etcd_http_events_per_s_{low}": rate("etcd-http", low),
        f"etcd_http_events_per_s_{high}": rate("etcd-http", high),
    }
    for failover_mode, (killed, silent) in sorted(failovers.items(), key=lambda item: item[0] != mode):
        infix = "" if failover_mode == mode else f"{failover_mode}_"
        fields[f"failover_{infix}median_s"] = statistics.median(killed) if killed else None
        fields[f"failover_{infix}silent_median_s"] = statistics.median(silent) if silent else None
    fields["p99_ms_16"] = rows[(primary, 200, 16)]["p99_ms"]
    fields.update(conditions)

    def formatted(key: str, value) -> str:
        if key.startswith(("events", "etcd")):
            return f"{value:.0f}"
        return f"{value:.2f}" if key.startswith(("ratio", "load", "sync")) else f"{value:.3g}"

    text = " ".join(f"{k}={formatted(k, v)}" for k, v in fields.items() if v is not None)
    return f"RESULT fsync={mode} {text}"


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


def disk_sync_ms(directory: Path, count: int = 100) -> float:
    """Median time of an fdatasync after a 300-byte append in `directory`: what one sync costs on this disk now."""
    path = directory / "sync-probe"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    timings = []
    try:
        for _ in range(count):
            os.write(descriptor, b"x" * 300)
            started = time.perf_counter()
            os.fdatasync(descriptor)
            timings.append(time.perf_counter() - started)
    finally:
        os.close(descriptor)
        path.unlink()
    return statistics.median(timings) * 1000


def print_summary(rows: dict, systems: list[str]) -> None:
    print("\nmedian runs (records or puts/s, p50 ms, p99 ms); etcd-http is the older Python client on etcd's "
          "HTTP/JSON gateway, shown for history, never in a ratio:", flush=True)
    for size in SIZES:
        for concurrency in CONCURRENCY:
            cells = [f"{system} {row['rate']:7.0f} {row['p50_ms']:6.2f} {row['p99_ms']:6.2f}"
                     for system in systems if (row := rows.get((system, size, concurrency)))]
            if cells:
                print(f"  {size:5d} B conc {concurrency:4d}: " + " | ".join(cells), flush=True)


async def failover_trials(cluster: ProcessCluster, count: int, silent: bool) -> list[float]:
    seconds = []
    for trial in range(count):
        seconds.append(await one_failover(cluster, silent=silent))
        print(f"{'silent ' if silent else ''}failover {trial + 1}: {seconds[-1]:.3f} s", flush=True)
    return seconds


async def run(args: argparse.Namespace) -> None:
    go_binary = None if args.no_etcd else build_etcd_load()
    if not args.no_etcd:
        require(lambda: shutil.which("etcd") is not None, ETCD_PACKAGES, "etcd (etcd-server)")
    root = Path(tempfile.mkdtemp(prefix="cairn-bench-consensus-"))
    # The disk's sync time moves a lot on a shared virtual machine (0.1 to 4 ms
    # seen on the same day) and decides the fsync=always figures, so it is
    # measured at both ends, with the load average.
    conditions = {"load1_start": os.getloadavg()[0], "sync_ms_start": disk_sync_ms(root)}
    print("at start: " + ", ".join(f"{k} {v:.2f}" for k, v in conditions.items()), flush=True)
    primary = f"cairn-{args.fsync}"
    modes = [args.fsync] + (["batch"] if args.fsync != "batch" and not args.no_batch_line else [])
    clusters = {f"cairn-{mode}": ProcessCluster(root / mode, fsync=mode, extra_args=tuple(args.node_args.split()))
                for mode in modes}
    etcd = None
    try:
        for cluster in clusters.values():
            cluster.start_all()
        if go_binary is not None:
            (root / "etcd").mkdir()
            etcd = EtcdCluster(root / "etcd")
            etcd.start()
        for cluster in clusters.values():
            await cluster.wait_all_know_leader()
        print(f"cairn: 3 members each at fsync={', '.join(modes)}, password on, group commit; "
              f"etcd: {'3 members, default flags, Go gRPC client and HTTP gateway' if etcd else 'not run'}", flush=True)
        etcd_target = (go_binary, await etcd_leader_port(etcd)) if etcd is not None else None
        rows = await bench_side_by_side(clusters, etcd_target, args.seconds, args.rounds)
        if etcd is not None:
            etcd.close()
        failovers: dict = {}
        for mode in reversed(modes):  # the primary cluster last, so it alone is left for the restart figure
            cluster = clusters[f"cairn-{mode}"]
            print(f"failovers of the fsync={mode} cluster", flush=True)
            failovers[mode] = (await failover_trials(cluster, args.failovers, silent=False),
                               await failover_trials(cluster, args.failovers, silent=True))
            if mode != args.fsync:
                cluster.close()
        if args.restart_records:
            serving, caught_up = await restart_with_history(clusters[primary], args.restart_records)
            print(f"restart of a follower holding {args.restart_records} records: serving after {serving:.2f} s, "
                  f"caught up after {caught_up:.2f} s", flush=True)
        print_summary(rows, [*clusters, "etcd-go", "etcd-go-1conn", "etcd-http"])
        conditions.update(load1_end=os.getloadavg()[0], sync_ms_end=disk_sync_ms(root))
        print(result_line(rows, args.fsync, failovers, conditions), flush=True)
    finally:
        for cluster in clusters.values():
            cluster.close()
        if etcd is not None:
            etcd.close()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time per run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per 200-byte configuration")
    parser.add_argument("--failovers", type=int, default=10,
                        help="leader kills for the failover median (and as many silent losses)")
    parser.add_argument("--fsync", choices=("always", "batch"), default="always",
                        help="durability of the cluster whose figures make the ratios")
    parser.add_argument("--no-batch-line", action="store_true", help="skip the second cluster at fsync=batch")
    parser.add_argument("--no-etcd", action="store_true", help="measure Cairn alone (no Go build, no etcd)")
    parser.add_argument("--restart-records", type=int, default=100_000,
                        help="history length for the follower-restart figure (0 skips it)")
    parser.add_argument("--node-args", default="", help="extra arguments for every member process")
    trio.run(run, parser.parse_args())


if __name__ == "__main__":
    main()
