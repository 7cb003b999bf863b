"""Tests of instance_modify: memory, vcpus, disks and NICs."""

from appliance.model import events as ev
from appliance.model.errors import ALREADY_EXISTS, INSUFFICIENT_RESOURCES, WRONG_INPUT, WRONG_STATE
from tests.unit.test_ops_support import add, cluster, refused


def modified(box, **fields):
    box.run("instance_modify", instance="web1.example.com", **fields)
    return box.state.instance_by_name("web1.example.com")


def test_modify_changes_memory_and_vcpus():
    """New memory and vcpus are recorded and the primary's usage follows."""
    box = cluster()
    found = add(box)
    after = modified(box, memory_mib=2048, vcpus=2)
    assert (after.memory_mib, after.vcpus) == (2048, 2)
    assert box.state.usage[found.primary].memory_mib == 2048


def test_modify_refuses_no_changes():
    """A modify that names no change is refused."""
    box = cluster()
    add(box)
    refused(box, "instance_modify", WRONG_INPUT, "No changes submitted", instance="web1.example.com")


def test_modify_refuses_memory_outside_policy():
    """Memory above the policy's maximum is refused in Ganeti's words."""
    box = cluster()
    add(box)
    refused(box, "instance_modify", WRONG_INPUT, "memory-size value 100000 is not in range [128, 32768]",
            instance="web1.example.com", memory_mib=100000)


def test_modify_refuses_memory_the_primary_lacks():
    """More memory than the primary has free is refused."""
    box = cluster(memory_mib=2048)
    add(box)
    refused(box, "instance_modify", INSUFFICIENT_RESOURCES,
            "Not enough memory on node n1.example.com for modifying instance web1.example.com: needed 2048 MiB, "
            "available 1024 MiB", instance="web1.example.com", memory_mib=3072)


def test_modify_refuses_memory_the_secondary_could_not_take_over():
    """More memory than the secondary has free would prevent failover, so it is refused as Ganeti does."""
    box = cluster(memory_mib=4096)
    add(box)
    add(box, name="big.example.com", template="file", primary="n2.example.com", memory_mib=2048)
    refused(box, "instance_modify", WRONG_STATE, "prevent the instance 'web1.example.com' from failover to its "
            "secondary node n2.example.com", instance="web1.example.com", memory_mib=3072)


def test_modify_counts_memory_reserved_by_admitted_jobs():
    """Memory reserved by an admitted job on the primary is not free for a modify."""
    box = cluster(memory_mib=4096)
    found = add(box)
    box.commit(ev.JobSubmitted(({"op": "instance_add", "params": {}},), "r1"))
    box.commit(ev.JobAdmitted(1, ()))
    box.commit(ev.JobOperationPlanned(1, 0, {}, (), ({"node": found.primary, "memory_mib": 2560, "disk_mib": 0},), (), None))
    refused(box, "instance_modify", INSUFFICIENT_RESOURCES, "available 512 MiB",
            instance="web1.example.com", memory_mib=2048)


def test_modify_adds_a_disk_on_both_nodes():
    """An added disk takes space on the primary and the secondary."""
    box = cluster()
    found = add(box)
    after = modified(box, disk_add=(4096,))
    assert [d.size_mib for d in after.disks] == [2048, 4096]
    assert box.state.usage[found.secondary].disk_mib == 6144


def test_modify_refuses_a_disk_above_the_policy_count():
    """Adding disks past the policy's disk-count maximum is refused."""
    box = cluster()
    add(box)
    refused(box, "instance_modify", WRONG_INPUT, "disk-count value 17 is not in range [1, 16]",
            instance="web1.example.com", disk_add=(1024,) * 16)


def test_modify_refuses_a_disk_below_the_policy_size():
    """A new disk below the policy's minimum size is refused, naming its index."""
    box = cluster()
    add(box)
    refused(box, "instance_modify", WRONG_INPUT, "disk-size/1 value 256 is not in range",
            instance="web1.example.com", disk_add=(256,))


def test_modify_refuses_a_disk_the_secondary_has_no_room_for():
    """Free disk is checked on the secondary too."""
    box = cluster(disk_mib=10_000)
    add(box)
    add(box, name="files.example.com", template="file", primary="n2.example.com", disks=(6000,))
    refused(box, "instance_modify", INSUFFICIENT_RESOURCES, "Not enough disk space on node n2.example.com",
            instance="web1.example.com", disk_add=(3000,))


def test_modify_refuses_disks_on_a_diskless_instance():
    """Disk changes on a diskless instance are refused."""
    box = cluster()
    add(box, template="diskless")
    refused(box, "instance_modify", WRONG_INPUT, "Disk operations not supported for diskless instances",
            instance="web1.example.com", disk_add=(1024,))


def test_modify_grows_a_disk():
    """Growing a disk sets its new size and the nodes' usage follows."""
    box = cluster()
    found = add(box)
    after = modified(box, disk_grow=((0, 3072),))
    assert after.disks[0].size_mib == 3072 and box.state.usage[found.primary].disk_mib == 3072


def test_modify_refuses_shrinking_a_disk():
    """A disk only grows: a smaller size is refused with the current size in the message."""
    box = cluster()
    add(box)
    refused(box, "instance_modify", WRONG_INPUT, "is 2048 MiB and can only grow, not shrink to 1024 MiB",
            instance="web1.example.com", disk_grow=((0, 1024),))


def test_modify_refuses_growing_a_missing_disk():
    """A disk index past the last disk is refused."""
    box = cluster()
    add(box)
    refused(box, "instance_modify", WRONG_INPUT, "Disk index 3 out of range", instance="web1.example.com",
            disk_grow=((3, 4096),))


def test_modify_refuses_growth_past_free_disk():
    """Growth beyond the free disk of the nodes is refused."""
    box = cluster(disk_mib=10_000)
    add(box)
    refused(box, "instance_modify", INSUFFICIENT_RESOURCES, "Not enough disk space on node n1.example.com",
            instance="web1.example.com", disk_grow=((0, 20_000),))


def test_modify_adds_a_nic_with_a_generated_unique_mac():
    """An added NIC without a MAC gets a fresh one with the cluster prefix."""
    box = cluster()
    found = add(box)
    after = modified(box, nic_add=({"link": "br1"},))
    new = after.nics[1]
    assert new.link == "br1" and new.mac.startswith("aa:00:00:") and new.mac != found.nics[0].mac
    assert box.state.macs[new.mac] == found.id


def test_modify_refuses_a_duplicate_mac():
    """A MAC already used by another instance is refused."""
    box = cluster()
    other = add(box, name="web2.example.com")
    add(box)
    refused(box, "instance_modify", ALREADY_EXISTS, f"MAC address {other.nics[0].mac} is already in use",
            instance="web1.example.com", nic_add=({"mac": other.nics[0].mac},))


def test_modify_removes_nics_from_the_highest_index_down():
    """Removing two NICs emits the higher index first, so both indexes stay valid."""
    box = cluster()
    add(box, nics=({}, {}, {}))
    before = box.state.instance_by_name("web1.example.com")
    plan = box.run("instance_modify", instance="web1.example.com", nic_remove=(0, 2))
    assert [e.nic_index for e in plan.events] == [2, 0]
    after = box.state.instance_by_name("web1.example.com")
    assert [n.mac for n in after.nics] == [before.nics[1].mac]
    assert before.nics[0].mac not in box.state.macs


def test_modify_refuses_removing_the_last_nic_under_policy():
    """The policy's minimum NIC count holds when NICs are removed."""
    box = cluster()
    add(box)
    refused(box, "instance_modify", WRONG_INPUT, "nic-count value 0 is not in range [1, 8]",
            instance="web1.example.com", nic_remove=(0,))


def test_modify_changes_a_nic_link():
    """A NIC's link and mode change; its MAC stays."""
    box = cluster()
    found = add(box)
    after = modified(box, nic_modify=({"index": 0, "link": "br7", "mode": "routed"},))
    assert (after.nics[0].mac, after.nics[0].link, after.nics[0].mode) == (found.nics[0].mac, "br7", "routed")


def test_modify_refuses_changing_a_nic_mac():
    """A NIC's MAC cannot be changed in place."""
    box = cluster()
    add(box)
    refused(box, "instance_modify", WRONG_INPUT, "cannot change", instance="web1.example.com",
            nic_modify=({"index": 0, "mac": "aa:00:00:00:00:01"},))


def test_modify_refuses_a_missing_nic_index():
    """A NIC index past the last NIC is refused."""
    box = cluster()
    add(box)
    refused(box, "instance_modify", WRONG_INPUT, "NIC index 5 out of range", instance="web1.example.com",
            nic_remove=(5,))


def test_modify_reserves_what_it_adds():
    """The plan reserves the added memory on the primary and the added disk on both nodes, and its new MACs."""
    box = cluster()
    found = add(box)
    plan = box.plan("instance_modify", instance="web1.example.com", memory_mib=1536, disk_add=(1024,),
                    nic_add=({},))
    held = sorted((r.node, r.memory_mib, r.disk_mib) for r in plan.reservations)
    assert held == sorted([(found.primary, 512, 0), (found.primary, 0, 1024), (found.secondary, 0, 1024)])
    assert len(plan.macs) == 1
