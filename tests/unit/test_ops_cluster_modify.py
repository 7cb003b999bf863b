"""Tests of cluster_modify."""

from appliance.model import events as ev
from appliance.model.errors import FEATURE_LEVEL, WRONG_INPUT, WRONG_STATE
from ops import _common, cluster_modify
from tests.unit.test_ops_support import add, cluster, refused


def test_highest_feature_level_is_the_newest_event_level():
    """The highest known level is the largest SINCE_LEVEL in the event registry."""
    assert cluster_modify.HIGHEST_FEATURE_LEVEL == max(c.SINCE_LEVEL for c in ev.REGISTRY.values())


def test_modify_changes_the_given_parameters():
    """Given parameters are recorded; others stay."""
    box = cluster(nodes=0)
    box.run("cluster_modify", mac_prefix="aa:11:22", enabled_disk_templates=("file", "replicated"))
    params = box.state.cluster
    assert params.mac_prefix == "aa:11:22" and params.enabled_disk_templates == ("file", "replicated")
    assert params.enabled_hypervisors == ("kvm", "fake")


def test_modify_refuses_no_changes():
    """A modify that names no change is refused."""
    refused(cluster(nodes=0), "cluster_modify", WRONG_INPUT, "No changes submitted")


def test_modify_refuses_disabling_a_template_in_use():
    """A disk template an instance uses cannot be disabled; the instance is named."""
    box = cluster()
    add(box, template="file")
    refused(box, "cluster_modify", WRONG_STATE, "Cannot disable disk template 'file': instance 'web1.example.com' "
            "still uses it", enabled_disk_templates=("diskless", "replicated"))


def test_modify_refuses_disabling_a_hypervisor_in_use():
    """A hypervisor an instance uses cannot be disabled."""
    box = cluster()
    add(box, hypervisor="fake")
    refused(box, "cluster_modify", WRONG_STATE, "Cannot disable hypervisor 'fake'", enabled_hypervisors=("kvm",))


def test_modify_refuses_an_unknown_template():
    """Only known disk templates can be enabled."""
    refused(cluster(nodes=0), "cluster_modify", WRONG_INPUT, "Unknown disk template 'plain'",
            enabled_disk_templates=("plain",))


def test_modify_refuses_a_default_hypervisor_not_enabled():
    """The default hypervisor must stay among the enabled ones."""
    refused(cluster(nodes=0), "cluster_modify", WRONG_INPUT, "Default hypervisor 'kvm' would not be enabled",
            enabled_hypervisors=("fake",))


def test_modify_accepts_a_new_default_with_the_new_list():
    """Dropping the default hypervisor works when a new default is given with it."""
    box = cluster(nodes=0)
    box.run("cluster_modify", enabled_hypervisors=("fake",), default_hypervisor="fake")
    assert box.state.cluster.default_hypervisor == "fake"


def test_modify_replaces_the_instance_policy():
    """A valid policy replaces the old one and new instances are checked against it."""
    box = cluster()
    policy = {**_common.DEFAULT_IPOLICY, "max": {**_common.DEFAULT_IPOLICY["max"], "memory_mib": 512}}
    box.run("cluster_modify", ipolicy=policy)
    refused(box, "instance_add", WRONG_INPUT, "memory-size value 1024 is not in range [128, 512]",
            name="web1.example.com", primary="n1.example.com", disk_template="diskless", os="x", memory_mib=1024)


def test_modify_refuses_a_bad_policy():
    """A policy with min above max is refused."""
    policy = {**_common.DEFAULT_IPOLICY, "min": {**_common.DEFAULT_IPOLICY["min"], "memory_mib": 65536}}
    refused(cluster(nodes=0), "cluster_modify", WRONG_INPUT, "need min <= std <= max", ipolicy=policy)


def test_modify_refuses_a_bad_mac_prefix():
    """A MAC prefix is three octets."""
    refused(cluster(nodes=0), "cluster_modify", WRONG_INPUT, "Invalid MAC prefix", mac_prefix="aa:00")


def test_modify_refuses_lowering_the_feature_level():
    """The feature level only goes up."""
    box = cluster(nodes=0)
    box.commit(ev.ClusterModified(None, None, None, None, None, 2, None, None))
    refused(box, "cluster_modify", WRONG_INPUT, "the cluster is at 2, cannot go back to 1", feature_level=1)


def test_modify_refuses_a_level_above_the_known_one():
    """A level above the highest this code knows is refused with the feature_level code."""
    refused(cluster(nodes=0), "cluster_modify", FEATURE_LEVEL, "upgrade cairn on every node first",
            feature_level=cluster_modify.HIGHEST_FEATURE_LEVEL + 1)


def test_modify_refuses_recovery_not_after_fencing():
    """The recovery interval must exceed the fencing interval, so a lost node fences itself first."""
    refused(cluster(nodes=0), "cluster_modify", WRONG_INPUT, "must be at least the fencing interval",
            fencing_interval_s=600)


def test_modify_sets_the_intervals():
    """Fencing and recovery intervals change together."""
    box = cluster(nodes=0)
    box.run("cluster_modify", fencing_interval_s=30, recovery_interval_s=90)
    assert (box.state.cluster.fencing_interval_s, box.state.cluster.recovery_interval_s) == (30, 90)


def test_modify_emits_one_typed_cluster_modified_event():
    """The changed parameters travel in one ClusterModified; the unchanged ones are None."""
    plan = cluster(nodes=0).plan("cluster_modify", mac_prefix="aa:11:22", fencing_interval_s=6,
                                 enabled_hypervisors=["kvm", "fake"])
    assert plan.events == (ev.ClusterModified(None, None, None, None, "aa:11:22", None, 6, None),)
    assert plan.result == {"mac_prefix": "aa:11:22", "fencing_interval_s": 6}


def test_modify_to_current_values_plans_nothing():
    """Asking for the values the cluster has plans no events."""
    assert cluster(nodes=0).plan("cluster_modify", mac_prefix="aa:00:00").events == ()
