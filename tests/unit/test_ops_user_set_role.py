"""Tests of user_set_role."""

from appliance.model.errors import WRONG_STATE
from tests.unit.test_ops_support import cluster, refused


def test_user_set_role_changes_the_role():
    """Setting a role records it."""
    box = cluster(nodes=0)
    box.run("user_add", name="alice")
    box.run("user_set_role", name="alice", role="admin")
    assert box.state.users["alice"].role == "admin"


def test_user_set_role_refuses_demoting_the_last_admin():
    """The last admin cannot be demoted."""
    refused(cluster(nodes=0), "user_set_role", WRONG_STATE, "is the last admin, cannot demote", name="admin",
            role="operator")


def test_user_set_role_to_the_same_role_does_nothing():
    """Setting the role a user already has plans no events."""
    assert cluster(nodes=0).plan("user_set_role", name="admin", role="admin").events == ()
