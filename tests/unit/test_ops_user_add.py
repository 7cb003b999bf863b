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
