"""Tests of the cluster PKI: the CA, node certificates, secret files, TLS contexts, revocation, credentials."""

import hashlib
import ipaddress
import os
import ssl
import stat

import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance import pki

NOW = 1_750_000_000.0


@pytest.fixture(scope="module")
def ca():
    return pki.create_ca("alpha", NOW)


@pytest.fixture(scope="module")
def node1(ca):
    return pki.issue_node_certificate(ca, "node1", ["127.0.0.1", "node1.example.org"], NOW)


@pytest.fixture(scope="module")
def node2(ca):
    return pki.issue_node_certificate(ca, "node2", ["127.0.0.1"], NOW)


def tls_files(tmp_path, name, node_cert):
    cert_path, key_path = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    pki.write_public_file(cert_path, node_cert.cert_pem)
    pki.write_secret_file(key_path, node_cert.key_pem)
    return cert_path, key_path


async def handshake(server_context, client_context, hostname="127.0.0.1"):
    """Both ends of a TLS connection over trio's in-memory streams, after the handshake and one byte each way."""
    server, client, errors = await exchange(server_context, client_context, hostname)
    assert errors == {}, errors
    return server, client


async def exchange(server_context, client_context, hostname):
    """Both ends and each end's error (its ssl cause when trio wraps one), by side.

    In TLS 1.3 the client finishes its handshake before the server has checked
    the client's certificate, so a refused client sees the end of the stream.
    """
    left, right = trio.testing.memory_stream_pair()
    server = trio.SSLStream(left, server_context, server_side=True)
    client = trio.SSLStream(right, client_context, server_hostname=hostname)
    errors = {}

    async def run(side, stream, mine, theirs):
        try:
            await stream.do_handshake()
            await stream.send_all(mine)
            received = await stream.receive_some(1)
            if received != theirs:
                errors[side] = f"received {received!r}, expected {theirs!r}"
        except trio.BrokenResourceError as error:
            errors[side] = error.__cause__ or error
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, "server", server, b"s", b"c")
        nursery.start_soon(run, "client", client, b"c", b"s")
    return server, client, errors


def test_ca_is_self_signed_with_the_cluster_name(ca):
    """The CA certificate is a self-signed CA for twenty years with the cluster name in its subject."""
    cert = x509.load_pem_x509_certificate(ca.cert_pem)
    cert.verify_directly_issued_by(cert)
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "alpha"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days >= 20 * 365


def test_node_certificate_round_trips_through_the_ca(ca, node1):
    """A node certificate is signed by the CA, names the node and its addresses, and has the recorded serial."""
    cert = x509.load_pem_x509_certificate(node1.cert_pem)
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert_pem))
    assert cert.serial_number == node1.serial == pki.certificate_serial(node1.cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["node1", "node1.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usage) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert pki.public_key_of(node1.key_pem) == cert.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_a_joining_node_keeps_its_private_key(ca):
    """Given a public key, the CA certifies it and returns no private key."""
    key_pem = pki.new_private_key()
    issued = pki.issue_node_certificate(ca, "node3", ["10.0.0.3"], NOW, public_key_pem=pki.public_key_of(key_pem))
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    assert issued.key_pem is None
    assert pki.public_key_of(key_pem) == cert.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_an_address_with_a_port_is_refused(ca):
    """A node address given with a port is refused with a hint to give the bare host."""
    with pytest.raises(pki.PkiError, match="without a port"):
        pki.issue_node_certificate(ca, "node4", ["127.0.0.1:9000"], NOW)


def test_fingerprint_is_sha256_of_the_der(ca):
    """The CA fingerprint is the sha256 of its DER as 64 lowercase hex digits."""
    der = x509.load_pem_x509_certificate(ca.cert_pem).public_bytes(serialization.Encoding.DER)
    assert ca.fingerprint == pki.ca_fingerprint(ca.cert_pem) == hashlib.sha256(der).hexdigest()


def test_load_ca_refuses_a_key_from_another_ca(ca):
    """Loading the CA refuses a key that does not belong to its certificate."""
    other = pki.create_ca("beta", NOW)
    assert pki.load_ca(ca.cert_pem, ca.key_pem) == ca
    with pytest.raises(pki.PkiError, match="does not belong"):
        pki.load_ca(ca.cert_pem, other.key_pem)


async def test_tls13_handshake_succeeds_between_two_nodes(tmp_path, ca, node1, node2):
    """Two nodes of one CA complete a mutual TLS 1.3 handshake and see each other's serial."""
    server_files, client_files = tls_files(tmp_path, "n1", node1), tls_files(tmp_path, "n2", node2)
    server, client = await handshake(pki.server_context(ca.cert_pem, *server_files),
                                     pki.client_context(ca.cert_pem, *client_files))
    assert server.version() == client.version() == "TLSv1.3"
    assert pki.refuse_revoked_peer(server, set()) == node2.serial
    assert pki.refuse_revoked_peer(client, set()) == node1.serial


async def test_handshake_fails_with_a_certificate_from_another_ca(tmp_path, ca, node1):
    """A server refuses a client whose certificate another CA signed."""
    stranger = pki.issue_node_certificate(pki.create_ca("beta", NOW), "node9", ["127.0.0.1"], NOW)
    server_files, client_files = tls_files(tmp_path, "n1", node1), tls_files(tmp_path, "n9", stranger)
    _, _, errors = await exchange(pki.server_context(ca.cert_pem, *server_files),
                                  pki.client_context(ca.cert_pem, *client_files), "127.0.0.1")
    assert isinstance(errors["server"], ssl.SSLCertVerificationError)
    assert "client" in errors  # end of stream or a closed stream, as trio schedules the two tasks


async def test_client_refuses_a_server_of_another_ca(tmp_path, ca):
    """A client refuses a server whose certificate another CA signed."""
    other = pki.create_ca("beta", NOW)
    server_files = tls_files(tmp_path, "n9", pki.issue_node_certificate(other, "node9", ["127.0.0.1"], NOW))
    _, _, errors = await exchange(pki.server_context(other.cert_pem, *server_files, require_client_cert=False),
                                  pki.client_context(ca.cert_pem), "127.0.0.1")
    assert isinstance(errors["client"], ssl.SSLCertVerificationError)
    assert "certificate verify failed" in str(errors["client"])


async def test_client_refuses_a_server_at_an_address_not_in_its_certificate(tmp_path, ca, node1):
    """A client refuses a server whose certificate does not name the address it dialled."""
    server_files = tls_files(tmp_path, "n1", node1)
    _, _, errors = await exchange(pki.server_context(ca.cert_pem, *server_files, require_client_cert=False),
                                  pki.client_context(ca.cert_pem), "10.9.9.9")
    assert isinstance(errors["client"], ssl.SSLCertVerificationError)
    assert "IP address mismatch" in str(errors["client"])


async def test_revoked_peer_is_refused_after_the_handshake(tmp_path, ca, node1, node2):
    """After the handshake, a peer whose serial is revoked is refused with its node name."""
    server_files, client_files = tls_files(tmp_path, "n1", node1), tls_files(tmp_path, "n2", node2)
    server, _ = await handshake(pki.server_context(ca.cert_pem, *server_files),
                                pki.client_context(ca.cert_pem, *client_files))
    with pytest.raises(pki.CertificateRevoked, match="node 'node2'.*revoked"):
        pki.refuse_revoked_peer(server, {node2.serial})


def test_is_revoked_checks_the_serial(node1, node2):
    """A certificate is revoked exactly when its serial is in the revoked set."""
    der = x509.load_pem_x509_certificate(node1.cert_pem).public_bytes(serialization.Encoding.DER)
    assert pki.is_revoked(der, {node1.serial})
    assert not pki.is_revoked(der, {node2.serial})


def test_secret_files_are_written_with_mode_0600(tmp_path):
    """A secret file is mode 0600 even under a permissive umask, and reads back."""
    path = tmp_path / "raft.password"
    old = os.umask(0)
    try:
        pki.write_secret_file(path, b"hunter2")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert pki.read_secret_file(path) == b"hunter2"
    assert [p.name for p in tmp_path.iterdir()] == ["raft.password"]


def test_secret_file_is_never_replaced_by_accident(tmp_path):
    """Writing a secret over an existing one is refused unless asked for."""
    path = tmp_path / "ca.key"
    pki.write_secret_file(path, b"first")
    with pytest.raises(FileExistsError, match="already exists"):
        pki.write_secret_file(path, b"second")
    pki.write_secret_file(path, b"third", overwrite=True)
    assert pki.read_secret_file(path) == b"third"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.key"]


def test_a_world_readable_secret_file_is_refused_with_the_chmod(tmp_path):
    """A secret file with mode 0644 is refused with its name and the chmod to run."""
    path = tmp_path / "node.key"
    pki.write_secret_file(path, b"key")
    path.chmod(0o644)
    with pytest.raises(pki.InsecureSecretFile, match=f"{path} has mode 0644.*'chmod 600 {path}'"):
        pki.read_secret_file(path)
    with pytest.raises(pki.InsecureSecretFile, match="chmod 600"):
        pki.check_secret_file(path)


def test_a_symlinked_secret_file_is_refused(tmp_path):
    """A secret file reached through a symbolic link is refused."""
    pki.write_secret_file(tmp_path / "real.key", b"key")
    (tmp_path / "node.key").symlink_to(tmp_path / "real.key")
    with pytest.raises(pki.InsecureSecretFile, match="symbolic link"):
        pki.read_secret_file(tmp_path / "node.key")


def test_tls_context_refuses_a_world_readable_key(tmp_path, ca, node1):
    """Building a TLS context refuses a node key whose mode is wider than 0600."""
    cert_path, key_path = tls_files(tmp_path, "n1", node1)
    key_path.chmod(0o640)
    with pytest.raises(pki.InsecureSecretFile, match="chmod 600"):
        pki.server_context(ca.cert_pem, cert_path, key_path)


def test_public_files_are_mode_0644(tmp_path, ca):
    """A certificate file is written with mode 0644."""
    path = pki.pki_paths(tmp_path).ca_cert
    path.parent.mkdir()
    pki.write_public_file(path, ca.cert_pem)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_contexts_require_tls13_and_a_verified_peer(tmp_path, ca, node1):
    """Both contexts require TLS 1.3 and a certificate from the peer."""
    cert_path, key_path = tls_files(tmp_path, "n1", node1)
    server = pki.server_context(ca.cert_pem, cert_path, key_path)
    client = pki.client_context(ca.cert_pem)
    assert server.minimum_version == client.minimum_version == ssl.TLSVersion.TLSv1_3
    assert server.verify_mode == client.verify_mode == ssl.CERT_REQUIRED
    assert client.check_hostname


def test_raft_password_and_credential_are_256_random_bits():
    """The Raft password and a credential are 43 URL-safe characters and differ each time."""
    passwords = {pki.new_raft_password() for _ in range(3)} | {pki.new_credential() for _ in range(3)}
    assert len(passwords) == 6
    assert all(len(p) == 43 and p.replace("-", "").replace("_", "").isalnum() for p in passwords)


def test_credential_hash_is_sha256_and_matches_only_its_credential():
    """A credential's hash is its hex SHA-256 and matches that credential only."""
    credential = pki.new_credential()
    digest = pki.credential_hash(credential)
    assert len(digest) == 64 and credential not in digest
    assert pki.credential_matches(credential, digest)
    assert not pki.credential_matches(pki.new_credential(), digest)


def test_secrets_do_not_show_in_reprs(ca, node1):
    """The repr of the CA and of a node certificate leaves out the private key."""
    assert b"PRIVATE" in ca.key_pem and "PRIVATE" not in repr(ca)
    assert "PRIVATE" not in repr(node1)
