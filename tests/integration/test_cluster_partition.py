"""A network partition, for real: each node in its own network namespace on a bridge; one node is cut off.

The minority (the cut-off node) loses its leader's lease, so its watchdog kills its instances; the majority
fences it after the recovery interval and recovers its instances on their secondaries. Healed, the node
comes back online by itself. A 10 ms process monitor fails the test on any moment with two copies running.

Needs root and iproute2 (`ip netns`); skipped with a message where namespaces are not permitted. Every
address is inside the namespaces the test makes (10.213.7.0/24 on a bridge in a namespace of its own);
nothing is added to the host's own network, and the namespaces are deleted at the end.
"""

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.cluster_support import CAIRN, InstanceMonitor

pytestmark = pytest.mark.slow

SUBNET = "10.213.7"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


class NetnsCluster:
    """Three nodes, each with its daemon and watchdog in a namespace of its own; the CLI in a fourth."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.directory = root / "cluster"
        tag = f"{os.getpid() % 100000}"
        self.bridge = f"cb{tag}"
        self.client = f"cc{tag}"
        self.names = ["node1", "node2", "node3"]
        self.spaces = {name: f"cn{tag}{k}" for k, name in enumerate(self.names, 1)}
        self.hosts = {name: f"{SUBNET}.{k}" for k, name in enumerate(self.names, 1)}
        self.links = {name: f"v{tag}{k}" for k, name in enumerate(self.names, 1)}
        self.processes: list[subprocess.Popen] = []
        self.made: list[str] = []
        self.env = {**os.environ, "XDG_CONFIG_HOME": str(root / "config"), "XDG_DATA_HOME": str(root / "data"),
                    "CAIRN_CONFIG": str(self.directory / "client.toml")}

    # --- the network ---------------------------------------------------------------------------

    def network(self) -> None:
        ip("netns", "add", self.bridge)
        self.made.append(self.bridge)
        ip("-n", self.bridge, "link", "add", "br0", "type", "bridge")
        ip("-n", self.bridge, "link", "set", "br0", "up")
        members = [*[(self.spaces[n], self.hosts[n], self.links[n]) for n in self.names],
                   (self.client, f"{SUBNET}.100", self.links["node1"][:-1] + "c")]
        for space, host, link in members:
            ip("netns", "add", space)
            self.made.append(space)
            ip("-n", space, "link", "set", "lo", "up")
            ip("link", "add", f"{link}a", "netns", space, "type", "veth", "peer", "name", f"{link}b",
               "netns", self.bridge)
            ip("-n", space, "addr", "add", f"{host}/24", "dev", f"{link}a")
            ip("-n", space, "link", "set", f"{link}a", "up")
            ip("-n", self.bridge, "link", "set", f"{link}b", "master", "br0")
            ip("-n", self.bridge, "link", "set", f"{link}b", "up")

    def cut(self, node: str) -> None:
        ip("-n", self.bridge, "link", "set", f"{self.links[node]}b", "down")

    def heal(self, node: str) -> None:
        ip("-n", self.bridge, "link", "set", f"{self.links[node]}b", "up")

    # --- the nodes -----------------------------------------------------------------------------

    def start(self) -> None:
        from appliance import local

        local.create(self.directory, len(self.names), hosts=[self.hosts[n] for n in self.names])
        for name in self.names:
            for module, log in (("appliance.fencing", "watchdog.log"), ("appliance.daemon.main", "daemon.log")):
                self.processes.append(local.spawn(self.directory / name, module, log,
                                                  ("ip", "netns", "exec", self.spaces[name])))

    def cli(self, *args: str, via: str = "node1", check: bool = True) -> subprocess.CompletedProcess:
        env = {**self.env, "CAIRN_API": f"{self.hosts[via]}:7100"}
        result = subprocess.run(["ip", "netns", "exec", self.client, CAIRN, *args], capture_output=True, text=True,
                                timeout=60, env=env)
        if check and result.returncode != 0:
            raise AssertionError(f"cairn {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result

    def json(self, *args: str, via: str = "node1"):
        return json.loads(self.cli(*args, "--output", "json", via=via).stdout)

    def wait(self, predicate, timeout_s: float, what: str):
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            with contextlib.suppress(AssertionError, ValueError, subprocess.TimeoutExpired):
                last = predicate()
                if last:
                    return last
            time.sleep(0.3)
        raise AssertionError(f"{what} did not happen within {timeout_s:g} s (last: {last})")

    def stop(self) -> None:
        for process in self.processes:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)
                os.kill(process.pid, signal.SIGKILL)
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        for pid_file in self.directory.glob("node*/hv/instances/*/pid"):
            with contextlib.suppress(OSError, ValueError, ProcessLookupError):
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
        for space in reversed(self.made):
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                ip("netns", "del", space)


@pytest.fixture
def netns_cluster(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the partition test needs root to make network namespaces (ip netns); run it as root")
    cluster = NetnsCluster(tmp_path)
    try:
        try:
            cluster.network()
        except (OSError, subprocess.CalledProcessError) as error:
            pytest.skip(f"network namespaces are not permitted here ({getattr(error, 'stderr', '') or error}); "
                        "the partition test needs root and iproute2")
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def test_a_partitioned_node_fences_itself_and_the_majority_recovers_its_instances(netns_cluster):
    cluster = netns_cluster
    cluster.wait(lambda: len(cluster.json("node", "list", "-o", "name")) == 3, 90, "the cluster and its 3 nodes")
    leader = cluster.cli("cluster", "master").stdout.strip()
    victim = next(n for n in cluster.names if n != leader)
    other = next(n for n in cluster.names if n not in (leader, victim))
    names = ["part0", "part1"]
    for name in names:
        cluster.cli("instance", "add", "-t", "replicated", "-n", f"{victim}:{other}", "-s", "1G",
                    "-B", "memory=128M", "--no-install", name, via=leader)

    def uptodate():
        rows = cluster.json("instance", "list", "-o", "name,snodes,status,disk_states", via=leader)
        return all(r["status"] == "running" and (other, "UPTODATE") in
                   {(s["node"], s["state"]) for s in r.get("disk_states") or []} for r in rows)
    cluster.wait(uptodate, 60, "the instances to run with UPTODATE secondaries")
    ids = {r["name"]: r["id"] for r in cluster.json("instance", "list", "-o", "name,id", via=leader)}

    with InstanceMonitor(cluster.directory) as monitor:
        cluster.cut(victim)
        cut_at = time.monotonic()

        def recovered():
            running = monitor.running()
            return all(running.get(ids[n]) == [other] for n in names)
        cluster.wait(recovered, 60, "the instances to run on their secondaries")
        took = time.monotonic() - cut_at
        # The minority killed its own instances: nothing runs on it, and each copy there died before the
        # recovered one started.
        assert monitor.on(victim) == set()
        for name in names:
            old, new = monitor.seen.get((ids[name], victim)), monitor.seen.get((ids[name], other))
            assert new is not None and (old is None or old[1] < new[0]), (name, old, new)
        cluster.heal(victim)
        cluster.wait(lambda: next(r for r in cluster.json("node", "list", "-o", "name,liveness", via=leader)
                                  if r["name"] == victim)["liveness"] == "alive", 60, f"{victim} back online")
        time.sleep(2)
    assert monitor.double_runs == 0, monitor.doubles[:5]
    assert took >= 7.5, f"recovered {took:.1f} s after the cut, before the recovery interval could pass"
    fences = [j for j in cluster.json("job", "list", "-o", "summary,actor", via=leader)
              if "NODE_FENCE" in " ".join(j["summary"])]
    assert [j["actor"] for j in fences] == ["cairn-healer"]
