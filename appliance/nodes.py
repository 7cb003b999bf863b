"""Making a node's data dir: the first node of a new cluster (`cairn cluster init`) and a joining one
(`cairn node join`). `appliance.local` makes a whole local cluster with the same pieces.

A node's data dir holds `node.json` (who it is, whom it starts with) and
`pki/` (the CA certificate, the CA key on voters, its own key and
certificate, the Raft password; secrets 0600). A joining node makes its own
key here and sends only the public half; it checks the CA's fingerprint
against the token's before it sends the token anywhere.
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
from pathlib import Path

from appliance import clock, pki, tokens
from appliance.daemon.config import ConfigError, NodeConfig, write_bootstrap, write_config

JOIN_TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 40.0


class NodeSetupError(RuntimeError):
    """A node's data dir cannot be made, or the cluster refused it; the message says why and what to do."""


def write_node(data_dir: Path, config: NodeConfig, *, ca_pem: bytes, cert_pem: bytes, key_pem: bytes,
               raft_password: str, ca_key_pem: bytes | None = None) -> None:
    """A node's secrets and configuration, secrets 0600 (the CA key only on voters)."""
    paths = pki.pki_paths(data_dir)
    paths.directory.mkdir(parents=True, exist_ok=True)
    pki.write_public_file(paths.ca_cert, ca_pem, overwrite=True)
    if ca_key_pem is not None:
        pki.write_secret_file(paths.ca_key, ca_key_pem, overwrite=True)
    pki.write_public_file(paths.node_cert, cert_pem, overwrite=True)
    pki.write_secret_file(paths.node_key, key_pem, overwrite=True)
    pki.write_secret_file(paths.raft_password, raft_password.encode(), overwrite=True)
    write_config(data_dir, config)


def _fresh(data_dir: Path) -> None:
    if (data_dir / "node.json").exists():
        raise NodeSetupError(f"{data_dir} is already a node's data dir; give another --data-dir (or remove it if "
                             "the node it held is gone for good)")


def _config(name: str, address: str, cluster: str, voters: dict, voter: bool, capacity: dict) -> NodeConfig:
    try:
        return NodeConfig(name=name, address=address, cluster=cluster, voters=voters, voter=voter,
                          **{k: v for k, v in capacity.items() if v is not None})
    except ConfigError as error:
        raise NodeSetupError(str(error)) from None


def init_cluster(name: str, node: str, address: str, data_dir: Path, capacity: dict) -> str:
    """The first node's data dir of a new cluster, with the bootstrap jobs its daemon submits; the admin token."""
    from appliance.drivers import host

    _fresh(data_dir)
    now = clock.now()
    try:
        detected = host.detect(str(data_dir.parent if not data_dir.exists() else data_dir),
                               **{k: v for k, v in capacity.items() if v is not None})
        ca = pki.create_ca(name, now)
    except ValueError as error:
        raise NodeSetupError(str(error)) from None
    cert = pki.issue_node_certificate(ca, node, [address.rpartition(":")[0]], now)
    token = pki.new_credential()
    config = _config(node, address, name, {node: address}, True, capacity)
    write_node(data_dir, config, ca_pem=ca.cert_pem, cert_pem=cert.cert_pem, key_pem=cert.key_pem,
               raft_password=pki.new_raft_password(), ca_key_pem=ca.key_pem)
    write_bootstrap(data_dir, [
        {"request_id": "bootstrap:cluster-init", "operations": [
            {"op": "cluster_init", "params": {"name": name, "admin_credential_hash": pki.credential_hash(token),
                                              # QEMU comes later: until then every node runs the fake hypervisor.
                                              "enabled_hypervisors": ["fake"], "default_hypervisor": "fake"}}]},
        {"request_id": f"bootstrap:node-add:{node}", "operations": [
            {"op": "node_add", "params": {"name": node, "address": address, "role": "voter",
                                          "memory_mib": detected.memory_mib, "disk_mib": detected.disk_mib,
                                          "cpus": detected.cpus, "certificate_serial": f"{cert.serial:x}"}}]},
    ])
    return token


# --- joining ------------------------------------------------------------------------------------

def _call(member: str, path: str, body: dict, context: ssl.SSLContext) -> tuple[int, dict]:
    host, _, port = member.rpartition(":")
    connection = http.client.HTTPSConnection(host, int(port), timeout=CALL_TIMEOUT_S, context=context)
    try:
        connection.request("POST", path, body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    try:
        return response.status, json.loads(data)
    except ValueError:
        return response.status, {"message": data.decode(errors="replace")[:200]}


def _unverified_context() -> ssl.SSLContext:
    # Only to fetch the CA certificate, which is public and checked against the token's fingerprint at once.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _admission(parsed: tokens.JoinToken, token: str, request: dict) -> tuple[bytes, dict]:
    """Ask the members in turn until the leader admits the node: (the CA certificate, its answer).

    A member that refuses the token may only lag behind the log (a node that
    joined a moment ago): the others are asked too, and the join fails only
    when every member that answered refused it.
    """
    failures: dict[str, str] = {}
    deadline = clock.monotonic() + JOIN_TIMEOUT_S
    while clock.monotonic() < deadline:
        refused: dict[str, str] = {}
        for member in parsed.members:
            try:
                status, answer = _call(member, "/api/v1/join/ca", {"token_hash": parsed.secret_hash},
                                       _unverified_context())
                if status == 200:
                    ca_pem = answer["ca_pem"].encode()
                    tokens.check_cluster(token, pki.ca_fingerprint(ca_pem), member)
                    status, answer = _call(member, "/api/v1/join", request, pki.client_context(ca_pem))
            except tokens.JoinTokenError as error:
                raise NodeSetupError(str(error)) from None
            except (OSError, http.client.HTTPException, KeyError, ValueError) as error:
                failures[member] = str(error) or type(error).__name__
                continue
            if status == 200:
                return ca_pem, answer
            if status == 503:
                failures[member] = answer.get("message", "not the leader")
                continue
            refused[member] = failures[member] = answer.get("message", f"HTTP {status}")
        if refused and len(refused) == len(parsed.members):
            raise NodeSetupError("the cluster refused the join: " + "; ".join(f"{m}: {e}" for m, e in refused.items()))
        time.sleep(0.5)
    raise NodeSetupError("no member admitted this node: " + "; ".join(f"{m}: {e}" for m, e in failures.items()))


def join_cluster(token: str, address: str, data_dir: Path, capacity: dict, master_capable: bool = True) -> dict:
    """Join the cluster a token names: make a key, be admitted, write the data dir; the admission's answer."""
    from appliance.drivers import host

    try:
        parsed = tokens.parse_token(token)
    except tokens.JoinTokenError as error:
        raise NodeSetupError(str(error)) from None
    if address != parsed.address:
        raise NodeSetupError(f"this token admits node {parsed.node} at {parsed.address}, not at {address}; "
                             f"join with --address {parsed.address} or ask for a token for {address}")
    if not parsed.members:
        raise NodeSetupError("this token names no member to ask; ask for a new one with "
                             f"'cairn node add {parsed.node} --address {parsed.address}'")
    _fresh(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        detected = host.detect(str(data_dir), **{k: v for k, v in capacity.items() if v is not None})
    except ValueError as error:
        raise NodeSetupError(str(error)) from None
    key_pem = pki.new_private_key()
    request = {"token": token, "address": address, "public_key_pem": pki.public_key_of(key_pem).decode(),
               "memory_mib": detected.memory_mib, "disk_mib": detected.disk_mib, "cpus": detected.cpus,
               "master_capable": master_capable}
    ca_pem, answer = _admission(parsed, token, request)
    voter = answer["role"] == "voter"
    config = _config(parsed.node, address, answer["cluster"], answer["voters"], voter, capacity)
    write_node(data_dir, config, ca_pem=ca_pem, cert_pem=answer["cert_pem"].encode(), key_pem=key_pem,
               raft_password=answer["raft_password"],
               ca_key_pem=answer["ca_key_pem"].encode() if voter else None)
    return answer
