"""Tests of making a node's data dir (appliance/nodes.py): the refusals that happen before any network call."""

import stat

import pytest

from appliance import tokens
from appliance.daemon.config import read_bootstrap, read_config
from appliance.nodes import NodeSetupError, init_cluster, join_cluster

CAPACITY = {"memory_mib": 4096, "disk_mib": 10_000, "cpus": 4}


def token(address="10.0.0.4:7000", members=("10.0.0.1:7000",)):
    text, _record = tokens.issue_token("ab" * 32, "node4", address, now=1000.0, members=members)
    return text


def test_init_writes_one_voter_and_its_bootstrap(tmp_path):
    """The first node is the only voter; its bootstrap adds it with its certificate's serial; secrets 0600."""
    admin = init_cluster("c.example.com", "n1", "127.0.0.1:7000", tmp_path / "n1", CAPACITY)
    config = read_config(tmp_path / "n1")
    assert config.voters == {"n1": "127.0.0.1:7000"} and config.voter and config.memory_mib == 4096
    jobs = read_bootstrap(tmp_path / "n1")
    node_add = jobs[1]["operations"][0]["params"]
    assert node_add["name"] == "n1" and len(node_add["certificate_serial"]) > 10
    assert admin not in str(jobs)
    assert stat.S_IMODE((tmp_path / "n1" / "pki" / "ca.key").stat().st_mode) == 0o600
    with pytest.raises(NodeSetupError, match="already a node's data dir"):
        init_cluster("c.example.com", "n1", "127.0.0.1:7000", tmp_path / "n1", CAPACITY)


def test_join_refuses_before_calling_anyone(tmp_path):
    """A wrong address, a token without members, a bad token or a used data dir: refused, nothing written."""
    with pytest.raises(NodeSetupError, match="not at 10.0.0.9:7000"):
        join_cluster(token(), "10.0.0.9:7000", tmp_path / "a", CAPACITY)
    with pytest.raises(NodeSetupError, match="names no member"):
        join_cluster(token(members=()), "10.0.0.4:7000", tmp_path / "b", CAPACITY)
    with pytest.raises(NodeSetupError, match="not a Cairn join token"):
        join_cluster("nonsense", "10.0.0.4:7000", tmp_path / "c", CAPACITY)
    init_cluster("c.example.com", "n1", "127.0.0.1:7000", tmp_path / "used", CAPACITY)
    with pytest.raises(NodeSetupError, match="already a node's data dir"):
        join_cluster(token(), "10.0.0.4:7000", tmp_path / "used", CAPACITY)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
