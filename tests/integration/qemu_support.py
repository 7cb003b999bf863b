"""Real guests on a local cluster: the test guest, instances of it under the `kvm` hypervisor, their consoles.

The guest is reused from the cache (`$CAIRN_CACHE` or ~/.cache/cairn) or built
there first (about 28 MB from the Debian archive); without qemu, or without a
way to build the guest, a test using it is skipped with the reason.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from images import guestlink, testguest

QEMU = shutil.which("qemu-system-x86_64")
BOOT_TIMEOUT_S = 120
MARKER = r"GUEST-MARKER-BOOTED bootid=([0-9a-f]{8})"


def guest_or_skip() -> testguest.Guest:
    """The test guest, built if needed; skips the test when qemu or the guest is missing."""
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    try:
        return testguest.ensure()
    except testguest.BuildError as error:
        pytest.skip(f"the test guest cannot be built: {error}")


def hvparams(guest: testguest.Guest, virtio: bool = False, tick: bool = True) -> str:
    """The `-H kvm:...` of an instance booting the test guest, its NICs not attached (no bridge on these nodes)."""
    return (f"kvm:kernel_path={guest.kernel},initrd_path={guest.initrd},"
            f"kernel_args={guest.cmdline(virtio=virtio, tick=tick)},nic_mode=none")


def add_instance(cluster, guest: testguest.Guest, name: str, nodes: str, template: str = "diskless",
                 memory_mib: int = 256, disk_mib: int = 256, **hvparams: str) -> None:
    """Add an instance booting the test guest (no NIC: the nodes here have no bridge), through the API as the
    CLI does, and wait for its job (it ends once the instance runs)."""
    from appliance.client import jobs
    from appliance.client.config import resolve_target
    from appliance.client.http import Client

    primary, _, secondary = nodes.partition(":")
    target = resolve_target(config=str(cluster.directory / "client.toml"), environ={})
    parameters = {"kernel_path": str(guest.kernel), "initrd_path": str(guest.initrd),
                  "kernel_args": guest.cmdline(virtio=template != "diskless"), **hvparams}
    operation = jobs.operation("instance_add", name=name, primary=primary, secondary=secondary or None,
                               disk_template=template, os="noop", memory_mib=memory_mib, hypervisor="kvm",
                               hvparams=parameters, nics=[], ignore_ipolicy=True,
                               disks=None if template == "diskless" else [disk_mib])
    with Client(target.addresses, target.ca_pem, target.token, timeout_s=30) as client:
        job = jobs.submit(client, [operation], "guest tier", f"add-{name}")
    cluster.run("job", "wait", str(job), timeout_s=BOOT_TIMEOUT_S * 2)


def instance_files(cluster, node: str, instance: str):
    """The QEMU driver's files of the instance on node `node` (its sockets may be in a short directory)."""
    from appliance.drivers.qemu import InstanceFiles, socket_dir

    directory = instance_dir(cluster, node, instance)
    return InstanceFiles(directory, socket_dir(directory))


def instance_id(cluster, name: str) -> str:
    rows = json.loads(cluster.run("instance", "list", "-o", "name,id", "--output", "json").stdout)
    return next(row["id"] for row in rows if row["name"] == name)


def instance_dir(cluster, node: str, instance: str) -> Path:
    """Where node `node`'s QEMU driver keeps the instance (console log, control socket, pid)."""
    return cluster.directory / node / "kvm" / "instances" / instance


def wait_booted(cluster, node: str, instance: str, timeout_s: float = BOOT_TIMEOUT_S) -> str:
    """The boot id of the instance's guest once its marker is on node `node`'s console log."""
    log = instance_dir(cluster, node, instance) / "console.log"
    cluster.wait(log.exists, timeout_s, f"console log of {instance} on {node}")
    line = guestlink.wait_for_line(log, MARKER, timeout_s)
    return line.match.group(1)


def kill_whole_kvm_node(cluster, node: str) -> None:
    """kill -9 of everything node `node` runs, as if it lost power: its daemon, watchdog and QEMUs (as
    LocalCluster.kill_whole_node does), then its disks' relays and exports (each checked by its token first, so
    a pid reused since is left alone)."""
    import contextlib
    import os
    import signal

    from appliance.drivers.nbd import process_alive

    helpers = []
    for part in ("relays", "exports"):
        for pid_file in (cluster.directory / node / "kvm" / part).glob("*/pid"):
            try:
                pid, token = pid_file.read_text().split()
                helpers.append((int(pid), token))
            except (OSError, ValueError):
                continue
    cluster.kill_whole_node(node)
    for pid, token in helpers:
        if process_alive(pid, token):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
