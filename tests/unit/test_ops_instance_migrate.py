"""Tests of instance_migrate (it shares ops/_migration.py with instance_failover)."""

from appliance.model import events as ev
from appliance.model.errors import INSUFFICIENT_RESOURCES, UNKNOWN_ENTITY, WRONG_INPUT, WRONG_STATE
from tests.unit.test_ops_support import add, cluster, refused


def test_migrate_swaps_primary_and_secondary():
    """Migrating a replicated instance makes its secondary the primary and the other way round."""
    box = cluster()
    found = add(box)
    plan = box.run("instance_migrate", instance="web1.example.com")
    moved = box.state.instances[found.id]
    assert (moved.primary, moved.secondary) == (found.secondary, found.primary)
    assert plan.events == (ev.InstanceMigrationStarted(found.id, found.primary, found.secondary),
                           ev.InstanceMigrated(found.id, found.secondary, found.primary))
    assert plan.steps[1].waits[0].node == found.secondary


def test_migrate_plan_names_its_nodes_and_undoes_a_failed_migration():
    """The first step waits for the source to report; if that fails, the target must confirm the abort."""
    box = cluster()
    found = add(box)
    started = box.plan("instance_migrate", instance="web1.example.com").steps[0]
    assert [(w.what, w.node, w.on_timeout) for w in started.waits] == [
        ("migration_finished", found.primary, "compensate")]
    assert started.compensation == (ev.InstanceMigrationAborted(found.id, found.secondary),)


def test_migrate_moves_the_memory_usage():
    """After the migration the new primary carries the instance's memory and the old one does not."""
    box = cluster()
    found = add(box)
    box.run("instance_migrate", instance="web1.example.com")
    assert box.state.usage[found.secondary].memory_mib == 1024 and box.state.usage[found.primary].memory_mib == 0


def test_migrate_reserves_memory_on_the_target():
    """The plan reserves the instance's memory on the node it moves to."""
    box = cluster()
    found = add(box)
    plan = box.plan("instance_migrate", instance="web1.example.com")
    assert [(r.node, r.memory_mib) for r in plan.reservations] == [(found.secondary, 1024)]


def test_migrate_refuses_an_instance_without_secondary():
    """An instance with disks on its primary only cannot migrate; the message says why."""
    box = cluster()
    add(box, template="file")
    refused(box, "instance_migrate", WRONG_INPUT, "has no secondary node", instance="web1.example.com")
    refused(box, "instance_migrate", WRONG_INPUT, "its disks are on its primary only", instance="web1.example.com")


def test_a_diskless_instance_migrates_to_the_node_given():
    """A diskless instance has no disks to leave behind: it moves live to -n, which it then runs on alone (no
    secondary); without -n, to its own node, or to a node that cannot take it, it is refused with what to do."""
    box = cluster()
    found = add(box, template="diskless")
    refused(box, "instance_migrate", WRONG_INPUT, "say where to migrate it with -n", instance="web1.example.com")
    refused(box, "instance_migrate", WRONG_INPUT, "already runs on", instance="web1.example.com",
            target_node=box.state.nodes[found.primary].name)
    refused(box, "instance_migrate", UNKNOWN_ENTITY, "nowhere", instance="web1.example.com",
            target_node="nowhere.example.com")
    target = next(node for node in box.state.nodes.values() if node.id != found.primary)
    plan = box.plan("instance_migrate", instance="web1.example.com", target_node=target.name)
    assert [(r.node, r.memory_mib) for r in plan.reservations] == [(target.id, 1024)]
    assert plan.result == {"primary": target.name, "secondary": ""}
    assert plan.steps[1].events == (ev.InstanceMigrated(found.id, target.id, ""),)
    refused(box, "instance_failover", WRONG_INPUT, "cairn instance migrate -n NODE", instance="web1.example.com")


def test_a_replicated_instance_migrates_to_its_secondary_only():
    """-n naming another node than the secondary is refused, pointing to replace-disks."""
    box = cluster()
    found = add(box)
    other = next(node for node in box.state.nodes.values() if node.id not in (found.primary, found.secondary))
    refused(box, "instance_migrate", WRONG_INPUT, "replace its secondary first", instance="web1.example.com",
            target_node=other.name)
    box.plan("instance_migrate", instance="web1.example.com", target_node=box.state.nodes[found.secondary].name)


def test_migrate_refuses_an_offline_secondary():
    """The secondary must be online to take the instance."""
    box = cluster()
    found = add(box)
    box.commit(ev.NodeModified(found.secondary, True, None, None, None, None))
    refused(box, "instance_migrate", WRONG_STATE, "secondary node n2.example.com is offline",
            instance="web1.example.com")


def test_migrate_refuses_a_secondary_without_free_memory():
    """The secondary must have the instance's memory free, reservations counted."""
    box = cluster(memory_mib=2048)
    add(box)
    add(box, name="big.example.com", template="file", primary="n2.example.com", memory_mib=1536)
    refused(box, "instance_migrate", INSUFFICIENT_RESOURCES, "Not enough memory on node n2.example.com",
            instance="web1.example.com")


def test_migrate_refuses_a_stopped_instance():
    """Live migration needs a running instance; a stopped one is pointed to failover."""
    box = cluster()
    add(box, start=False)
    refused(box, "instance_migrate", WRONG_STATE, "instance failover", instance="web1.example.com")


def test_migrate_with_allow_failover_fails_a_stopped_instance_over():
    """With allow_failover a stopped instance is failed over instead."""
    box = cluster()
    found = add(box, start=False)
    plan = box.run("instance_migrate", instance="web1.example.com", allow_failover=True)
    assert box.state.instances[found.id].primary == found.secondary
    assert plan.steps[0].message.startswith("failing over") and plan.steps[0].waits == ()


def test_migrate_refuses_an_offline_primary():
    """Live migration needs the primary online."""
    box = cluster()
    found = add(box)
    box.commit(ev.NodeModified(found.primary, True, None, None, None, None))
    refused(box, "instance_migrate", WRONG_STATE, "use 'cairn instance failover", instance="web1.example.com")
