"""Who is calling: bearer tokens to users and roles, and the node token members call each other with.

A request is checked with one SHA-256 and one map lookup: the log holds only
the hash of each token (`CredentialAdded`), which names a user, whose role
decides what the request may do. Members of the cluster use the node token,
derived from the Raft password they share; it reads, and never writes.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from appliance.model.state import ClusterState
from ops.base import ROLE_RANK

NODE_ACTOR = "cairn-node"
NODE_ROLE = "read-only"
NODE_TOKEN_MESSAGE = b"cairn node api token"
_SCHEME = "bearer"


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: the actor its requests are recorded under, and its role."""

    name: str
    role: str

    def may(self, role: str) -> bool:
        """Whether the caller's role is `role` or above."""
        return ROLE_RANK[self.role] >= ROLE_RANK[role]

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class ApiError(Exception):
    """A request the API refuses itself: HTTP `status`, a model or API error `code` (401 unauthenticated and
    403 permission_denied from here), and what to do."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def node_token(raft_password: str) -> str:
    """The token members call each other's API with: HMAC-SHA256 of a fixed message keyed by the Raft password, hex."""
    return hmac.new(raft_password.encode("utf-8"), NODE_TOKEN_MESSAGE, hashlib.sha256).hexdigest()


def token_hash(token: str) -> str:
    """The SHA-256 (hex) of a bearer token: the only form the log knows it by (as `pki.credential_hash`)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header, or None when there is none."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != _SCHEME or not token:
        return None
    return token


def authenticate(state: ClusterState, authorization: str | None, node_token_hash: str,
                 node_certified: bool = False) -> Caller:
    """The caller an Authorization header names; ApiError(401) for a missing or unknown token.

    The node token counts only on a connection that presented a node certificate
    the cluster has not revoked (`node_certified`): a removed node still knows
    the Raft password the token derives from, but its certificate is refused.
    """
    token = bearer_token(authorization)
    if token is None:
        raise ApiError(401, "unauthenticated", "This API needs 'Authorization: Bearer TOKEN'; "
                                                "give the token 'cairn user add' or 'cairn cluster init' printed")
    digest = token_hash(token)
    if node_token_hash and hmac.compare_digest(digest, node_token_hash):
        if not node_certified:
            raise ApiError(401, "unauthenticated", "The node token is accepted only with a node certificate of "
                                                    "this cluster that was not revoked")
        return Caller(NODE_ACTOR, NODE_ROLE)
    user_name = state.credentials.get(digest)
    user = state.users.get(user_name) if user_name is not None else None
    if user is None:
        raise ApiError(401, "unauthenticated", "The cluster does not know this token (it may have been removed); "
                                                "ask an admin for a new one with 'cairn user add' or a new credential")
    return Caller(user.name, user.role)


def require(caller: Caller, role: str, what: str) -> None:
    """Refuse (ApiError 403) a caller below `role`; `what` names what it tried, for the message."""
    if not caller.may(role):
        raise ApiError(403, "permission_denied", f"User '{caller.name}' has role {caller.role}; "
                                                  f"{what} needs role {role} or higher")
