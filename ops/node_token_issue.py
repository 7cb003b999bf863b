"""Issue a one-time join token for a node not yet in the cluster; only the token secret's hash reaches the log.

The CLI makes the token (`appliance.tokens.issue_token`: the secret, the CA
fingerprint, the node, its address and the expiry) and sends only the record's
hash and expiry here. The node then joins with the token, and `node_add`
spends it. The expiry is checked by the daemon that takes the join, against
its clock: operations read no clock.
"""

from dataclasses import dataclass

from appliance.model import events as ev
from appliance.model.errors import ALREADY_EXISTS, PrereqError
from ops import _common
from ops.base import Claims, Plan, new_name, no_prepare, one_step

NAME = "node_token_issue"
OPCODE = "NODE_TOKEN_ISSUE"
ROLE = "admin"
DRAIN_EXEMPT = False
BEFORE_INIT = False
REFERENCES = {}
prepare = no_prepare


@dataclass(frozen=True)
class Params:
    node: str                 # the name the new node will have
    address: str              # its HOST:PORT ("" for NODE:7800, as node_add)
    token_hash: str           # SHA-256 (hex) of the token's secret; the secret itself never reaches the log
    expires_at: int           # epoch seconds


def claims(state, params: Params) -> Claims:
    # The name the node will take, as node_add claims it: a token is not issued while that name is being added.
    return Claims(nodes=frozenset({new_name(params.node)}))


def check(state, params: Params) -> None:
    _common.new_node(state, params.node, params.address)
    _common.credential_hash(params.token_hash, "join token hash", "the token's secret")
    if params.token_hash in state.join_tokens:
        raise PrereqError(ALREADY_EXISTS, "That join token was issued before; make a new one")
    _common.positive(params.expires_at, "expires_at (epoch seconds)")


def plan(state, params: Params) -> Plan:
    issued = ev.JoinTokenIssued(params.node, _common.node_address(params.node, params.address), params.token_hash,
                                params.expires_at)
    return one_step(f"issuing a join token for node {params.node}", issued)
