"""Tests of cluster_init."""

from appliance.model.errors import ALREADY_EXISTS, WRONG_INPUT, WRONG_STATE
from appliance.sandbox import Sandbox
from tests.unit.test_ops_support import cluster, refused


def test_init_sets_parameters_default_group_and_admin():
    """A new cluster has its parameters, the default group and one admin."""
    box = Sandbox(1)
    box.run("cluster_init", name="c.example.com", admin="root")
    state = box.state
    assert state.cluster.name == "c.example.com" and state.cluster.feature_level == 1
    assert state.group_by_name("default").id == state.cluster.default_group
    assert state.users["root"].role == "admin"


def test_init_refuses_a_second_init():
    """An initialised cluster cannot be initialised again."""
    refused(cluster(nodes=0), "cluster_init", ALREADY_EXISTS, "is already initialised", name="d.example.com")


def test_init_refuses_recovery_before_fencing():
    """The recovery interval must exceed the fencing interval by the margin."""
    refused(Sandbox(1), "cluster_init", WRONG_INPUT, "must be at least the fencing interval",
            name="c.example.com", fencing_interval_s=300, recovery_interval_s=300)


def test_other_operations_need_an_initialised_cluster():
    """Before init, every other operation is refused."""
    refused(Sandbox(1), "user_add", WRONG_STATE, "not initialised", name="alice")


def test_cluster_init_records_the_first_admin_token_hash():
    """The first admin's token reaches the log only as its hash."""
    import hashlib

    digest = hashlib.sha256(b"first").hexdigest()
    box = Sandbox(1)
    box.run("cluster_init", name="c.example.com", admin_credential_hash=digest)
    assert dict(box.state.credentials) == {digest: "admin"}
