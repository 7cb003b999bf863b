"""Tests of join tokens: issue, check, expiry, tampering, the wrong cluster, and what the record holds."""

import base64
import dataclasses
import json

import pytest

from appliance import tokens

NOW = 1_750_000_000.0
FINGERPRINT = "ab" * 32
OTHER_FINGERPRINT = "cd" * 32


def issued(**overrides):
    arguments = {"ca_fingerprint": FINGERPRINT, "node_name": "node4", "address": "127.0.0.1:9006", "now": NOW}
    return tokens.issue_token(**{**arguments, **overrides})


def rewritten(token, **changes):
    """The token with some payload fields changed, encoded as a genuine one would be."""
    body = token[len(tokens.TOKEN_PREFIX):]
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    encoded = json.dumps({**payload, **changes}, separators=(",", ":")).encode()
    return tokens.TOKEN_PREFIX + base64.urlsafe_b64encode(encoded).rstrip(b"=").decode()


def test_token_round_trips():
    """A fresh token checks against its record and carries the fingerprint, node and address."""
    token, record = issued()
    parsed = tokens.check_token(token, record, now=NOW + 10)
    assert (parsed.ca_fingerprint, parsed.node, parsed.address) == (FINGERPRINT, "node4", "127.0.0.1:9006")
    assert parsed.expires_at == record.expires_at == int(NOW) + 3600
    assert parsed.secret_hash == record.secret_hash


def test_record_holds_only_the_hash_of_the_secret():
    """The record holds the secret's hash and the secret appears nowhere in it."""
    token, record = issued()
    secret = tokens.parse_token(token).secret
    plain = json.dumps(dataclasses.asdict(record))
    assert secret not in plain and secret not in repr(record)
    assert record.secret_hash == tokens.secret_hash(secret)
    assert set(dataclasses.asdict(record)) == {"node", "address", "expires_at", "secret_hash", "ca_fingerprint"}


def test_secret_does_not_show_in_a_parsed_token_repr():
    """The repr of a parsed token leaves out its secret."""
    token, _ = issued()
    parsed = tokens.parse_token(token)
    assert parsed.secret not in repr(parsed)


def test_two_tokens_have_different_secrets():
    """Each token gets its own random secret."""
    assert issued()[1].secret_hash != issued()[1].secret_hash


def test_expired_token_is_refused_with_the_command_for_a_new_one():
    """A token past its expiry is refused, naming the time and the command that makes a new one."""
    token, record = issued(ttl_s=60)
    with pytest.raises(tokens.TokenExpired, match=r"expired at 2025-06-15 15:07:40 UTC; ask for a new one with "
                                                  r"'cairn node add node4 --address 127\.0\.0\.1:9006'"):
        tokens.check_token(token, record, now=NOW + 60)


def test_token_with_a_wrong_secret_is_refused():
    """A token whose secret differs from the issued one is refused."""
    token, record = issued()
    forged = rewritten(token, secret="A" * 43)
    with pytest.raises(tokens.TokenRejected, match="does not match.*cairn node add node4"):
        tokens.check_token(forged, record, now=NOW)


def test_token_with_a_stretched_expiry_is_refused():
    """A token whose expiry was pushed back after issue is refused as altered."""
    token, record = issued()
    stretched = rewritten(token, expires_at=record.expires_at + 86400)
    with pytest.raises(tokens.TokenRejected, match="altered"):
        tokens.check_token(stretched, record, now=NOW)


@pytest.mark.parametrize("text", ["", "hello", tokens.TOKEN_PREFIX + "!!!", tokens.TOKEN_PREFIX + "e30",
                                  "cairn-join-v1.eyJjYSI6"])
def test_malformed_token_is_refused(text):
    """Text that is not a whole join token is refused with a hint to copy the whole token."""
    _, record = issued()
    with pytest.raises(tokens.TokenMalformed, match="copy the whole token"):
        tokens.check_token(text, record, now=NOW)


def test_truncated_token_is_refused():
    """A join token cut short is refused as malformed."""
    token, record = issued()
    with pytest.raises(tokens.TokenMalformed):
        tokens.check_token(token[:-10], record, now=NOW)


def test_token_of_another_cluster_is_refused_by_a_member():
    """A member refuses a token issued by a cluster with another CA fingerprint."""
    token, _ = issued(ca_fingerprint=OTHER_FINGERPRINT)
    _, record = issued()
    with pytest.raises(tokens.TokenWrongCluster, match="another cluster"):
        tokens.check_token(token, record, now=NOW)


def test_joining_node_refuses_a_cluster_with_another_fingerprint():
    """The joining node refuses a cluster whose CA fingerprint is not the token's."""
    token, _ = issued()
    assert tokens.check_cluster(token, FINGERPRINT, "10.0.0.1:9000").node == "node4"
    with pytest.raises(tokens.TokenWrongCluster, match=f"10.0.0.1:9000 has CA fingerprint {OTHER_FINGERPRINT}"):
        tokens.check_cluster(token, OTHER_FINGERPRINT, "10.0.0.1:9000")


@pytest.mark.parametrize(("field", "value"), [("ca_fingerprint", "AB"), ("address", "127.0.0.1"),
                                              ("node_name", "two words"), ("ttl_s", 0)])
def test_issue_refuses_bad_input(field, value):
    """Issuing refuses a bad fingerprint, an address without a port, a name with spaces, or no lifetime."""
    with pytest.raises(ValueError):
        issued(**{field: value})


def test_a_token_carries_the_members_to_ask():
    """The voters' addresses travel in the token, so `cairn node join` knows where to go."""
    token, _record = tokens.issue_token("ab" * 32, "node4", "10.0.0.4:7000", now=1000.0,
                                 members=("10.0.0.1:7000", "10.0.0.2:7000"))
    assert tokens.parse_token(token).members == ("10.0.0.1:7000", "10.0.0.2:7000")
    plain, _record = tokens.issue_token("ab" * 32, "node4", "10.0.0.4:7000", now=1000.0)
    assert tokens.parse_token(plain).members == ()
