"""Shared builders for the operation tests: a small sandboxed cluster and a refusal assertion (no tests here)."""

import pytest

from appliance.model import events as ev
from appliance.model.errors import PrereqError
from appliance.sandbox import Sandbox

NODES = ("n1.example.com", "n2.example.com", "n3.example.com")


def cluster(nodes: int = 3, memory_mib: int = 4096, disk_mib: int = 100_000, seed: int = 1) -> Sandbox:
    """An initialised cluster of `nodes` nodes with the given capacity each."""
    box = Sandbox(seed)
    box.run("cluster_init", name="c.example.com")
    for name in NODES[:nodes]:
        box.run("node_add", name=name, memory_mib=memory_mib, disk_mib=disk_mib, cpus=4)
    return box


def add(box: Sandbox, name: str = "web1.example.com", template: str = "replicated", observed: bool = True,
        **fields):
    """Add an instance (replicated n1 -> n2 by default) and, if it starts, observe it running; return it."""
    spec = dict(name=name, primary="n1.example.com", disk_template=template, os="debian-12", memory_mib=1024)
    if template != "diskless":
        spec["disks"] = (2048,)
    if template == "replicated":
        spec["secondary"] = "n2.example.com"
    spec.update(fields)
    box.run("instance_add", **spec)
    found = box.state.instance_by_name(name)
    if observed and found.admin_state == "up":
        box.commit(ev.InstanceObservedRunning(found.id, found.primary))
    return box.state.instance_by_name(name)


def observe(box: Sandbox, name: str, running: bool) -> None:
    """Commit what the primary's reconciler would report."""
    found = box.state.instance_by_name(name)
    cls = ev.InstanceObservedRunning if running else ev.InstanceObservedStopped
    box.commit(cls(found.id, found.primary))


def refused(box: Sandbox, operation: str, code: str, phrase: str, **fields) -> PrereqError:
    """Assert the operation is refused with `code` and a message containing `phrase`."""
    with pytest.raises(PrereqError) as info:
        box.run(operation, **fields)
    assert info.value.code == code, info.value.message
    assert phrase in info.value.message, info.value.message
    return info.value


def node_id(box: Sandbox, name: str) -> str:
    return box.state.node_by_name(name).id
