"""Tests of node_add."""

import hashlib

import pytest

from appliance.model import events as ev
from appliance.model.errors import ALREADY_EXISTS, UNKNOWN_ENTITY, WRONG_INPUT, WRONG_STATE
from tests.unit.test_ops_support import cluster, refused


def test_node_add_records_the_node_in_the_default_group():
    """An added node is a voter in the default group with its capacity."""
    box = cluster(nodes=1, memory_mib=2048)
    found = box.state.node_by_name("n1.example.com")
    assert found.group == box.state.cluster.default_group and found.role == "voter" and found.memory_mib == 2048


def test_node_add_refuses_an_existing_name():
    """A node name is unique."""
    refused(cluster(nodes=1), "node_add", ALREADY_EXISTS, "already in the cluster", name="n1.example.com")


def test_node_add_refuses_an_unknown_group():
    """The group must exist."""
    refused(cluster(nodes=0), "node_add", UNKNOWN_ENTITY, "Group 'rack9' not known", name="n1.example.com",
            group="rack9")


def test_sixth_master_capable_node_is_a_non_voter():
    """At most five nodes vote; the sixth joins as a non-voter."""
    box = cluster(nodes=0)
    for n in range(6):
        box.run("node_add", name=f"m{n}.example.com")
    assert box.state.node_by_name("m5.example.com").role == "non-voter"


# --- joining with a token -------------------------------------------------

SECRET_HASH = hashlib.sha256(b"a join secret").hexdigest()
SERIAL = "5c3e8a1f00d2b7"


def with_token(node: str = "n4.example.com", address: str = "10.0.0.4:7800"):
    """A three-node cluster with a join token issued for `node` at `address`."""
    box = cluster()
    box.run("node_token_issue", node=node, address=address, token_hash=SECRET_HASH, expires_at=1_764_637_200)
    return box


def test_node_add_with_a_token_spends_it_and_records_the_certificate():
    """The plan adds the node, spends the token and records the certificate's serial under the node's name."""
    box = with_token()
    plan = box.run("node_add", name="n4.example.com", address="10.0.0.4:7800", join_token_hash=SECRET_HASH,
                   certificate_serial=SERIAL)
    assert [type(e) for e in plan.events] == [ev.NodeAdded, ev.JoinTokenUsed, ev.NodeCertificateIssued]
    assert box.state.node_by_name("n4.example.com") is not None
    assert box.state.join_tokens[SECRET_HASH].used
    assert dict(box.state.certificates) == {"n4.example.com": SERIAL}


def test_node_add_refuses_a_token_used_before():
    """A token admits one node once: a second node_add with it is refused, naming how to get a new one."""
    box = with_token()
    box.run("node_add", name="n4.example.com", address="10.0.0.4:7800", join_token_hash=SECRET_HASH)
    box.run("node_remove", node="n4.example.com")
    refused(box, "node_add", WRONG_STATE, "already used", name="n4.example.com", address="10.0.0.4:7800",
            join_token_hash=SECRET_HASH)


def test_node_add_refuses_a_token_for_another_node():
    """A token issued for one node does not admit another name."""
    refused(with_token(), "node_add", WRONG_INPUT, "issued for node 'n4.example.com' at 10.0.0.4:7800",
            name="n5.example.com", address="10.0.0.4:7800", join_token_hash=SECRET_HASH)


def test_node_add_refuses_a_token_for_another_address():
    """A token issued for one address does not admit the node at another."""
    error = refused(with_token(), "node_add", WRONG_INPUT, "not 'n4.example.com' at 10.0.0.9:7800",
                    name="n4.example.com", address="10.0.0.9:7800", join_token_hash=SECRET_HASH)
    assert "cairn node add n4.example.com --address 10.0.0.9:7800" in error.message


def test_node_add_refuses_an_unknown_token():
    """A token hash the cluster never issued is refused, with how to issue one."""
    refused(cluster(), "node_add", UNKNOWN_ENTITY, "issue a new token with 'cairn node add n4.example.com --address",
            name="n4.example.com", join_token_hash=SECRET_HASH)


def test_node_add_refuses_a_token_instead_of_its_hash():
    """The token itself, sent where its hash belongs, is refused before it reaches the log."""
    refused(with_token(), "node_add", WRONG_INPUT, "SHA-256", name="n4.example.com", address="10.0.0.4:7800",
            join_token_hash="cairn-join-v1.eyJhZGRyZXNzIjoi")


def test_node_add_records_a_certificate_without_a_token():
    """A certificate serial given alone is recorded with the node, and no token is spent."""
    box = cluster()
    plan = box.run("node_add", name="n4.example.com", certificate_serial=SERIAL)
    assert [type(e) for e in plan.events] == [ev.NodeAdded, ev.NodeCertificateIssued]
    assert box.state.certificates["n4.example.com"] == SERIAL


@pytest.mark.parametrize("serial", ["0x5c3e", "5C3E", "05c3e", "5c3g", "f" * 41])
def test_node_add_refuses_a_malformed_serial(serial):
    """A serial is lower-case hex without 0x or leading zeros, at most 20 bytes."""
    refused(cluster(), "node_add", WRONG_INPUT, "Invalid certificate serial", name="n4.example.com",
            certificate_serial=serial)


def test_node_add_refuses_a_revoked_serial():
    """A serial revoked once never becomes a node's certificate again."""
    box = cluster()
    box.run("node_add", name="n4.example.com", certificate_serial=SERIAL)
    box.run("node_remove", node="n4.example.com")
    refused(box, "node_add", WRONG_STATE, "is revoked (it belonged to node 'n4.example.com')",
            name="n5.example.com", certificate_serial=SERIAL)


def test_node_add_refuses_another_nodes_serial():
    """Two nodes never hold the same certificate serial."""
    box = cluster()
    box.run("node_add", name="n4.example.com", certificate_serial=SERIAL)
    refused(box, "node_add", ALREADY_EXISTS, "belongs to node 'n4.example.com'", name="n5.example.com",
            certificate_serial=SERIAL)


def test_node_add_revokes_a_certificate_left_under_the_name():
    """A certificate still recorded under the name is revoked when the node gets a new one."""
    box = cluster()
    box.commit(ev.NodeCertificateIssued("n4.example.com", "abc"))
    plan = box.run("node_add", name="n4.example.com", certificate_serial=SERIAL)
    assert ev.NodeCertificateRevoked("n4.example.com", "abc") in plan.events
    assert box.state.certificates["n4.example.com"] == SERIAL and "abc" in box.state.revoked_serials
