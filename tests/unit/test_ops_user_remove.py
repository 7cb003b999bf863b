"""Tests of user_remove."""

from appliance.model.errors import UNKNOWN_ENTITY, WRONG_STATE
from tests.unit.test_ops_support import cluster, refused


def test_user_remove_removes_the_user():
    """A removed user is gone from the state."""
    box = cluster(nodes=0)
    box.run("user_add", name="alice")
    box.run("user_remove", name="alice")
    assert "alice" not in box.state.users


def test_user_remove_refuses_an_unknown_user():
    """Removing a user that does not exist is refused as unknown_entity."""
    refused(cluster(nodes=0), "user_remove", UNKNOWN_ENTITY, "User 'nobody' not known", name="nobody")


def test_user_remove_refuses_the_last_admin():
    """The last admin cannot be removed."""
    refused(cluster(nodes=0), "user_remove", WRONG_STATE, "is the last admin, cannot remove", name="admin")


def test_user_remove_allows_an_admin_when_another_remains():
    """An admin can be removed while another admin remains."""
    box = cluster(nodes=0)
    box.run("user_add", name="root2", role="admin")
    box.run("user_remove", name="admin", actor="root2")
    assert set(box.state.users) == {"root2"}
