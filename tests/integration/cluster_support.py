"""A local cluster of real daemons for integration tests: made with `cairn up`, always taken down.

Every command runs as its own process, as a user would run it; the test's
own environment never points at the user's configuration (XDG dirs are under
the test's tmp dir).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

CAIRN = str(Path(sys.executable).parent / "cairn")


class LocalCluster:
    def __init__(self, root: Path, nodes: int = 3, hypervisor: str = "fake") -> None:
        self.root = root
        self.directory = root / "cluster"
        self.nodes = nodes
        self.hypervisor = hypervisor
        self.env = {**os.environ, "XDG_CONFIG_HOME": str(root / "config"), "XDG_DATA_HOME": str(root / "data"),
                    "CAIRN_CONFIG": str(self.directory / "client.toml")}
        self.env.pop("CAIRN_API", None)
        self.env.pop("CAIRN_TOKEN", None)

    # --- commands ------------------------------------------------------------------------

    def run(self, *args: str, check: bool = True, timeout_s: float = 120.0, env: dict | None = None,
            input_text: str | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run([CAIRN, *args], capture_output=True, text=True, timeout=timeout_s,
                                env=env or self.env, input=input_text)
        if check and result.returncode != 0:
            raise AssertionError(f"cairn {' '.join(args)} exited {result.returncode}:\n"
                                 f"stdout: {result.stdout}\nstderr: {result.stderr}")
        return result

    def json(self, *args: str):
        return json.loads(self.run(*args, "--output", "json").stdout)

    def up(self) -> subprocess.CompletedProcess:
        return self.run("up", "--nodes", str(self.nodes), "--dir", str(self.directory),
                        "--hypervisor", self.hypervisor)

    def down(self) -> None:
        with contextlib.suppress(Exception):
            self.run("down", "--dir", str(self.directory), check=False, timeout_s=60)
        # Whatever `down` missed (it failed, or a test left a stopped process): end it by its pid.
        for pid_file in [*self.directory.glob("node*/watchdog.pid"), *self.directory.glob("node*/daemon.pid")]:
            with contextlib.suppress(OSError, ValueError):
                pid = int(pid_file.read_text().split()[0])
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)

    # --- nodes -------------------------------------------------------------------------

    def names(self) -> list[str]:
        return [f"node{k}" for k in range(1, self.nodes + 1)]

    def pid(self, node: str) -> int | None:
        try:
            return int((self.directory / node / "daemon.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def kill(self, node: str, signum: int = signal.SIGKILL) -> None:
        pid = self.pid(node)
        assert pid is not None, f"{node} is not running"
        os.kill(pid, signum)
        if signum == signal.SIGKILL:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
                time.sleep(0.02)
            with contextlib.suppress(OSError):
                (self.directory / node / "daemon.pid").unlink()

    def node_pids(self, node: str) -> list[int]:
        """The node's daemon, its watchdog and its instance processes, from their pid files."""
        directory = self.directory / node
        pids = []
        for name in ("daemon.pid", "watchdog.pid"):
            with contextlib.suppress(OSError, ValueError):
                pids.append(int((directory / name).read_text().split()[0]))
        for pid_file in [*directory.glob("hv/instances/*/pid"), *directory.glob("kvm/instances/*/pid")]:
            with contextlib.suppress(OSError, ValueError):
                pids.append(int(pid_file.read_text().split()[0]))
        return pids

    def kill_whole_node(self, node: str) -> None:
        """kill -9 of everything the node runs: as if it lost power."""
        for pid in self.node_pids(node):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def master(self, via: str | None = None) -> str:
        args = ("cluster", "master") if via is None else ("cluster", "master", "--api", self.address(via))
        return self.run(*args).stdout.strip()

    def address(self, node: str) -> str:
        return json.loads((self.directory / "cluster.json").read_text())["nodes"][node]

    def wait(self, predicate, timeout_s: float, what: str, interval_s: float = 0.2):
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            try:
                last = predicate()
                if last:
                    return last
            except AssertionError as error:
                last = error
            time.sleep(interval_s)
        raise AssertionError(f"{what} did not happen within {timeout_s:g} s (last: {last})")


@contextlib.contextmanager
def started(root: Path, nodes: int = 3, hypervisor: str = "fake"):
    """A local cluster, up for the block and always taken down after it."""
    cluster = LocalCluster(root, nodes, hypervisor)
    try:
        cluster.up()
        yield cluster
    finally:
        cluster.down()


# --- a stream of jobs through the API (the leader-kill tests and bench/jobs.py) -----------------

class JobStream:
    """Adds diskless instances one after another through the API, as one careful client would.

    Each add has its own request id and is sent again, with the same id, to
    whichever node answers until the cluster acknowledges it with a job id;
    then the stream waits for that job to end. `results` holds, per add,
    (request id, job id, end status, acknowledged at, ended at) in
    monotonic seconds. Runs in a thread (`run`) until `stop` is set.
    """

    def __init__(self, cluster: LocalCluster, prefix: str, nodes: list[str], limit: int | None = None) -> None:
        from appliance.client.config import resolve_target

        target = resolve_target(config=str(cluster.directory / "client.toml"), environ={})
        self.target = target
        self.prefix = prefix
        self.nodes = nodes
        self.limit = limit
        self.results: list[tuple] = []
        self.refused: list[str] = []
        self.stop = False

    def client(self):
        from appliance.client.http import Client

        # Addresses only (no unix socket), so a killed node is skipped like a remote one would be.
        return Client(self.target.addresses, self.target.ca_pem, self.target.token, timeout_s=5.0)

    def run(self) -> None:
        from appliance.client import jobs
        from appliance.client.http import ApiError

        client = self.client()
        number = 0
        while not self.stop and (self.limit is None or number < self.limit):
            name = f"{self.prefix}{number}"
            request_id = f"{self.prefix}-{number}"
            operations = [jobs.operation("instance_add", name=name, primary=self.nodes[number % len(self.nodes)],
                                         disk_template="diskless", os="noop", memory_mib=128)]
            job = acknowledged = None
            while job is None:
                try:
                    job = jobs.submit(client, operations, "job stream", request_id)
                    acknowledged = time.monotonic()
                except ApiError as error:
                    if 400 <= error.status < 500:
                        self.refused.append(f"{request_id}: {error}")
                        break
                    time.sleep(0.02)
            if job is not None:
                status = self._wait(client, job)
                self.results.append((request_id, job, status, acknowledged, time.monotonic()))
            number += 1
        client.close()

    def _wait(self, client, job: int) -> str:
        from appliance.client import jobs
        from appliance.client.http import ApiError

        while True:
            try:
                _, row = client.get(jobs.job_path(job, "wait"), timeout_s=4)
                if row.get("status") in jobs.JOB_FINISHED:
                    return row["status"]
            except ApiError as error:
                if error.status == 404:
                    return "lost"
                time.sleep(0.02)

    def longest_gap_s(self, since: float, until: float) -> float:
        """The longest time between two job successes (or the window's ends) within [since, until]."""
        ends = sorted(r[4] for r in self.results if r[2] == "success" and since <= r[4] <= until)
        points = [since, *ends, until]
        return max(b - a for a, b in zip(points, points[1:]))


def history_records(cluster: LocalCluster, via: str) -> dict:
    """From the whole exported history: per request id the event ids of its JobSubmitted records, per instance
    name those of its InstanceAdded records, one entry per committed record.

    A record committed twice under one event id is a retry (the client sent
    its request again, or a new leader proposed a step again) that replay
    applies once; two distinct event ids for one request id or one name
    would be a job or an add run twice.
    """
    export = subprocess.run([CAIRN, "events", "export", "--format", "jsonl", "--api", cluster.address(via)],
                            capture_output=True, text=True, env=cluster.env, timeout=120, check=True)
    submitted: dict[str, list] = {}
    added: dict[str, list] = {}
    for line in export.stdout.splitlines():
        event = json.loads(line)
        payload = event.get("payload", {})
        if event["name"] == "JobSubmitted" and payload.get("request_id"):
            submitted.setdefault(payload["request_id"], []).append(event["event_id"])
        if event["name"] == "InstanceAdded":
            added.setdefault(payload["name"], []).append(event["event_id"])
    return {"submitted": submitted, "added": added}


# --- a process-level monitor of instance processes (the fencing tests and bench/recovery.py) ----------------

class InstanceMonitor:
    """Samples every instance process of every node of a local cluster every `interval_s` (10 ms), from the
    hypervisors' pid files (fake and kvm) and /proc, in a thread of its own; counts every sample in which one instance
    runs on two nodes. A paused guest (the source of a live migration) does not count as running."""

    def __init__(self, directory: Path, interval_s: float = 0.01) -> None:
        import threading

        self.directory = directory
        self.interval_s = interval_s
        self.samples = 0
        self.double_runs = 0
        self.doubles: list[tuple[float, str, tuple]] = []
        self.seen: dict[tuple[str, str], list[float]] = {}     # (instance, node) -> [first, last] monotonic time
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> InstanceMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def running(self) -> dict[str, list[str]]:
        """instance id -> the nodes where its process runs now."""
        from appliance.fencing import _process_alive

        found: dict[str, list[str]] = {}
        pid_files = [*self.directory.glob("node*/hv/instances/*/pid"), *self.directory.glob("node*/kvm/instances/*/pid")]
        for pid_file in pid_files:
            entry = pid_file.parent
            try:
                pid, token = pid_file.read_text().split()
            except (OSError, ValueError):
                continue
            # A fake guest paused by a migration, or a QEMU still waiting for one, runs nothing.
            if _process_alive(int(pid), token) and not (entry / "paused").exists() \
                    and not (entry / "incoming").exists():
                found.setdefault(entry.name, []).append(entry.parent.parent.parent.name)
        return found

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            due = now + self.interval_s
            running = self.running()
            self.samples += 1
            for instance, nodes in running.items():
                for node in nodes:
                    span = self.seen.setdefault((instance, node), [now, now])
                    span[1] = now
                if len(nodes) > 1:
                    self.double_runs += 1
                    self.doubles.append((now, instance, tuple(sorted(nodes))))
            self._stop.wait(max(0.0, due - time.monotonic()))

    def on(self, node: str) -> set[str]:
        """The instances running on `node` now."""
        return {instance for instance, nodes in self.running().items() if node in nodes}
