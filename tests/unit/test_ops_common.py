"""Tests of ops/_common.py: shared look-ups and checks with Ganeti's texts."""

import random

import pytest

from appliance.model import events as ev
from appliance.model.errors import (
    ALREADY_EXISTS, INSUFFICIENT_RESOURCES, UNKNOWN_ENTITY, WRONG_INPUT, WRONG_STATE, PrereqError,
)
from ops import _common
from tests.unit.test_ops_support import add, cluster


def refusal(function, *args, **kwargs) -> PrereqError:
    with pytest.raises(PrereqError) as info:
        function(*args, **kwargs)
    return info.value


def test_lookups_find_by_name_or_id():
    """Nodes, instances and groups are found by name and by id."""
    box = cluster()
    found = add(box)
    state = box.state
    assert _common.instance(state, found.id) is _common.instance(state, "web1.example.com")
    assert _common.node(state, found.primary).name == "n1.example.com"
    assert _common.group(state, state.cluster.default_group).name == "default"


def test_lookups_refuse_unknown_names_in_ganeti_words():
    """Unknown names are unknown_entity with Ganeti's 'not known'."""
    state = cluster().state
    for function, word in ((_common.node, "Node"), (_common.instance, "Instance"), (_common.group, "Group"),
                           (_common.user, "User")):
        error = refusal(function, state, "nosuch")
        assert error.code == UNKNOWN_ENTITY and f"{word} 'nosuch' not known" in error.message


def test_hostname_refuses_bad_names():
    """Host names are lower-case DNS names, in Ganeti's words."""
    assert "Invalid hostname 'Bad_Name!'" in refusal(_common.hostname, "Bad_Name!", "instance").message
    _common.hostname("web1.example.com", "instance")


def test_positive_refuses_booleans_and_small_values():
    """Booleans and values below the minimum are refused."""
    for value in (True, 0, -1, "3", 1.5):
        assert refusal(_common.positive, value, "vcpus").code == WRONG_INPUT
    _common.positive(0, "disk", minimum=0)


def test_policy_names_the_group_and_range():
    """A value out of the policy's range is named with Ganeti's words and the group."""
    state = cluster().state
    error = refusal(_common.policy, state, state.cluster.default_group, {"memory_mib": 100000}, [])
    assert error.message.startswith(f"Instance allocation to group {state.cluster.default_group} (default) "
                                    "violates policy: memory-size value 100000 is not in range [128, 32768]")


def test_policy_numbers_disks_by_their_index():
    """A disk size is checked with the index it has in the instance."""
    state = cluster().state
    error = refusal(_common.policy, state, state.cluster.default_group, {}, {3: 100})
    assert "disk-size/3 value 100" in error.message


def test_memory_fits_refuses_a_node_without_capacity():
    """A node that has not reported memory is refused with a hint."""
    box = cluster(nodes=0)
    box.run("node_add", name="n1.example.com")
    error = refusal(_common.memory_fits, box.state, box.state.node_by_name("n1.example.com"), 1, "x", "creating")
    assert error.code == INSUFFICIENT_RESOURCES and "has not reported its memory" in error.message


def test_free_resources_count_reservations():
    """Free memory and disk subtract what admitted jobs reserved."""
    box = cluster(memory_mib=4096, disk_mib=10_000)
    node = box.state.node_by_name("n1.example.com")
    box.commit(ev.JobSubmitted(({"op": "x", "params": {}},), "r"))
    box.commit(ev.JobAdmitted(1, ()))
    box.commit(ev.JobOperationPlanned(1, 0, {}, (), ({"node": node.id, "memory_mib": 4000, "disk_mib": 9000},), (), None))
    error = refusal(_common.disk_fits, box.state, node, 2000, "x", "creating")
    assert "needed 2000 MiB, available 1000 MiB" in error.message


def test_with_macs_avoids_used_and_reserved_macs():
    """Generated MACs avoid those in use and those reserved by admitted jobs."""
    box = cluster()
    used = add(box).nics[0].mac
    box.commit(ev.JobSubmitted(({"op": "x", "params": {}},), "r"))
    box.commit(ev.JobAdmitted(1, ()))
    box.commit(ev.JobOperationPlanned(1, 0, {}, (), (), ("aa:00:00:00:00:01",), None))
    nics = _common.with_macs(box.state, [{}] * 50, random.Random(7), "br0")
    macs = [n["mac"] for n in nics]
    assert len(set(macs)) == 50 and used not in macs and "aa:00:00:00:00:01" not in macs
    assert all(n["link"] == "br0" and n["mode"] == "bridged" for n in nics)


def test_new_nics_refuses_duplicates_within_a_request():
    """The same MAC twice in one request is refused."""
    state = cluster().state
    nics = [{"mac": "aa:00:00:00:00:02"}, {"mac": "aa:00:00:00:00:02"}]
    assert refusal(_common.new_nics, state, nics, "br0").code == ALREADY_EXISTS


def test_new_nics_refuses_a_malformed_mac():
    """A MAC must be six lower-case octets."""
    error = refusal(_common.new_nics, cluster().state, [{"mac": "AA-00"}], "br0")
    assert error.code == WRONG_INPUT and "invalid MAC address" in error.message


def test_tags_sorts_and_deduplicates():
    """Tags come back sorted and unique."""
    assert _common.tags(["b", "a", "b"]) == ("a", "b")


def test_check_ipolicy_refuses_missing_keys():
    """A policy part without every spec key is refused."""
    assert refusal(_common.check_ipolicy, {"min": {}, "max": {}, "std": {}}).code == WRONG_INPUT


def test_intervals_need_recovery_after_fencing_and_the_kill():
    """Recovery must come at least RECOVERY_MARGIN_S after fencing, and the lease must outlast a restart."""
    assert "plus 2 s" in refusal(_common.intervals, 60, 61).message
    _common.intervals(60, 62)
    _common.intervals(5, 8)
    assert "at least 3" in refusal(_common.intervals, 2, 10).message


def test_not_last_admin_refuses_the_only_admin():
    """The only admin is protected; an operator is not."""
    state = cluster(nodes=0).state
    assert refusal(_common.not_last_admin, state, state.users["admin"], "remove").code == WRONG_STATE


def test_instance_claims_take_ids_and_share_the_nodes():
    """An instance is claimed by id, exclusively, with its nodes shared; an unknown one by its name as new."""
    box = cluster()
    found = add(box)
    claims = _common.instance_claims(box.state, "web1.example.com")
    assert claims.instances == {found.id} and claims.nodes == frozenset()
    assert claims.shared_nodes == {found.primary, found.secondary}
    assert _common.instance_claims(box.state, "new.example.com").instances == {"name:new.example.com"}


def test_claims_by_name_and_by_id_are_the_same():
    """Two jobs naming one node, once by name and once by id, claim the same key and so conflict."""
    box = cluster()
    found = add(box)
    by_name = _common.instance_claims(box.state, "web1.example.com")
    by_id = _common.instance_claims(box.state, found.id)
    assert by_name == by_id and by_name.conflicts(by_id)


def test_primary_online_refuses_an_offline_primary():
    """An offline primary is named with the way back."""
    box = cluster()
    found = add(box)
    box.commit(ev.NodeModified(found.primary, True, None, None, None, None))
    error = refusal(_common.primary_online, box.state, box.state.instances[found.id], "start")
    assert error.code == WRONG_STATE and "cairn node modify --offline no n1.example.com" in error.message


def test_tag_target_refuses_a_cluster_target():
    """Cluster tags take no target."""
    assert refusal(_common.tag_target, cluster().state, "cluster", "x").code == WRONG_INPUT


def test_held_claims_answer_as_pairwise_conflicts_do():
    """HeldClaims says a claim conflicts exactly when it conflicts with one of the claims held."""
    import itertools

    from ops.base import Claims, HeldClaims

    keys = ("a", "b")
    choices = [Claims()] + [Claims(**{kind: frozenset({key})}) for kind in
                            ("instances", "nodes", "groups", "shared_nodes", "shared_groups") for key in keys]
    choices.append(Claims(cluster=True))
    for held_pair in itertools.combinations(choices, 2):
        held = HeldClaims()
        for claims in held_pair:
            held.add(claims)
        for claims in choices:
            expected = any(claims.conflicts(other) for other in held_pair)
            assert held.conflicts(claims) == expected, (held_pair, claims)
