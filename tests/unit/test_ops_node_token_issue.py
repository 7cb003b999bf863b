"""Tests of node_token_issue."""

import hashlib

from appliance.model import events as ev
from appliance.model.errors import ALREADY_EXISTS, PERMISSION_DENIED, WRONG_INPUT
from appliance.model.state import JoinTokenEntry
from tests.unit.test_ops_support import cluster, refused

SECRET_HASH = hashlib.sha256(b"a join secret").hexdigest()
EXPIRES_AT = 1_764_637_200


def issue(**fields) -> dict:
    """node_token_issue's fields for node n4 at 10.0.0.4:7800, with the given ones changed."""
    return dict(node="n4.example.com", address="10.0.0.4:7800", token_hash=SECRET_HASH, expires_at=EXPIRES_AT) | fields


def test_node_token_issue_plans_one_join_token_issued():
    """The plan is one step holding JoinTokenIssued with the node, address, hash and expiry."""
    plan = cluster().plan("node_token_issue", **issue())
    assert len(plan.steps) == 1
    assert plan.events == (ev.JoinTokenIssued("n4.example.com", "10.0.0.4:7800", SECRET_HASH, EXPIRES_AT),)


def test_node_token_issue_records_an_unused_token_under_its_hash():
    """The state keeps the token under its hash, unused, with whom it admits and until when."""
    box = cluster()
    box.run("node_token_issue", **issue())
    assert dict(box.state.join_tokens) == {SECRET_HASH: JoinTokenEntry("n4.example.com", "10.0.0.4:7800", EXPIRES_AT,
                                                                       False, "admin")}


def test_node_token_issue_without_an_address_uses_the_default_port():
    """An empty address means NODE:7800, as node_add takes it."""
    box = cluster()
    box.run("node_token_issue", **issue(address=""))
    assert box.state.join_tokens[SECRET_HASH].address == "n4.example.com:7800"


def test_node_token_issue_refuses_a_name_in_the_cluster():
    """A token is not issued for a node name the cluster already has."""
    refused(cluster(), "node_token_issue", ALREADY_EXISTS, "Node 'n1.example.com' is already in the cluster",
            **issue(node="n1.example.com"))


def test_node_token_issue_refuses_an_invalid_name():
    """The node name must be a lower-case host name."""
    refused(cluster(), "node_token_issue", WRONG_INPUT, "Invalid hostname 'N4_bad'", **issue(node="N4_bad"))


def test_node_token_issue_refuses_an_address_in_use():
    """A token is not issued for an address another node has."""
    refused(cluster(), "node_token_issue", ALREADY_EXISTS, "Address n1.example.com:7800 is already used",
            **issue(address="n1.example.com:7800"))


def test_node_token_issue_refuses_a_malformed_address():
    """The address must be HOST:PORT."""
    refused(cluster(), "node_token_issue", WRONG_INPUT, "give HOST:PORT", **issue(address="10.0.0.4"))


def test_node_token_issue_refuses_a_token_instead_of_its_hash():
    """Anything but 64 lower-case hex digits is refused, so a token never lands in the log by mistake."""
    refused(cluster(), "node_token_issue", WRONG_INPUT, "SHA-256 of the token's secret",
            **issue(token_hash="cairn-join-v1.eyJhZGRyZXNzIjoi"))


def test_node_token_issue_refuses_a_hash_issued_before():
    """A hash already in the state is refused: a token is issued once."""
    box = cluster()
    box.run("node_token_issue", **issue())
    refused(box, "node_token_issue", ALREADY_EXISTS, "issued before", **issue(node="n5.example.com",
                                                                              address="10.0.0.5:7800"))


def test_node_token_issue_refuses_an_expiry_below_one():
    """The expiry must be a positive number of epoch seconds."""
    refused(cluster(), "node_token_issue", WRONG_INPUT, "expires_at", **issue(expires_at=0))


def test_node_token_issue_needs_an_admin():
    """Only an admin issues join tokens."""
    box = cluster()
    box.run("user_add", name="bob", role="operator")
    refused(box, "node_token_issue", PERMISSION_DENIED, "needs role admin", actor="bob", **issue())


def test_node_token_issue_claims_the_name_node_add_claims():
    """Issuing a token for a name and adding a node of that name do not run at once."""
    from ops import node_add, node_token_issue

    box = cluster()
    token_claims = node_token_issue.claims(box.state, node_token_issue.Params(**issue()))
    add_claims = node_add.claims(box.state, node_add.Params(name="n4.example.com"))
    assert token_claims.conflicts(add_claims)
