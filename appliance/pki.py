"""The cluster's secrets: its CA, node certificates, secret files, TLS contexts and credentials.

Everything here is a library for the daemon and `cairn cluster init`: it reads
no clock (time is passed in as epoch seconds) and opens no socket. What may go
into the event log is only ever public or a hash: the CA fingerprint,
certificate serials and the SHA-256 of a credential. Keys, the Raft password
and credentials themselves stay in mode-0600 files. docs/pki.md describes the
files, the algorithms and why.
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import ssl
import stat
from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY_DAYS = 20 * 365 + 5
NODE_VALIDITY_DAYS = 10 * 365 + 2
# Certificates start an hour in the past so that a node whose clock runs a
# little behind the issuer's still accepts a certificate issued just now.
BACKDATE_S = 3600
SECRET_MODE = 0o600
PUBLIC_MODE = 0o644
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


class PkiError(ValueError):
    """A certificate, key or secret file cannot be used; the message says what to do."""


class InsecureSecretFile(PkiError):
    """A secret file is readable or writable by someone other than its owner."""


class CertificateRevoked(PkiError):
    """A peer presented a certificate whose serial the cluster has revoked."""


class PeerConnection(Protocol):
    """What the revocation hook needs: ssl.SSLSocket, ssl.SSLObject and trio.SSLStream all fit."""

    def getpeercert(self, binary_form: bool = ...) -> object: ...


@dataclass(frozen=True)
class PkiPaths:
    """Where a node keeps its certificates and secrets, under `DATA_DIR/pki/`."""

    directory: Path
    ca_cert: Path          # public, 0644: every node and client has it
    ca_key: Path           # secret, 0600: on voters only
    node_cert: Path        # public, 0644
    node_key: Path         # secret, 0600
    raft_password: Path    # secret, 0600


def pki_paths(data_dir: Path) -> PkiPaths:
    """The standard file names of a node's PKI under its data directory."""
    directory = Path(data_dir) / "pki"
    return PkiPaths(directory=directory, ca_cert=directory / "ca.crt", ca_key=directory / "ca.key",
                    node_cert=directory / "node.crt", node_key=directory / "node.key",
                    raft_password=directory / "raft.password")


@dataclass(frozen=True)
class CertificateAuthority:
    """The cluster CA: its certificate (public) and its private key (secret), both PEM."""

    cert_pem: bytes
    key_pem: bytes = field(repr=False)

    @property
    def fingerprint(self) -> str:
        """sha256 of the CA certificate's DER, as lowercase hex."""
        return ca_fingerprint(self.cert_pem)


@dataclass(frozen=True)
class NodeCertificate:
    """A node's certificate, its serial (recorded in the log) and, if made here, its private key."""

    node: str
    serial: int
    cert_pem: bytes
    key_pem: bytes | None = field(default=None, repr=False)


def _utc(epoch_s: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(epoch_s, tz=datetime.timezone.utc)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def new_private_key() -> bytes:
    """A fresh EC P-256 private key as unencrypted PKCS#8 PEM (write it with write_secret_file)."""
    return _key_pem(ec.generate_private_key(ec.SECP256R1()))


def public_key_of(key_pem: bytes) -> bytes:
    """The public half of a PEM private key, as PEM: what a joining node sends to be certified."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def create_ca(cluster_name: str, now: float, *, validity_days: int = CA_VALIDITY_DAYS) -> CertificateAuthority:
    """A new self-signed cluster CA with an EC P-256 key and the cluster name in its subject."""
    if not cluster_name or "\n" in cluster_name:
        raise PkiError(f"cluster name {cluster_name!r} is not usable in a certificate; choose a plain name")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_name),
        x509.NameAttribute(NameOID.COMMON_NAME, f"Cairn cluster CA {cluster_name}"),
    ])
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc(now - BACKDATE_S))
        .not_valid_after(_utc(now + validity_days * 86400))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(cert_pem=cert.public_bytes(serialization.Encoding.PEM), key_pem=_key_pem(key))


def load_ca(cert_pem: bytes, key_pem: bytes) -> CertificateAuthority:
    """The CA from its two PEM files, refused if the key does not belong to the certificate."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    if cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) \
            != key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo):
        raise PkiError("the CA key does not belong to the CA certificate; restore both from the same voter")
    return CertificateAuthority(cert_pem=cert_pem, key_pem=key_pem)


def _subject_alt_names(node: str, addresses: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in (node, *addresses):
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            name: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(bare))
        except ValueError:
            if not _HOSTNAME.match(bare):
                raise PkiError(f"{host!r} is neither an IP address nor a DNS name; give a host without a port "
                               "(for example 127.0.0.1 or node1.example.org)") from None
            name = x509.DNSName(bare.lower())
        if name not in names:
            names.append(name)
    return names


def issue_node_certificate(ca: CertificateAuthority, node: str, addresses: Sequence[str], now: float, *,
                           public_key_pem: bytes | None = None,
                           validity_days: int = NODE_VALIDITY_DAYS) -> NodeCertificate:
    """A certificate for `node`, signed by the CA, for TLS client and server use.

    Its subject alternative names are the node name and every address (a host,
    no port): IP addresses as IP entries, the rest as DNS names. Given the
    public key of a joining node, it certifies that key and returns no private
    key; otherwise it makes a key pair here and returns the private key too.
    """
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    key_pem = None
    if public_key_pem is None:
        key_pem = new_private_key()
        public_key_pem = public_key_of(key_pem)
    public = serialization.load_pem_public_key(public_key_pem)
    cluster = ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    subject = x509.Name([*cluster, x509.NameAttribute(NameOID.COMMON_NAME, node)])
    serial = x509.random_serial_number()
    # A node certificate never outlives the CA that vouches for it.
    not_after = min(_utc(now + validity_days * 86400), ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(serial)
        .not_valid_before(_utc(now - BACKDATE_S))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectAlternativeName(_subject_alt_names(node, addresses)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return NodeCertificate(node=node, serial=serial, cert_pem=cert.public_bytes(serialization.Encoding.PEM),
                           key_pem=key_pem)


def ca_fingerprint(cert_pem: bytes) -> str:
    """sha256 of a certificate's DER encoding, as 64 lowercase hex digits (no colons)."""
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def certificate_serial(cert: bytes) -> int:
    """The serial number of a certificate given as PEM or DER."""
    if cert.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(cert).serial_number
    return x509.load_der_x509_certificate(cert).serial_number


# --- secret files ----------------------------------------------------------

def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    """Write `data` to a new file created with `mode`, fsync it, then move it into place.

    The temporary file is created with O_EXCL and its final mode, so there is
    never a moment when it is readable by others, and an attacker cannot have
    made it first. Without `overwrite`, the move is a hard link, which fails
    if `path` exists, so an existing secret is never replaced by accident.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed it; make it exactly `mode`
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(temporary, path)
        else:
            try:
                os.link(temporary, path)
            except FileExistsError:
                raise FileExistsError(f"{path} already exists; it was left as it was (move it away "
                                      "first if it must be replaced)") from None
    finally:
        if temporary.exists():
            temporary.unlink()
    _fsync_directory(path.parent)


def write_secret_file(path: Path, data: bytes, *, overwrite: bool = False) -> None:
    """Write a secret (key, password, credential) to `path` with mode 0600 from its first byte."""
    _write_file(path, data, SECRET_MODE, overwrite)


def write_public_file(path: Path, data: bytes, *, overwrite: bool = False) -> None:
    """Write a public file (a certificate) to `path` with mode 0644, as safely as a secret."""
    _write_file(path, data, PUBLIC_MODE, overwrite)


def _refuse_wide_mode(path: Path, st_mode: int) -> None:
    if not stat.S_ISREG(st_mode):
        raise InsecureSecretFile(f"secret file {path} is not a regular file; replace it with the real file")
    if st_mode & 0o077:
        raise InsecureSecretFile(
            f"secret file {path} has mode {stat.S_IMODE(st_mode):04o}, which lets other users read or change it; "
            f"run 'chmod 600 {path}' and try again")


def check_secret_file(path: Path) -> None:
    """Refuse a secret file whose mode is wider than 0600, naming the file and the chmod to run."""
    read_secret_file(path)


def read_secret_file(path: Path) -> bytes:
    """The content of a secret file, refused if its mode is wider than 0600.

    The mode is checked on the open file, so the file cannot be swapped
    between the check and the read.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as error:
        if error.errno != errno.ELOOP:
            raise
        raise InsecureSecretFile(f"secret file {path} is a symbolic link; put the file itself there") from None
    with os.fdopen(fd, "rb") as handle:
        _refuse_wide_mode(path, os.fstat(handle.fileno()).st_mode)
        return handle.read()


# --- TLS -------------------------------------------------------------------

def _context(purpose: ssl.Purpose, ca_pem: bytes, cert_path: Path | None, key_path: Path | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH
                             else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    # Only the cluster CA is trusted: the system's CAs would let any public
    # certificate in.
    context.load_verify_locations(cadata=ca_pem.decode("ascii"))
    if cert_path is not None and key_path is not None:
        check_secret_file(key_path)
        context.load_cert_chain(certfile=str(cert_path), keyfile=str(key_path))
    return context


def server_context(ca_pem: bytes, cert_path: Path, key_path: Path, *,
                   require_client_cert: bool = True) -> ssl.SSLContext:
    """A TLS 1.3 server context with the node's certificate that requires a client certificate from the CA.

    `require_client_cert=False` suits an endpoint whose callers prove who they
    are otherwise (the API's bearer tokens); node-to-node streams keep it on.
    Revocation is checked after the handshake with `refuse_revoked_peer`.
    """
    context = _context(ssl.Purpose.CLIENT_AUTH, ca_pem, cert_path, key_path)
    context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    return context


def client_context(ca_pem: bytes, cert_path: Path | None = None, key_path: Path | None = None) -> ssl.SSLContext:
    """A TLS 1.3 client context that verifies the server against the CA and the address it dials.

    With a certificate and key it also presents them (node to node); without,
    it suits the CLI, which authenticates with a bearer token. The host name
    is checked: a node certificate names the node's addresses, so connect with
    `server_hostname` set to the host part of the node's HOST:PORT.
    """
    context = _context(ssl.Purpose.SERVER_AUTH, ca_pem, cert_path, key_path)
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    return context


def is_revoked(cert_der: bytes, revoked_serials: Container[int]) -> bool:
    """Whether a certificate (DER, as getpeercert(binary_form=True) gives it) has a revoked serial."""
    return x509.load_der_x509_certificate(cert_der).serial_number in revoked_serials


def refuse_revoked_peer(connection: PeerConnection, revoked_serials: Container[int]) -> int:
    """The peer certificate's serial, after the handshake; raises CertificateRevoked if it is revoked.

    Python's ssl has no hook inside the handshake for a list held in memory,
    so the daemon calls this right after each handshake and closes the
    connection when it raises. A peer without a certificate is refused too.
    """
    der = connection.getpeercert(binary_form=True)
    if not der:
        raise CertificateRevoked("the peer presented no certificate; only cluster nodes may connect here")
    cert = x509.load_der_x509_certificate(der)
    if cert.serial_number in revoked_serials:
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        who = f"node {names[0].value!r}" if names else "the peer"
        raise CertificateRevoked(
            f"{who} presented certificate serial {cert.serial_number:x}, which was revoked when the node was "
            "removed; to bring the machine back, add it again with 'cairn node add'")
    return cert.serial_number


# --- passwords and credentials ---------------------------------------------

def new_raft_password() -> str:
    """A new Raft password: 32 random bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def new_credential() -> str:
    """A new bearer credential (the first admin's, or any user's): 256 random bits, URL-safe base64."""
    return secrets.token_urlsafe(32)


def credential_hash(credential: str) -> str:
    """The SHA-256 of a credential, as hex: the only form of it that goes into the log.

    No salt: a salt protects guessable secrets against precomputed tables, and
    a 256-bit random credential cannot be guessed. Unsalted, the hash is also
    the key under which the API finds the user in one dictionary look-up.
    """
    return hashlib.sha256(credential.encode("utf-8")).hexdigest()


def credential_matches(credential: str, expected_hash: str) -> bool:
    """Whether a credential hashes to `expected_hash`, compared in constant time."""
    return hmac.compare_digest(credential_hash(credential), expected_hash)
