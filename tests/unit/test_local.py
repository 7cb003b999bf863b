"""Tests of the local cluster's set-up (appliance/local.py) without starting a daemon."""

import json
import stat

import pytest

from appliance import local
from appliance.daemon.config import read_bootstrap, read_config


@pytest.fixture
def made(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    cluster, token = local.create(tmp_path / "c", 3, {"memory_mib": 4096, "disk_mib": 20_000, "cpus": 8})
    return tmp_path, cluster, token


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_create_makes_every_node_with_its_own_ports_and_secrets_0600(made):
    """Three nodes, three distinct port triples, secrets 0600, the CA key on the voters, the token only hashed."""
    tmp_path, cluster, token = made
    ports = [int(a.rsplit(":", 1)[1]) for a in cluster.nodes.values()]
    assert len({p + k for p in ports for k in range(3)}) == 9
    for name in cluster.nodes:
        pki = cluster.data_dir(name) / "pki"
        for secret in ("ca.key", "node.key", "raft.password"):
            assert mode(pki / secret) == 0o600
        assert read_config(cluster.data_dir(name)).memory_mib == 4096
    assert mode(cluster.client_config) == 0o600 and mode(tmp_path / "config" / "cairn" / "client.toml") == 0o600
    jobs = read_bootstrap(cluster.data_dir("node1"))
    assert [j["request_id"] for j in jobs] == ["bootstrap:cluster-init"] + [f"bootstrap:node-add:{n}"
                                                                             for n in cluster.nodes]
    assert token not in json.dumps(jobs) and token in cluster.client_config.read_text()


def test_up_refuses_fewer_nodes_and_names_node_remove(made):
    """A smaller --nodes is refused with the command that does it."""
    _tmp_path, cluster, _token = made
    with pytest.raises(local.LocalError, match="cairn node remove"):
        local.up(cluster.directory, 2)


def test_an_existing_default_client_config_is_kept(tmp_path, monkeypatch):
    """The user's own client.toml is never replaced by a second cluster's."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    local.create(tmp_path / "a", 3, {"memory_mib": 1024, "disk_mib": 1024, "cpus": 1})
    first = (tmp_path / "config" / "cairn" / "client.toml").read_text()
    local.create(tmp_path / "b", 3, {"memory_mib": 1024, "disk_mib": 1024, "cpus": 1})
    assert (tmp_path / "config" / "cairn" / "client.toml").read_text() == first


def test_fake_peers_find_nodes_that_joined_later(tmp_path):
    """The fake hypervisor's peers are the configured dirs, then siblings of this node's data dir, looked up live."""
    from appliance.daemon.main import FakePeers

    (tmp_path / "node1").mkdir()
    peers = FakePeers({"elsewhere": str(tmp_path / "x")}, tmp_path / "node1")
    assert "node4" not in peers and peers["elsewhere"] == tmp_path / "x" / "hv"
    (tmp_path / "node4").mkdir()
    (tmp_path / "node4" / "node.json").write_text("{}")
    assert peers["node4"] == tmp_path / "node4" / "hv" and "node4" in set(peers)


def test_wait_ready_names_a_daemon_that_died(made, monkeypatch):
    """A node whose daemon is gone is named, with the end of its log, even when the others answer."""
    _tmp_path, cluster, _token = made
    monkeypatch.setattr(local, "wait_for_nodes", lambda *args: {"leader": "node1"})
    monkeypatch.setattr(local, "read_pid", lambda data_dir: None if data_dir.name == "node2" else 1)
    monkeypatch.setattr(local, "_started", {cluster.data_dir("node2"): 2 ** 22 + 12345})   # no such child
    (cluster.data_dir("node2") / "daemon.log").write_text("starting\ncannot listen on 127.0.0.1:7001 for Raft\n")
    with pytest.raises(local.LocalError, match="node2 did not keep running(.|\\n)*cannot listen"):
        local.wait_ready(cluster, 1.0)
