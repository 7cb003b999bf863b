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


# --- -I hail -------------------------------------------------------------------------

def test_iallocator_commits_the_nodes_hail_chooses_on_the_admitted_state():
    """With -I hail the plan places the instance where answer_allocate puts it on that state's document."""
    from appliance import allocator
    from fastpath.iallocator import answer_allocate

    box = cluster()
    add(box)
    request = allocator.allocate_request("new.example.com", "replicated", 1024, 1, [4096])
    expected = answer_allocate(allocator.document(box.state, request), allocator.options())["result"]
    plan = box.run("instance_add", name="new.example.com", disk_template="replicated", os="debian-12",
                   memory_mib=1024, disks=(4096,), iallocator="hail")
    added = plan.events[0]
    names = [box.state.nodes[node].name for node in (added.primary, added.secondary)]
    assert names == expected
    assert plan.result == f"Selected nodes for instance new.example.com via iallocator hail: {', '.join(expected)}"


def test_iallocator_choice_is_in_the_prepared_params():
    """prepare fills the chosen node ids into the params, so the engine commits them with the plan."""
    import random

    from ops import instance_add

    box = cluster()
    params = instance_add.prepare(box.state, instance_add.Params(
        name="new.example.com", disk_template="file", os="debian-12", disks=(1024,), iallocator="hail"),
        random.Random(1))
    assert params.primary in box.state.nodes and params.secondary == ""


def test_iallocator_refuses_explicit_nodes_too():
    """-I together with a node is refused, naming both ways to place the instance."""
    box = cluster()
    refused(box, "instance_add", WRONG_INPUT, "Do not specify both, iallocator and node", name="x.example.com",
            iallocator="hail", **SPEC)


def test_iallocator_refuses_an_unknown_allocator():
    """Only hail is an allocator; another name is refused with what to use instead."""
    box = cluster()
    refused(box, "instance_add", WRONG_INPUT, "Unknown iallocator 'dumb'; the only allocator is 'hail'",
            name="x.example.com", disk_template="file", os="debian-12", disks=(1024,), iallocator="dumb")


def test_add_without_nodes_or_allocator_says_what_to_give():
    """An add with neither nodes nor an allocator names both options."""
    box = cluster()
    refused(box, "instance_add", WRONG_INPUT, "give the nodes with -n PRIMARY[:SECONDARY] or let the allocator "
            "choose them with -I hail", name="x.example.com", disk_template="file", os="debian-12", disks=(1024,))


def test_iallocator_failure_is_ganetis_text_with_hails_reasons():
    """When nothing fits, the refusal is Ganeti's 'Can't compute nodes using iallocator' with hail's reasons."""
    box = cluster()
    refused(box, "instance_add", INSUFFICIENT_RESOURCES, "Can't compute nodes using iallocator 'hail': Request "
            "failed: Group default (preferred): No valid allocation solutions, failure reasons: FailMem: 3",
            name="x.example.com", disk_template="file", os="debian-12", memory_mib=8192, disks=(1024,),
            iallocator="hail")


def test_iallocator_claims_every_node_shared():
    """Before planning the nodes are unknown, so an add with -I claims every node, shared."""
    from ops import instance_add

    box = cluster()
    claims = instance_add.claims(box.state, instance_add.Params(
        name="x.example.com", disk_template="file", os="debian-12", iallocator="hail"))
    assert claims.shared_nodes == frozenset(box.state.nodes) and not claims.nodes


def test_iallocator_choice_is_committed_with_the_job_plan():
    """Run as a job, the committed JobOperationPlanned names the nodes hail answers on the state it was planned on."""
    from appliance import allocator
    from appliance.core.io import op
    from fastpath.iallocator import answer_allocate
    from tests.unit.core_support import add_instance, cluster as core_cluster

    harness = core_cluster(("node1", "node2", "node3"))
    add_instance(harness, "web1.example.com", primary="node1", secondary="node2")
    request = allocator.allocate_request("new.example.com", "replicated", 512, 1, [1024])
    expected = answer_allocate(allocator.document(harness.state, request), allocator.options())["result"]
    job = harness.run(op("instance_add", name="new.example.com", disk_template="replicated", os="debian-12",
                         memory_mib=512, disks=(1024,), iallocator="hail"))
    assert job.status == "success", job.error_message
    planned = [e.event for e in harness.events(ev.JobOperationPlanned) if e.event.job == job.id][0]
    ids = harness.state.node_names
    assert [planned.params["primary"], planned.params["secondary"]] == [ids[name] for name in expected]
    assert job.result == (f"Selected nodes for instance new.example.com via iallocator hail: {', '.join(expected)}",)
