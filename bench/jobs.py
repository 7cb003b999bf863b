"""Benchmark the running cluster: jobs through the API and the CLI on a local 3-node cluster of real daemons.

    .venv/bin/python bench/jobs.py [--kills 10] [--stops 5] [--clients 8] [--quick]

One cluster made with `cairn up --nodes 3 --node-memory 400000 --node-cpus 512`
(fake hypervisor: one real process per started instance) in a temporary
directory, with XDG_CONFIG_HOME and XDG_DATA_HOME pointed at temporary dirs
too, serves every measure in turn; it is always taken down (`cairn down`,
then whatever pid is left), on failure and on Ctrl-C as well. Every add is
`instance_add` of a diskless instance (os noop, 128 MiB), primaries spread
over node1..node3, one operation per job.

- add_p50_ms: one in-process client (appliance.client.http.Client, one
  kept-alive TLS connection) adds instances one after another, POST
  /api/v1/jobs then GET /api/v1/jobs/N/wait; the median over 50 (after 5
  warm-ups), with where the time goes, stage by stage, from the events'
  proposal times.
- jobs_per_s: 300 adds submitted at once by several in-process clients,
  each then waiting for its own jobs; from the first POST to the last success.
- add_cli_ms: `cairn instance add` run as a command (process start-up
  included), median of 10 after one warm-up, each a new instance.
- list_1000_ms: `cairn instance list` as a command with 1000 instances in the
  cluster, median of 5 after one warm-up; the instances beyond those the
  other measures made are added with start=False (ADMIN_down), so that 1000
  processes stay out of it. The same for 101 instances, Ganeti's figure.
- leader_kill_stall_s / leader_stop_stall_s: a JobStream (tests/integration/
  cluster_support.py: one careful client, adds one after another) while the
  leader is killed with -9 (then started again with `cairn up`), or stopped
  with SIGSTOP (then SIGCONT); per fault, the longest time between two job
  successes from 1 s before the fault to 2 s after the node is back. During a
  fault the stream's adds go to the other nodes: an add on a dead node waits
  for that node to return, which would measure this script's own restart
  delay, not the failover. For SIGSTOP the stream's client also talks to the
  other nodes only: a frozen node holds a request until the client's socket
  timeout (5 s in JobStream), which measures the client, not the cluster.
- lost_jobs / double_jobs: from the whole exported history (history_records):
  acknowledged adds that did not end in success or are missing from the
  history (and adds a stream had refused); request ids that made two jobs or
  have JobSubmitted records under two event ids, and instances added under
  two event ids. A record committed twice under one event id (a retried
  request) is applied once by replay: it is printed apart, not counted.

Progress goes to stderr; stdout gets a table against Ganeti 3.0's figures
(shared/reference/ganeti-behaviour.md section 10; Ganeti is not installable
here, so they are not measured again) and, last, the RESULT line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance import clock  # noqa: E402
from appliance.client import jobs  # noqa: E402
from appliance.client.config import resolve_target  # noqa: E402
from appliance.client.http import ApiError, Client, Unreachable  # noqa: E402
from tests.integration.cluster_support import (  # noqa: E402
    JobStream, LocalCluster, history_records,
)

NODE_MEMORY_MIB = 400_000
NODE_CPUS = 512
INSTANCE_MEMORY_MIB = 128
SETTLE_S = 2.0
# The stages of one add, in the order the cluster commits them (the names of `cairn events export`).
STAGES = ("JobSubmitted", "JobAdmitted", "JobOperationPlanned", "InstanceAdded", "JobProgressed",
          "InstanceObservedRunning", "JobSucceeded")
TARGETS = {"add_p50_ms": ("<=", 50), "jobs_per_s": (">=", 100), "add_cli_ms": ("<=", 300),
           "list_1000_ms": ("<=", 300), "leader_kill_stall_s": ("<=", 1), "leader_stop_stall_s": ("<=", 2),
           "lost_jobs": ("<=", 0), "double_jobs": ("<=", 0)}

STARTED_AT = time.perf_counter()


def say(text: str) -> None:
    """A progress line on stderr, with the seconds since the start."""
    print(f"[{time.perf_counter() - STARTED_AT:7.1f} s] {text}", file=sys.stderr, flush=True)


def median_ms(seconds: list[float]) -> float:
    return statistics.median(seconds) * 1000 if seconds else float("nan")


def add_operation(name: str, number: int, start: bool = True) -> dict:
    """One diskless add, its primary chosen round the three nodes by `number`."""
    return jobs.operation("instance_add", name=name, primary=f"node{number % 3 + 1}", disk_template="diskless",
                          os="noop", memory_mib=INSTANCE_MEMORY_MIB, start=None if start else False)


class Bench:
    """The cluster under measure, the client settings, and what every measure found."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.target = None
        self.acknowledged: list[tuple[str, int, str]] = []    # (request id, job, end status) of every add
        self.streams: list[JobStream] = []
        self.cli_env = cli_env(cluster)

    def start(self) -> None:
        started = time.perf_counter()
        self.cluster.run("up", "--nodes", "3", "--dir", str(self.cluster.directory), "--node-memory",
                         str(NODE_MEMORY_MIB), "--node-cpus", str(NODE_CPUS))
        self.target = resolve_target(config=str(self.cluster.directory / "client.toml"), environ={})
        dead = [n for n in self.cluster.names()
                if self.cluster.pid(n) is None or not Path(f"/proc/{self.cluster.pid(n)}").exists()]
        if dead:
            # `cairn up` is ready once a leader knows every node, even if one daemon died (a port taken meanwhile).
            log = (self.cluster.directory / dead[0] / "daemon.log").read_text()[-1500:]
            raise RuntimeError(f"{', '.join(dead)} did not start; the end of its log:\n{log}")
        say(f"cluster up in {time.perf_counter() - started:.1f} s in {self.cluster.directory}; leader "
            f"{self.leader()}")

    def client(self, nodes: list[str] | None = None, timeout_s: float = 30.0) -> Client:
        """A TLS client of the given nodes (all by default), no unix socket."""
        addresses = [self.cluster.address(n) for n in nodes] if nodes else self.target.addresses
        return Client(addresses, self.target.ca_pem, self.target.token, timeout_s=timeout_s)

    def leader(self, nodes: list[str] | None = None) -> str | None:
        """The leader as the first answering node of `nodes` sees it."""
        with self.client(nodes, timeout_s=2.0) as client:
            try:
                return client.get("/api/v1/status", stale=True)[1].get("leader")
            except ApiError:
                return None

    def instance_count(self) -> int:
        with self.client() as client:
            return int(client.get("/api/v1/cluster")[1]["instance_count"])

    def head_seq(self) -> int:
        with self.client() as client:
            return int(client.get("/api/v1/cluster")[1]["seq"])

    def events(self, since: int) -> list[dict]:
        """The committed events after seq `since`, as event lines."""
        with self.client(timeout_s=120.0) as client:
            data = b"".join(client.raw("/api/v1/events", since=since))
        return [json.loads(line) for line in data.splitlines() if line.strip()]


def submit_retrying(client: Client, operations: list, request_id: str, reason: str) -> int:
    """Submit a job, again with the same request id while no node can answer (never twice)."""
    for _attempt in range(200):
        try:
            return jobs.submit(client, operations, reason, request_id)
        except Unreachable:
            time.sleep(0.05)
    raise RuntimeError(f"no node took job {request_id} in 200 tries; see the daemon logs")


# --- one client, one add at a time --------------------------------------------------------------

def measure_add_latency(bench: Bench, count: int, warmups: int = 5) -> float:
    """Adds one after another over one kept-alive connection; the median ms, with a per-stage breakdown."""
    since = bench.head_seq()
    marks: dict[int, tuple] = {}        # job -> (name, request id, submitted at, answered at, ended at) wall clock
    latencies, answers = [], []
    with bench.client() as client:
        for number in range(warmups + count):
            name, request_id = f"lat{number}", f"bench-lat-{number}"
            wall, started = clock.now(), time.perf_counter()
            job = jobs.submit(client, [add_operation(name, number)], "bench: add latency", request_id)
            answered = time.perf_counter()
            row = jobs.wait(client, job)
            ended = time.perf_counter()
            bench.acknowledged.append((request_id, job, row.get("status")))
            if number >= warmups:
                latencies.append(ended - started)
                answers.append(answered - started)
                marks[job] = (name, request_id, wall, wall + answered - started, wall + ended - started)
        answered_by = client.answered_by
    say(f"add latency over {count} adds via {answered_by} (leader {bench.leader()}): p50 {median_ms(latencies):.1f}"
        f" ms, min {min(latencies) * 1000:.1f}, max {max(latencies) * 1000:.1f}; submit answered p50 "
        f"{median_ms(answers):.1f} ms")
    stage_breakdown(bench.events(since), marks)
    return median_ms(latencies)


def stage_breakdown(events: list[dict], marks: dict[int, tuple]) -> None:
    """Print the median time from each stage of an add to the next, from the events' proposal times.

    An event is proposed once the one before it is applied on the leader (the
    observation by the primary's reconciler once it has started the process),
    so each interval is about one commit and apply plus the decision after it.
    """
    by_request = {e["payload"].get("request_id"): e for e in events if e["name"] == "JobSubmitted"}
    by_job: dict[int, dict] = {}
    for event in events:
        by_job.setdefault(event["job"], {}).setdefault(event["name"], event)
    instance_ids = {e["payload"]["name"]: e["payload"]["instance"] for e in events if e["name"] == "InstanceAdded"}
    observed = {e["payload"]["instance"]: e for e in events if e["name"] == "InstanceObservedRunning"}
    intervals: dict[str, list[float]] = {}
    for job, (name, request_id, submitted, answered, ended) in marks.items():
        found = dict(by_job.get(job, {}))
        found["JobSubmitted"] = by_request.get(request_id)
        found["InstanceObservedRunning"] = observed.get(instance_ids.get(name))
        if any(found.get(stage) is None for stage in STAGES):
            continue
        points = [("client POST", submitted)] + [(s, found[s]["proposed_at"]) for s in STAGES]
        points += [("client has the answer", ended)]
        for (before, at_before), (after, at_after) in zip(points, points[1:]):
            intervals.setdefault(f"{before} -> {after}", []).append(at_after - at_before)
        intervals.setdefault("client POST -> POST answered", []).append(answered - submitted)
    say("  where an add's time goes (median ms from one proposal to the next):")
    for label, values in intervals.items():
        say(f"    {label:52s} {median_ms(values):7.1f}  (max {max(values) * 1000:.1f})")


# --- many adds at once -----------------------------------------------------------------------------

def concurrent_adds(bench: Bench, prefix: str, first: int, count: int, clients: int, start: bool) -> dict:
    """`count` adds POSTed at once by `clients` threads, each then waiting for its own jobs; rates and statuses."""
    numbers = iter(range(first, first + count))
    lock = threading.Lock()
    submitted_at, ended_at, statuses, errors = [], [], [], []

    def worker() -> None:
        try:
            submit_and_wait()
        except Exception as error:  # reported after the join: a dead thread must not pass for a fast one
            errors.append(error)

    def submit_and_wait() -> None:
        mine = []
        with bench.client() as client:
            while True:
                with lock:
                    number = next(numbers, None)
                if number is None:
                    break
                request_id = f"bench-{prefix}-{number}"
                job = submit_retrying(client, [add_operation(f"{prefix}{number}", number, start)], request_id,
                                      f"bench: {prefix}")
                submitted_at.append(time.perf_counter())
                mine.append((request_id, job))
            for request_id, job in mine:
                status = jobs.wait(client, job).get("status")
                ended_at.append(time.perf_counter())
                statuses.append(status)
                bench.acknowledged.append((request_id, job, status))

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"{len(errors)} of {clients} client threads failed; the first: {errors[0]!r}")
    elapsed = max(ended_at) - started
    failed = sum(1 for s in statuses if s != "success")
    return {"jobs_per_s": count / elapsed, "seconds": elapsed, "submit_s": max(submitted_at) - started,
            "failed": failed}


def measure_throughput(bench: Bench, count: int, clients: int) -> float:
    found = concurrent_adds(bench, "thr", 0, count, clients, start=True)
    say(f"throughput: {count} adds by {clients} clients in {found['seconds']:.2f} s = {found['jobs_per_s']:.1f} "
        f"jobs/s (all POSTs answered after {found['submit_s']:.2f} s = {count / found['submit_s']:.0f} submits/s; "
        f"{found['failed']} not successful)")
    return found["jobs_per_s"]


def fill_to(bench: Bench, total: int, clients: int, start: bool) -> int:
    """Add stopped (or started) instances until the cluster holds `total`; how many were added."""
    missing = total - bench.instance_count()
    if missing <= 0:
        return 0
    found = concurrent_adds(bench, "fill" if not start else "fillup", bench.instance_count(), missing, clients,
                            start)
    say(f"  added {missing} instances ({'started' if start else 'start=False'}) at {found['jobs_per_s']:.1f} "
        f"jobs/s; {found['failed']} not successful")
    return missing


# --- the CLI as a command -----------------------------------------------------------------------------

def cli_env(cluster: LocalCluster) -> dict:
    """The cluster's environment for the CLI, with its bytecode cached as an installed package has it.

    This machine sets PYTHONDONTWRITEBYTECODE, so every command would compile
    Cairn's own modules again (about 25 ms); the cache goes to a directory of
    the run, never into the source tree.
    """
    env = dict(cluster.env)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(cluster.root / "pycache")
    return env


def time_command(bench: Bench, *args: str) -> tuple[float, float, str]:
    """Run `cairn ARGS`; wall seconds, CPU seconds of the process, and its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = bench.cluster.run(*args, env=bench.cli_env)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return elapsed, cpu, result.stdout


def measure_cli_add(bench: Bench, count: int) -> float:
    """`cairn instance add` as a command, each a new instance; the median ms after one warm-up."""
    seconds, cpu = [], []
    for number in range(count + 1):
        elapsed, used, _ = time_command(bench, "instance", "add", "-t", "diskless", "-n", f"node{number % 3 + 1}",
                                        "--no-install", "-B", f"memory={INSTANCE_MEMORY_MIB}", f"cli{number}")
        if number:
            seconds.append(elapsed)
            cpu.append(used)
    master = [time_command(bench, "cluster", "master") for _ in range(5)]
    help_only = [time_command(bench, "instance", "add", "--help") for _ in range(3)]
    python = []
    for _ in range(5):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        python.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    say(f"cairn instance add: median {median_ms(seconds):.0f} ms of {count} (min {min(seconds) * 1000:.0f}, max "
        f"{max(seconds) * 1000:.0f}), CPU of the process {median_ms(cpu):.0f} ms; for scale (wall / CPU ms): "
        f"`cairn cluster master` {median_ms([m[0] for m in master]):.0f} / {median_ms([m[1] for m in master]):.0f}, "
        f"`cairn instance add --help` {median_ms([h[0] for h in help_only]):.0f} / "
        f"{median_ms([h[1] for h in help_only]):.0f}, `python -c pass` CPU {median_ms(python):.0f}")
    return median_ms(seconds)


def measure_list(bench: Bench, total: int, clients: int, runs: int = 5) -> float:
    """`cairn instance list` as a command with `total` instances; the median ms after one warm-up."""
    fill_to(bench, total, clients, start=False)
    count = bench.instance_count()
    seconds, cpu = [], []
    for run in range(runs + 1):
        elapsed, used, stdout = time_command(bench, "instance", "list")
        lines = len(stdout.splitlines())
        if lines < count + 1:
            raise RuntimeError(f"cairn instance list printed {lines} lines for {count} instances")
        if run:
            seconds.append(elapsed)
            cpu.append(used)
    with bench.client() as client:
        api = []
        for _ in range(5):
            started = time.perf_counter()
            client.get("/api/v1/instances")
            api.append(time.perf_counter() - started)
    say(f"cairn instance list, {count} instances: median {median_ms(seconds):.0f} ms of {runs} (min "
        f"{min(seconds) * 1000:.0f}, max {max(seconds) * 1000:.0f}), CPU of the process {median_ms(cpu):.0f} ms; "
        f"GET /api/v1/instances in process {median_ms(api):.0f} ms (leader {bench.leader()})")
    return median_ms(seconds)


# --- faults of the leader during a stream of adds -----------------------------------------------------

def wait_new_leader(bench: Bench, survivors: list[str], old: str, timeout_s: float = 30.0) -> str:
    clients = [bench.client([n], timeout_s=1.0) for n in survivors]
    deadline = time.perf_counter() + timeout_s
    try:
        while time.perf_counter() < deadline:
            for client in clients:
                with contextlib.suppress(ApiError):
                    leader = client.get("/api/v1/status", stale=True)[1].get("leader")
                    if leader and leader != old:
                        return leader
            time.sleep(0.02)
    finally:
        for client in clients:
            client.close()
    raise RuntimeError(f"no new leader among {', '.join(survivors)} within {timeout_s:g} s of stopping {old}")


def wait_successes(stream: JobStream, count: int, timeout_s: float = 60.0) -> None:
    """Wait until the stream has had `count` more successes."""
    goal = sum(1 for r in stream.results if r[2] == "success") + count
    deadline = time.perf_counter() + timeout_s
    while sum(1 for r in stream.results if r[2] == "success") < goal:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"the job stream made no progress for {timeout_s:g} s")
        time.sleep(0.05)


def one_fault(bench: Bench, kind: str, trial: int) -> float:
    """Stream adds, fault the leader (kill -9 or SIGSTOP), heal it; the longest gap between successes."""
    cluster = bench.cluster
    leader = bench.leader()
    survivors = [n for n in cluster.names() if n != leader]
    stream = JobStream(cluster, f"{kind}{trial}n", survivors)
    if kind == "stop":
        stream.target.addresses = [cluster.address(n) for n in survivors]
    bench.streams.append(stream)
    since = bench.head_seq()
    thread = threading.Thread(target=stream.run, daemon=True)
    thread.start()
    times: dict = {}
    try:
        wait_successes(stream, 3)
        times.update(hit=clock.monotonic(), hit_wall=clock.now())
        if kind == "kill":
            cluster.kill(leader)        # returns once the process is gone
        else:
            os.kill(cluster.pid(leader), signal.SIGSTOP)
        times["gone"] = clock.monotonic()
        new_leader = wait_new_leader(bench, survivors, leader)
        times["seen"] = clock.monotonic()
        time.sleep(SETTLE_S)
        times["healed"] = clock.monotonic()
        if kind == "kill":
            cluster.run("up", "--dir", str(cluster.directory))
        else:
            os.kill(cluster.pid(leader), signal.SIGCONT)
        times["back"] = clock.monotonic()
        time.sleep(SETTLE_S)
        wait_successes(stream, 1)
        times["end"] = clock.monotonic()
    finally:
        if kind == "stop" and "back" not in times:
            with contextlib.suppress(OSError, TypeError):
                os.kill(cluster.pid(leader), signal.SIGCONT)
        stream.stop = True
        thread.join(timeout=120)
    return fault_report(bench, kind, trial, stream, since, times, (leader, new_leader))


def fault_report(bench: Bench, kind: str, trial: int, stream: JobStream, since: int, times: dict,
                 leaders: tuple[str, str]) -> float:
    """Print one fault's timings; its longest gap between two successes."""
    hit = times["hit"]
    # The stream is new for each fault: the window opens at its first success, at most 1 s before the signal.
    opened = max(hit - 1.0, min(r[4] for r in stream.results if r[2] == "success"))
    gap = stream.longest_gap_s(opened, times["end"])
    fault_gap = stream.longest_gap_s(opened, times["healed"])
    heal_gap = stream.longest_gap_s(times["healed"], times["end"])
    elected = [e["proposed_at"] - times["hit_wall"] for e in bench.events(since)
               if e["name"] == "LeaderElected" and e["proposed_at"] > times["hit_wall"]]
    first = [r[4] - hit for r in stream.results if r[2] == "success" and r[4] > hit]
    heal = "restart" if kind == "kill" else "SIGCONT"
    say(f"  {kind} {trial + 1}: {leaders[0]} -> {leaders[1]}: longest gap {gap:.3f} s (before the {heal} "
        f"{fault_gap:.3f}, after it {heal_gap:.3f}); after the signal: process "
        f"{'gone' if kind == 'kill' else 'stopped'} {times['gone'] - hit:.3f} s, new leader's LeaderElected "
        f"proposed {min(elected) if elected else float('nan'):.3f} s (its core's clock), new leader seen in "
        f"/status {times['seen'] - hit:.3f} s, first success {min(first) if first else float('nan'):.3f} s; "
        f"{heal} took {times['back'] - times['healed']:.2f} s; {len(stream.results)} adds")
    return gap


def measure_faults(bench: Bench, kind: str, count: int) -> float:
    gaps = [one_fault(bench, kind, trial) for trial in range(count)]
    say(f"leader {kind}: longest gaps {', '.join(f'{g:.2f}' for g in gaps)} s; max {max(gaps):.3f} s, median "
        f"{statistics.median(gaps):.3f} s")
    return max(gaps)


# --- lost and doubled --------------------------------------------------------------------------------

def lost_and_doubled(bench: Bench) -> tuple[int, int]:
    """Acknowledged adds not ended in success or not in the history; request ids and instances run twice.

    history_records lists committed records; a record repeated under the same
    event id (a retried request or step) is applied once by replay, so it is
    reported apart and not counted as run twice: two event ids for one
    request id or one instance name, or two jobs for one request id, are.
    """
    via = bench.cluster.names()[0]
    records = history_records(bench.cluster, via)
    history = {kind: {key: len(found) for key, found in by_key.items()} for kind, by_key in records.items()}
    ids = {kind: {key: set(found) for key, found in by_key.items()} for kind, by_key in records.items()}
    with bench.client(timeout_s=120.0) as client:
        rows = client.get("/api/v1/jobs")[1]
    jobs_of: dict[str, set] = {}
    for row in rows:
        if row.get("request_id"):
            jobs_of.setdefault(row["request_id"], set()).add(row["id"])
    acknowledged = list(bench.acknowledged)
    refused = []
    for stream in bench.streams:
        acknowledged += [(r[0], r[1], r[2]) for r in stream.results]
        refused += stream.refused
    failed = [a for a in acknowledged if a[2] != "success"]
    missing = [a for a in acknowledged if a[0] not in history["submitted"]]
    repeated = {rid: n for rid, n in history["submitted"].items() if n > 1}
    readded_records = {name: n for name, n in history["added"].items() if n > 1}
    twice = {rid for rid, found in ids["submitted"].items() if len(found) > 1}
    twice |= {rid for rid, found in jobs_of.items() if len(found) > 1}
    added_twice = {name for name, found in ids["added"].items() if len(found) > 1}
    say(f"history: {len(history['submitted'])} request ids, {len(history['added'])} instances added; "
        f"{len(acknowledged)} acknowledged adds checked: {len(failed)} not successful, {len(missing)} missing from "
        f"the history, {len(refused)} refused; run twice: {len(twice)} requests, {len(added_twice)} instances; "
        f"records repeated under the same event id (applied once): {len(repeated)} JobSubmitted "
        f"{sorted(repeated)[:10]}, {len(readded_records)} InstanceAdded")
    for line in (failed + missing)[:10] + refused[:10] + sorted(twice)[:10] + sorted(added_twice)[:10]:
        say(f"    {line}")
    return len(failed) + len(missing) + len(refused), len(twice) + len(added_twice)


def same_digest(bench: Bench, timeout_s: float = 60.0) -> bool:
    """Whether every node reaches the same (seq, digest) once the stream is over."""
    deadline = time.perf_counter() + timeout_s
    seen: dict = {}
    while time.perf_counter() < deadline:
        seen = {}
        for node in bench.cluster.names():
            with bench.client([node], timeout_s=5.0) as client, contextlib.suppress(ApiError):
                info = client.get("/api/v1/cluster")[1]
                seen[node] = (info["seq"], info["digest"])
        if len(seen) == len(bench.cluster.names()) and len(set(seen.values())) == 1:
            return True
        time.sleep(0.5)
    say(f"the nodes did not converge: {seen}")
    return False


# --- the report --------------------------------------------------------------------------------------

def print_comparison(figures: dict, extra: dict) -> None:
    """The table against Ganeti 3.0's figures and the targets, on stdout."""
    rows = [
        ("add via the API, submit to success (ms, p50)", figures["add_p50_ms"], "1110 (RAPI create job)",
         "add_p50_ms"),
        ("adds submitted at once (jobs/s)", figures["jobs_per_s"], "0.7", "jobs_per_s"),
        ("`instance add` as a command (ms, median)", figures["add_cli_ms"], "about 1000", "add_cli_ms"),
        (f"`instance list`, {extra['list_101_count']} instances (ms, median)", extra["list_101_ms"],
         "450 (101 instances)", None),
        (f"`instance list`, {extra['list_count']} instances (ms, median)", figures["list_1000_ms"], "-",
         "list_1000_ms"),
        ("leader kill -9: longest gap between successes (s)", figures["leader_kill_stall_s"], "-",
         "leader_kill_stall_s"),
        ("leader SIGSTOP: longest gap between successes (s)", figures["leader_stop_stall_s"], "-",
         "leader_stop_stall_s"),
        ("acknowledged jobs lost", figures["lost_jobs"], "-", "lost_jobs"),
        ("jobs or adds run twice", figures["double_jobs"], "-", "double_jobs"),
    ]
    print("Ganeti 3.0 figures: shared/reference/ganeti-behaviour.md section 10 (measured on this machine class; "
          "Ganeti is not installable here, so it was not run again).")
    print(f"Instances for the list: {extra['list_note']}.")
    print(f"{'measure':58s} {'Cairn':>10s} {'Ganeti 3.0':>24s} {'target':>8s}  met")
    for label, value, ganeti, key in rows:
        target, met = "", ""
        if key is not None:
            sense, goal = TARGETS[key]
            target = f"{sense} {goal:g}"
            met = "yes" if (value <= goal if sense == "<=" else value >= goal) else "NO"
        print(f"{label:58s} {value:10.4g} {ganeti:>24s} {target:>8s}  {met}")


def result_line(figures: dict) -> str:
    formats = {"add_p50_ms": ".1f", "jobs_per_s": ".1f", "add_cli_ms": ".0f", "list_1000_ms": ".0f",
               "leader_kill_stall_s": ".3f", "leader_stop_stall_s": ".3f", "lost_jobs": "d", "double_jobs": "d"}
    return "RESULT " + " ".join(f"{key}={figures[key]:{form}}" for key, form in formats.items())


# --- main --------------------------------------------------------------------------------------------

def take_down(cluster: LocalCluster) -> None:
    """Stop every daemon and instance process of the cluster, whatever state the run left it in."""
    from appliance.local import stop_instances

    for node in cluster.names():
        pid = cluster.pid(node)
        if pid is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)   # a stopped daemon would not hear `cairn down`'s SIGTERM
    cluster.down()
    for node in cluster.names():
        with contextlib.suppress(Exception):
            stop_instances(cluster.directory / node / "hv")


def run(bench: Bench, args: argparse.Namespace) -> tuple[dict, dict]:
    bench.start()
    figures: dict = {}
    extra: dict = {}
    figures["add_p50_ms"] = measure_add_latency(bench, args.latency_adds)
    # Ganeti's list figure is for 101 instances: the same count here, started like Ganeti's.
    fill_to(bench, 101, args.clients, start=True)
    extra["list_101_count"] = bench.instance_count()
    extra["list_101_ms"] = measure_list(bench, 101, args.clients)
    figures["jobs_per_s"] = measure_throughput(bench, args.concurrent, args.clients)
    figures["add_cli_ms"] = measure_cli_add(bench, args.cli_adds)
    running = bench.instance_count()
    figures["list_1000_ms"] = measure_list(bench, args.list_instances, args.clients)
    extra["list_count"] = bench.instance_count()
    extra["list_note"] = (f"{extra['list_count']} in all: {running} added started (running processes), the "
                          f"{extra['list_count'] - running} others added with start=False (ADMIN_down)")
    say(f"leader kill -9 during a stream of adds, {args.kills} times")
    figures["leader_kill_stall_s"] = measure_faults(bench, "kill", args.kills)
    say(f"leader SIGSTOP during a stream of adds, {args.stops} times")
    figures["leader_stop_stall_s"] = measure_faults(bench, "stop", args.stops)
    figures["lost_jobs"], figures["double_jobs"] = lost_and_doubled(bench)
    say(f"every node at the same seq and digest: {same_digest(bench)}")
    return figures, extra


def conditions(directory: Path) -> str:
    """The load average and how many daemons of other Cairn clusters share this machine's cores."""
    others = 0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            text = cmdline.read_bytes()
            others += b"appliance.daemon.main" in text and str(directory).encode() not in text
    return f"load average {os.getloadavg()[0]:.2f}, {others} daemons of other clusters running"


def interrupted(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=10, help="leader kill -9 faults")
    parser.add_argument("--stops", type=int, default=5, help="leader SIGSTOP faults")
    parser.add_argument("--clients", type=int, default=8, help="client threads for the adds submitted at once")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 2 kills, 1 stop, 200 instances listed, 100 adds at once")
    args = parser.parse_args()
    args.latency_adds, args.cli_adds = 50, 10
    args.concurrent, args.list_instances = 300, 1000
    if args.quick:
        args.kills, args.stops, args.list_instances, args.concurrent = 2, 1, 200, 100
    if args.kills < 1 or args.stops < 1:
        parser.error("--kills and --stops must be at least 1")
    root = Path(tempfile.mkdtemp(prefix="cairn-bench-jobs-"))
    cluster = LocalCluster(root)
    signal.signal(signal.SIGTERM, interrupted)
    at_start = conditions(root)
    say(f"at the start: {at_start}")
    try:
        figures, extra = run(Bench(cluster), args)
    finally:
        say("taking the cluster down")
        take_down(cluster)
        shutil.rmtree(root, ignore_errors=True)
    at_end = conditions(root)
    say(f"at the end: {at_end}")
    print(f"Machine: 2 cores; at the start {at_start}; at the end {at_end}.")
    print_comparison(figures, extra)
    print(result_line(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
