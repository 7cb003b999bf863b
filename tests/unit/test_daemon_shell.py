"""Tests of the daemon's shell: the node core over a one-member log and in-memory drivers, in real time."""

import hashlib

import pytest
import trio

from appliance.api.backend import Refused, Unavailable
from appliance.core.io import op
from appliance.daemon.shell import NodeShell
from appliance.drivers.memory import MemoryHypervisor, MemoryStorage, MemoryWorld
from consensus.memory_log import MemoryLog

TOKEN = "t" * 43
BOOTSTRAP = [
    {"request_id": "bootstrap:cluster-init", "operations": [
        op("cluster_init", name="one.example.com", enabled_hypervisors=["fake"], default_hypervisor="fake",
           admin_credential_hash=hashlib.sha256(TOKEN.encode()).hexdigest())]},
    {"request_id": "bootstrap:node-add:node1", "operations": [
        op("node_add", name="node1", address="memory:7000", memory_mib=8192, disk_mib=100_000, cpus=4)]},
]


def one_node(bootstrap=BOOTSTRAP):
    world = MemoryWorld(["node1"])
    host = world.hosts["node1"]
    log = MemoryLog("memory:7000")
    shell = NodeShell("node1", "memory:7000", log, MemoryHypervisor(host, trio.sleep),
                      MemoryStorage(host, trio.sleep), ca_pem=b"", node_token="n" * 64,
                      addresses={"node1": "memory:7000"}, bootstrap=bootstrap)
    return shell, host


async def ready(shell) -> None:
    with trio.fail_after(20):
        while not (shell.state().cluster and shell.state().node_by_name("node1")):
            await trio.sleep(0.05)


async def test_bootstrap_then_an_instance_runs_on_the_driver():
    """The bootstrap jobs run once the node leads; a submitted add ends in success and a running process."""
    shell, host = one_node()
    async with trio.open_nursery() as nursery:
        await nursery.start(shell.run)
        await ready(shell)
        assert shell.state().credentials[hashlib.sha256(TOKEN.encode()).hexdigest()] == "admin"
        job = await shell.submit([op("instance_add", name="web1", primary="node1", disk_template="diskless",
                                     os="debian-12", memory_mib=128)], "admin", "test", "req-1")
        with trio.fail_after(20):
            ended = await shell.wait_job(job)
        assert ended.status == "success", ended.error_message
        instance_id = shell.state().instance_by_name("web1").id
        with trio.fail_after(20):
            while host.instances.get(instance_id) != "running":
                await trio.sleep(0.05)
        # The same request id gives the same job back.
        assert await shell.submit([op("instance_add", name="web1", primary="node1", disk_template="diskless",
                                      os="debian-12")], "admin", "test", "req-1") == job
        nursery.cancel_scope.cancel()


async def test_refusals_and_the_read_barrier():
    """A malformed job is refused with its code; the barrier waits for the leader's commit seq."""
    shell, _host = one_node()
    async with trio.open_nursery() as nursery:
        await nursery.start(shell.run)
        await ready(shell)
        with pytest.raises(Refused) as refused:
            await shell.submit([], "admin")
        assert refused.value.code == "wrong_input"
        seq = await shell.barrier()
        assert seq == shell.log.head().seq == shell.state().seq
        assert shell.state_at(1).cluster is None and shell.state_at(seq).digest() == shell.state().digest()
        with pytest.raises(Refused):
            shell.state_at(seq + 10)
        with pytest.raises(Refused):
            await shell.wait_job(999)
        assert shell.log_status()["leader"] == "node1"
        nursery.cancel_scope.cancel()


async def test_without_a_leader_reads_and_writes_are_unavailable():
    """A closed log has no leader: the barrier says so rather than answer from a state that may be old."""
    shell, _host = one_node(bootstrap=[])
    await shell.log.aclose()
    with pytest.raises(Unavailable):
        await shell.barrier()


async def test_the_leader_grants_itself_a_lease_and_refuses_strangers_and_the_fenced():
    """The one node leads: it holds a lease (status says so), its liveness is alive; an unknown node is
    refused; a node that is fenced is refused until it has applied its fence and runs nothing, and then the
    healer brings it back online."""
    shell, host = one_node()
    async with trio.open_nursery() as nursery:
        await nursery.start(shell.run)
        await ready(shell)
        with trio.fail_after(20):
            while not shell.lease_status()["held"]:
                await trio.sleep(0.05)
        assert shell.liveness()["node1"]["liveness"] == "alive"
        stranger = shell.grant_lease("node9", {"applied_seq": 0, "running": 0})
        assert stranger["granted"] is False and "not a member" in stranger["reason"]
        job = await shell.submit([op("node_add", name="node2", address="memory:7003", memory_mib=1024,
                                     disk_mib=1000, cpus=1, role="non-voter")], "admin", "test")
        with trio.fail_after(20):
            assert (await shell.wait_job(job)).status == "success"
        granted = shell.grant_lease("node2", {"applied_seq": 0, "running": -1})
        assert granted["granted"] is True and granted["lease_s"] == 5 and granted["armed"] is True
        job = await shell.submit([op("node_fence", node="node2", proof="lease", detail="test")], "admin", "test")
        with trio.fail_after(20):
            assert (await shell.wait_job(job)).status == "success"
        fenced = shell.state().node_by_name("node2")
        early = shell.grant_lease("node2", {"applied_seq": fenced.fenced_seq - 1, "running": 0})
        assert early["granted"] is False and "fenced" in early["reason"]
        assert shell.liveness()["node2"]["liveness"] == "fenced"
        assert shell.grant_lease("node2", {"applied_seq": fenced.fenced_seq, "running": 0})["granted"] is False
        with trio.fail_after(20):
            while shell.state().node_by_name("node2").offline:
                await trio.sleep(0.05)
        assert shell.grant_lease("node2", {"applied_seq": shell.state().seq, "running": 0})["granted"] is True
        nursery.cancel_scope.cancel()
