"""A cluster grown by hand: cluster init, node add (a join token), node join, node remove; every node a process."""

import contextlib
import json
import os
import signal
import socket

import pytest

from appliance.local import read_watchdog_pid, stop_instances
from tests.integration.cluster_support import LocalCluster

pytestmark = pytest.mark.slow


def free_port_triple() -> int:
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        ok = True
        for p in (port + 1, port + 2):
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
        if ok and port + 2 < 65535:
            return port


class GrownCluster(LocalCluster):
    """Nodes n1..nK made with cluster init and joins; the client config is the one cluster init wrote."""

    def __init__(self, root):
        super().__init__(root, nodes=0)
        self.addresses = {}
        self.env["CAIRN_CONFIG"] = str(root / "n1" / "client.toml")

    def address(self, node):
        return self.addresses[node]

    def data_dir(self, node):
        return self.root / node

    def pid(self, node):
        try:
            return int((self.data_dir(node) / "daemon.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def kill(self, node, signum=signal.SIGKILL):
        os.kill(self.pid(node), signum)

    def status(self, node):
        return json.loads(self.run("cluster", "info", "--output", "json", "--api", self.address(node)).stdout)

    def down(self):
        for node in self.addresses:
            watchdog = read_watchdog_pid(self.data_dir(node))
            for pid in (watchdog, self.pid(node)):
                if pid is not None:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
            stop_instances(self.data_dir(node) / "hv")


@pytest.fixture
def grown(tmp_path):
    cluster = GrownCluster(tmp_path)
    try:
        yield cluster
    finally:
        cluster.down()


CAPACITY = ("--node-memory", "8192", "--node-disk", "50000", "--node-cpus", "8")


def add_and_join(cluster, node, via=None):
    cluster.addresses[node] = f"127.0.0.1:{free_port_triple()}"
    api = ("--api", cluster.address(via)) if via else ()
    token = cluster.run("node", "add", node, "--address", cluster.addresses[node], *api).stdout.strip()
    assert token.startswith("cairn-join-v1.")
    cluster.run("node", "join", token, "--address", cluster.addresses[node], "--data-dir",
                str(cluster.data_dir(node)), *CAPACITY)
    return token


def test_init_add_join_remove(grown):
    """Three nodes joined with one-time tokens become voters; a token works once; a removed node leaves the log."""
    grown.addresses["n1"] = f"127.0.0.1:{free_port_triple()}"
    grown.run("cluster", "init", "grown.example", "--node", "n1", "--address", grown.addresses["n1"],
              "--data-dir", str(grown.data_dir("n1")), *CAPACITY)
    assert oct(os.stat(grown.data_dir("n1") / "client.toml").st_mode & 0o777) == "0o600"
    token = add_and_join(grown, "n2")
    add_and_join(grown, "n3")
    # The same token again, for another data dir: refused, nothing written.
    again = grown.run("node", "join", token, "--address", grown.addresses["n2"], "--data-dir",
                      str(grown.root / "n2-again"), *CAPACITY, check=False)
    assert again.returncode == 1 and "used already" in again.stderr, again.stderr
    assert not (grown.root / "n2-again" / "node.json").exists()
    nodes = grown.json("node", "list")
    assert sorted((n["name"], n["voter"]) for n in nodes) == [("n1", True), ("n2", True), ("n3", True)]
    grown.wait(lambda: sorted(grown.status("n1")["voters"]) == ["n1", "n2", "n3"], 30, "three voters in the log")
    # The joined nodes run instances, and the cluster survives the loss of its first node.
    grown.run("instance", "add", "-t", "diskless", "-n", "n3", "--no-install", "j1")
    grown.kill("n1")
    grown.wait(lambda: grown.status("n2")["leader"] in ("n2", "n3"), 30, "a new leader")
    grown.run("instance", "add", "-t", "diskless", "-n", "n2", "--no-install", "j2", "--api", grown.address("n3"))
    # n1 is dead: declare it offline, then remove it; the log drops it from its voters.
    grown.run("node", "modify", "--offline", "yes", "n1", "--api", grown.address("n2"))
    grown.run("node", "remove", "n1", "--api", grown.address("n2"))
    assert "n1" not in {n["name"] for n in grown.json("node", "list", "--api", grown.address("n2"))}
    grown.wait(lambda: sorted(grown.status("n2").get("voters", [])) == ["n2", "n3"], 30,
               "the log to drop n1 from its voters")
    revoked = [json.loads(line) for line in grown.run("events", "export", "--api", grown.address("n3")).stdout.splitlines()
               if '"NodeCertificateRevoked"' in line]
    assert [event["payload"]["node"] for event in revoked] == ["n1"]
    # The removed node's certificate is refused at the handshake; a member's is still taken.
    assert handshake_refused(grown, "n1", "n2") and not handshake_refused(grown, "n3", "n2")
    # A node removed while it runs stops its own daemon once it has applied its removal.
    add_and_join(grown, "n4", via="n2")
    grown.wait(lambda: "n4" in grown.status("n2")["voters"], 30, "n4 to vote")
    pid = grown.pid("n4")
    grown.run("node", "remove", "n4", "--api", grown.address("n2"))
    grown.wait(lambda: not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z",
               30, "the removed node's daemon to stop")
    grown.wait(lambda: sorted(grown.status("n2")["voters"]) == ["n2", "n3"], 30, "the log to drop n4")


def handshake_refused(cluster, holder, server) -> bool:
    """Whether `server` closes a connection that presents `holder`'s node certificate and the node token."""
    import http.client

    from appliance import pki
    from appliance.api.auth import node_token

    paths = pki.pki_paths(cluster.data_dir(holder))
    context = pki.client_context(paths.ca_cert.read_bytes(), paths.node_cert, paths.node_key)
    token = node_token(pki.read_secret_file(paths.raft_password).decode())
    host, _, port = cluster.address(server).rpartition(":")
    connection = http.client.HTTPSConnection(host, int(port), timeout=10, context=context)
    try:
        connection.request("GET", "/api/v1/status?stale=1", headers={"Authorization": f"Bearer {token}"})
        return connection.getresponse().status != 200
    except (OSError, http.client.HTTPException):
        return True
    finally:
        connection.close()
