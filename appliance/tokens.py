"""Join tokens: issue one for a new node, check it when the node joins; only a hash goes into the log.

A token is `cairn-join-v1.` followed by unpadded URL-safe base64 of a compact
JSON object: the CA fingerprint (so the joining node can tell it reached the
right cluster), the node name, its HOST:PORT address, the expiry in epoch
seconds, a 256-bit random secret and, optionally, `members`: the API
addresses of members the new node may ask to join (the voters when it was
issued). The member that issues it keeps a
`JoinTokenRecord` for the log: the same fields, with the secret replaced by its
SHA-256. This module reads no clock and imports nothing of Cairn's, so the
CLI may use it on its lean path.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass, field

TOKEN_PREFIX = "cairn-join-v1."
DEFAULT_TTL_S = 3600
_FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")
_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})$")
_FIELDS = ("ca", "node", "address", "expires_at", "secret")


class JoinTokenError(ValueError):
    """A join token cannot be used; the message says why and what to do."""


class TokenMalformed(JoinTokenError):
    """The text is not a join token (truncated, mistyped or from something else)."""


class TokenWrongCluster(JoinTokenError):
    """The token was issued by another cluster than the one it is presented to."""


class TokenExpired(JoinTokenError):
    """The token's time is up."""


class TokenRejected(JoinTokenError):
    """The token's secret or fields do not match what the cluster issued."""


@dataclass(frozen=True)
class JoinToken:
    """A parsed join token; its secret never shows in a repr."""

    ca_fingerprint: str
    node: str
    address: str
    expires_at: int
    secret: str = field(repr=False)
    members: tuple = ()

    @property
    def secret_hash(self) -> str:
        """SHA-256 of the secret, as hex: the key under which the cluster keeps its record."""
        return secret_hash(self.secret)


@dataclass(frozen=True)
class JoinTokenRecord:
    """What the log keeps of an issued token: plain, public data and the secret's hash."""

    node: str
    address: str
    expires_at: int
    secret_hash: str
    ca_fingerprint: str


def secret_hash(secret: str) -> str:
    """SHA-256 of a token secret, as hex; unsalted, since the secret is 256 random bits."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _add_hint(node: str, address: str) -> str:
    return f"ask for a new one with 'cairn node add {node} --address {address}'"


def _utc_text(epoch_s: int) -> str:
    return datetime.datetime.fromtimestamp(epoch_s, tz=datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def issue_token(ca_fingerprint: str, node_name: str, address: str, ttl_s: int = DEFAULT_TTL_S, *,
                now: float, members: tuple = ()) -> tuple[str, JoinTokenRecord]:
    """A new join token for `node_name` at `address`, valid `ttl_s` seconds from `now`, and its log record."""
    if not _FINGERPRINT.match(ca_fingerprint):
        raise ValueError(f"CA fingerprint {ca_fingerprint!r} is not 64 lowercase hex digits")
    if not node_name or any(c.isspace() for c in node_name):
        raise ValueError(f"node name {node_name!r} is empty or contains spaces; choose a plain name")
    if not _ADDRESS.match(address):
        raise ValueError(f"address {address!r} is not HOST:PORT; give it as, for example, 127.0.0.1:9000")
    if ttl_s <= 0:
        raise ValueError(f"a join token must live a positive time, not {ttl_s} s")
    secret = secrets.token_urlsafe(32)
    expires_at = int(now) + int(ttl_s)
    for member in members:
        if not _ADDRESS.match(member):
            raise ValueError(f"member address {member!r} is not HOST:PORT")
    payload = {"ca": ca_fingerprint, "node": node_name, "address": address, "expires_at": expires_at,
               "secret": secret}
    if members:
        payload["members"] = list(members)
    encoded = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("utf-8")
    token = TOKEN_PREFIX + base64.urlsafe_b64encode(encoded).rstrip(b"=").decode("ascii")
    record = JoinTokenRecord(node=node_name, address=address, expires_at=expires_at,
                             secret_hash=secret_hash(secret), ca_fingerprint=ca_fingerprint)
    return token, record


def parse_token(token: str) -> JoinToken:
    """The fields of a join token, or TokenMalformed saying how to get a good one."""
    malformed = TokenMalformed(
        "this is not a Cairn join token (it may be cut short or mistyped); copy the whole token that "
        "'cairn node add NODE --address HOST:PORT' printed")
    text = token.strip()
    if not text.startswith(TOKEN_PREFIX):
        raise malformed
    body = text[len(TOKEN_PREFIX):]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        payload = json.loads(raw.decode("utf-8"))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise malformed from None
    if not isinstance(payload, dict) or sorted(set(payload) - {"members"}) != sorted(_FIELDS):
        raise malformed
    members = payload.get("members", [])
    if not isinstance(members, list) or not all(isinstance(m, str) and _ADDRESS.match(m) for m in members):
        raise malformed
    strings = all(isinstance(payload[k], str) for k in ("ca", "node", "address", "secret"))
    if not strings or type(payload["expires_at"]) is not int or not _FINGERPRINT.match(payload["ca"]):
        raise malformed
    return JoinToken(ca_fingerprint=payload["ca"], node=payload["node"], address=payload["address"],
                     expires_at=payload["expires_at"], secret=payload["secret"], members=tuple(members))


def check_cluster(token: str, presented_fingerprint: str, address: str) -> JoinToken:
    """On the joining node: the parsed token, if the cluster at `address` has the token's CA fingerprint."""
    parsed = parse_token(token)
    if not hmac.compare_digest(parsed.ca_fingerprint, presented_fingerprint):
        raise TokenWrongCluster(
            f"the cluster at {address} has CA fingerprint {presented_fingerprint}, but this join token is for "
            f"the cluster with CA fingerprint {parsed.ca_fingerprint}; check the address, or "
            f"{_add_hint(parsed.node, parsed.address)} on a member of the cluster you mean to join")
    return parsed


def check_token(token: str, record: JoinTokenRecord, *, now: float) -> JoinToken:
    """On a member: the parsed token, if it matches `record` and has not expired at `now`.

    The secret is compared by hash in constant time. The record, not the
    token, is the authority for the node, address and expiry; a token whose
    fields differ from its record was altered and is refused. Using a token
    once is the daemon's part: it logs that the token was used.
    """
    parsed = parse_token(token)
    hint = _add_hint(record.node, record.address)
    if not hmac.compare_digest(parsed.ca_fingerprint, record.ca_fingerprint):
        raise TokenWrongCluster(
            f"this join token was issued by another cluster (CA fingerprint {parsed.ca_fingerprint}, this "
            f"cluster's is {record.ca_fingerprint}); {hint}")
    if not hmac.compare_digest(parsed.secret_hash, record.secret_hash):
        raise TokenRejected(f"the join token for node {record.node!r} does not match the one this cluster "
                            f"issued; {hint}")
    if (parsed.node, parsed.address, parsed.expires_at) != (record.node, record.address, record.expires_at):
        raise TokenRejected(f"the join token for node {record.node!r} was altered after it was issued; {hint}")
    if now >= record.expires_at:
        raise TokenExpired(f"the join token expired at {_utc_text(record.expires_at)}; {hint}")
    return parsed
