"""Tests of user_add."""

from appliance.model.errors import ALREADY_EXISTS, PERMISSION_DENIED, WRONG_INPUT
from tests.unit.test_ops_support import cluster, refused


def test_user_add_records_the_user_and_role():
    """An added user has the given role."""
    box = cluster(nodes=0)
    box.run("user_add", name="alice", role="read-only")
    assert box.state.users["alice"].role == "read-only"


def test_user_add_refuses_an_existing_user():
    """A user name is unique."""
    box = cluster(nodes=0)
    refused(box, "user_add", ALREADY_EXISTS, "User 'admin' already exists", name="admin")


def test_user_add_refuses_an_unknown_role():
    """Roles are admin, operator and read-only."""
    refused(cluster(nodes=0), "user_add", WRONG_INPUT, "Invalid role 'root'", name="alice", role="root")


def test_user_add_refuses_a_bad_name():
    """User names are simple lower-case names."""
    refused(cluster(nodes=0), "user_add", WRONG_INPUT, "Invalid user name", name="Alice Smith")


def test_user_ops_need_an_admin():
    """An operator cannot manage users."""
    box = cluster(nodes=0)
    box.run("user_add", name="bob", role="operator")
    refused(box, "user_add", PERMISSION_DENIED, "user_add needs role admin", actor="bob", name="carol")


def test_user_add_records_only_the_token_hash():
    """A credential hash given with the user maps to it; removing the user drops its tokens."""
    import hashlib

    box = cluster(nodes=0)
    digest = hashlib.sha256(b"a token").hexdigest()
    box.run("user_add", name="alice", role="operator", credential_hash=digest)
    assert box.state.credentials[digest] == "alice"
    box.run("user_remove", name="alice")
    assert digest not in box.state.credentials


def test_user_add_refuses_a_token_instead_of_its_hash():
    """Anything but 64 lower-case hex digits is refused, so a token never lands in the log by mistake."""
    refused(cluster(nodes=0), "user_add", WRONG_INPUT, "SHA-256 of the token", name="alice",
            credential_hash="not-a-hash")


def test_checkpoint_keeps_credentials():
    """The credentials survive a checkpoint round trip, and the digest covers them."""
    import hashlib

    from appliance.model.state import decode_checkpoint, encode_checkpoint

    box = cluster(nodes=0)
    before = box.state.digest()
    box.run("user_add", name="alice", credential_hash=hashlib.sha256(b"t").hexdigest())
    restored = decode_checkpoint(encode_checkpoint(box.state))
    assert restored.credentials == box.state.credentials and restored.digest() == box.state.digest() != before
