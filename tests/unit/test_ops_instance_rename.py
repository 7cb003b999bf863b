"""Tests of instance_rename."""

from appliance.model.errors import ALREADY_EXISTS, WRONG_INPUT, WRONG_STATE
from ops import instance_rename
from tests.unit.test_ops_support import add, cluster, observe, refused


def test_rename_changes_the_name_and_keeps_the_id():
    """A stopped instance gets its new name; the old name is free again and the id stays."""
    box = cluster()
    found = add(box, start=False)
    box.run("instance_rename", instance="web1.example.com", new_name="web9.example.com")
    state = box.state
    assert state.instance_by_name("web9.example.com").id == found.id
    assert "web1.example.com" not in state.instance_names


def test_rename_refuses_an_instance_marked_up():
    """Renaming an instance marked up is refused in Ganeti's words."""
    box = cluster()
    add(box)
    refused(box, "instance_rename", WRONG_STATE, "Instance 'web1.example.com' is marked to be up, cannot rename",
            instance="web1.example.com", new_name="web9.example.com")


def test_rename_refuses_an_instance_still_running():
    """An instance marked down but still seen running is not renamed yet."""
    box = cluster()
    add(box)
    box.run("instance_shutdown", instance="web1.example.com")
    refused(box, "instance_rename", WRONG_STATE, "is running on node n1.example.com",
            instance="web1.example.com", new_name="web9.example.com")
    observe(box, "web1.example.com", running=False)
    box.run("instance_rename", instance="web1.example.com", new_name="web9.example.com")


def test_rename_refuses_a_taken_name():
    """The new name must not belong to another instance."""
    box = cluster()
    add(box, start=False)
    add(box, name="web2.example.com", start=False)
    refused(box, "instance_rename", ALREADY_EXISTS, "Instance 'web2.example.com' is already in the cluster",
            instance="web1.example.com", new_name="web2.example.com")


def test_rename_refuses_an_invalid_name():
    """The new name must be a valid host name."""
    box = cluster()
    add(box, start=False)
    refused(box, "instance_rename", WRONG_INPUT, "Invalid hostname", instance="web1.example.com",
            new_name="Bad_Name!")


def test_rename_claims_both_names():
    """The claims hold the old and the new name, so no add can take the new name meanwhile."""
    box = cluster()
    found = add(box, start=False)
    claims = instance_rename.claims(box.state, instance_rename.Params("web1.example.com", "web9.example.com"))
    assert claims.instances == {found.id, "name:web9.example.com"}
