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
    found = testguest.load(testguest.cache_directory())
    if found is not None:
        return found
    try:
        return testguest.build()
    except testguest.BuildError as error:
        pytest.skip(f"the test guest cannot be built: {error}")


def hvparams(guest: testguest.Guest, virtio: bool = False, tick: bool = True) -> str:
    """The `-H kvm:...` of an instance booting the test guest."""
    return (f"kvm:kernel_path={guest.kernel},initrd_path={guest.initrd},"
            f"kernel_args={guest.cmdline(virtio=virtio, tick=tick)}")


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
