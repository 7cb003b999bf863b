"""Tests of instance_add, above all that admitted jobs' reservations prevent overcommit."""

from appliance.model import events as ev
from appliance.model.errors import ALREADY_EXISTS, INSUFFICIENT_RESOURCES, WRONG_INPUT
from tests.unit.test_ops_support import add, cluster, refused

SPEC = dict(primary="n1.example.com", secondary="n2.example.com", disk_template="replicated", os="debian-12",
            disks=(2048,))


def admit(box, plan) -> int:
    """Commit a JobSubmitted and a JobAdmitted holding the plan's reservations, as the job runner does."""
    job = box.state.next_job_id
    box.commit(ev.JobSubmitted(({"op": "instance_add", "params": {}},), f"req-{job}"))
    box.commit(ev.JobAdmitted(job, ()))
    box.commit(ev.JobOperationPlanned(job, 0, {}, (), tuple(r.as_payload() for r in plan.reservations), plan.macs, None))
    return job


def test_add_places_the_instance_on_both_nodes():
    """A replicated add records the instance and charges memory to the primary and disk to both nodes."""
    box = cluster()
    found = add(box)
    usage = box.state.usage
    assert usage[found.primary].memory_mib == 1024 and usage[found.primary].disk_mib == 2048
    assert usage[found.secondary].disk_mib == 2048 and usage[found.secondary].memory_mib == 0


def test_second_add_is_refused_while_the_first_is_admitted():
    """Two concurrent adds cannot overcommit a node: the first job's reservations count before its events apply."""
    box = cluster(memory_mib=3072)
    first = box.plan("instance_add", name="a.example.com", memory_mib=2048, **SPEC)
    admit(box, first)
    assert box.state.free_memory_mib(box.state.node_by_name("n1.example.com").id) == 1024
    refused(box, "instance_add", INSUFFICIENT_RESOURCES,
            "Not enough memory on node n1.example.com for creating instance b.example.com: needed 2048 MiB, "
            "available 1024 MiB", name="b.example.com", memory_mib=2048, **SPEC)


def test_second_add_fits_once_the_first_job_ends():
    """When the first job fails its reservation is released and the second add fits."""
    box = cluster(memory_mib=3072)
    job = admit(box, box.plan("instance_add", name="a.example.com", memory_mib=2048, **SPEC))
    box.commit(ev.JobFailed(job, "wrong_state", "gave up"))
    box.run("instance_add", name="b.example.com", memory_mib=2048, **SPEC)


def test_reserved_disk_counts_on_the_secondary():
    """Disk reserved on the secondary by an admitted add is not free for another add."""
    box = cluster(disk_mib=5000)
    admit(box, box.plan("instance_add", name="a.example.com", memory_mib=512, **{**SPEC, "disks": (3000,)}))
    refused(box, "instance_add", INSUFFICIENT_RESOURCES, "Not enough disk space on node n1.example.com",
            name="b.example.com", memory_mib=512, **{**SPEC, "disks": (3000,)})


def test_reserved_macs_are_not_reused():
    """A MAC held by an admitted job is refused for another instance."""
    box = cluster()
    first = box.plan("instance_add", name="a.example.com", **SPEC)
    admit(box, first)
    refused(box, "instance_add", ALREADY_EXISTS, "is already in use", name="b.example.com",
            nics=({"mac": first.macs[0]},), **SPEC)


def test_add_refuses_an_existing_name():
    """An instance name is unique, in Ganeti's words."""
    box = cluster()
    add(box)
    refused(box, "instance_add", ALREADY_EXISTS, "Instance 'web1.example.com' is already in the cluster",
            name="web1.example.com", **SPEC)


def test_add_refuses_disks_for_diskless():
    """Disks given to a diskless instance are refused in Ganeti's words."""
    box = cluster()
    refused(box, "instance_add", WRONG_INPUT, "Diskless instance but disk information passed",
            name="d.example.com", primary="n1.example.com", disk_template="diskless", os="x", disks=(1024,))
